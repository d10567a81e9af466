"""Score a finished output folder: run the models or judges, write per-image details and the summary report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import dpg, geneval, wise
from ..files import write_text_atomically
from .generate import RUN_FILE
from .report import write_report


def _progress(desc: str):
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, unit="image", dynamic_ncols=True)


def _generation_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))


def score_geneval(folder: Path, detector, classify_colors, scorer: dict) -> dict:
    """`detector(image)` -> candidates per class; rows written as the official results.jsonl."""
    started = time.time()
    rows = [geneval.score_image(path, metadata, detector, classify_colors)
            for metadata, path in _progress("geneval scoring")(geneval.sample_images(folder))]
    _write_jsonl(folder / "geneval_results.jsonl", rows)
    scores = geneval.summarize(rows)
    write_report(folder, "geneval", scores, scorer, _generation_record(folder), time.time() - started)
    return scores


def score_dpg(folder: Path, questions: dict, judge, scorer: dict) -> dict:
    started = time.time()
    results, skipped = dpg.score_folder(folder, questions, judge, _progress("dpg scoring"))
    _write_jsonl(folder / "dpg_results.jsonl", [{"item_id": k, **{n: v for n, v in r.items() if n != "category_scores"}}
                                                for k, r in results.items()])
    scores = dpg.summarize(results, questions)
    scores["skipped_without_questions"] = len(skipped)
    write_report(folder, "dpg", scores, scorer, _generation_record(folder), time.time() - started)
    return scores


def score_wise(folder: Path, prompts: list, judge, scorer: dict) -> dict:
    started = time.time()
    records, missing = wise.score_folder(folder, prompts, judge, _progress("wise scoring"))
    _write_jsonl(folder / "wise_scores.jsonl", records)
    scores = wise.summarize(records)
    scores["missing_images"] = len(missing)
    write_report(folder, "wise", scores, scorer, _generation_record(folder), time.time() - started)
    return scores
