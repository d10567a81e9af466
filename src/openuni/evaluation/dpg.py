"""DPG-Bench scoring as TencentQQGYLab/ELLA `dpg_bench/compute_dpg_bench.py` aggregates it, over any VQA judge.

Each output is a 2x2 grid; every tile is asked every question of its prompt. A question scores 1 when the judge
answers "yes". Then, in question order, a question any of whose parents (ids in `dependency`, 0 = none) now scores 0
is zeroed too. A tile scores the mean over its questions, an image the mean over its tiles, the benchmark the mean
over images (x100). Category scores (L2 = the tuple's prefix before "(", L1 = its part before "-") average the raw,
unzeroed answers of the last tile only, as the official script does. The official reader also skips the CSV's first
data row; both quirks are kept so numbers compare. The official judge is mPLUG-large (ModelScope); ours is any
`VQAJudge`, by default an open VLM from transformers, and its scores are labelled proxy.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import PIL.Image

from ..errors import OpenUniError
from .outputs import read_output_image

TILES_PER_SIDE = 2


class VQAJudge(Protocol):
    name: str
    proxy: bool

    def answer(self, image: PIL.Image.Image, question: str) -> str:
        """The judge's answer, normalised to lower case ("yes" / "no" for yes-no questions)."""


@dataclass
class ItemQuestions:
    questions: dict[int, str] = field(default_factory=dict)  # proposition id -> question, in file order
    tuples: dict[int, str] = field(default_factory=dict)
    dependencies: dict[int, list[int]] = field(default_factory=dict)


def read_questions(path: str | Path) -> dict[str, ItemQuestions]:
    """`dpg_bench.csv` -> item id -> its questions (the first data row skipped, as the official reader does)."""
    items: dict[str, ItemQuestions] = {}
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        for row in rows[1:]:
            item = items.setdefault(row["item_id"], ItemQuestions())
            qid = int(row["proposition_id"])
            item.questions[qid] = row["question_natural_language"]
            item.tuples[qid] = row["tuple"]
            item.dependencies[qid] = [int(d.strip()) for d in row["dependency"].split(",")]
    except (OSError, UnicodeDecodeError, KeyError, ValueError, AttributeError) as error:
        raise OpenUniError(f"{path}: not the DPG-Bench question file ({type(error).__name__}: {error})") from None
    if not items:
        raise OpenUniError(f"{path}: no questions")
    return items


def zero_dependents(raw: dict[int, float], dependencies: dict[int, list[int]]) -> dict[int, float]:
    """Scores after zeroing every question with a parent at 0, in question order (so chains propagate forwards)."""
    scores = dict(raw)
    for qid, parents in dependencies.items():
        if any(parent != 0 and scores[parent] == 0 for parent in parents):
            scores[qid] = 0.0
    return scores


def tile_score(answers: dict[int, str], dependencies: dict[int, list[int]]) -> tuple[float, dict[int, float]]:
    """(tile score, raw per-question scores) from the judge's answers to one tile."""
    raw = {qid: float(answer == "yes") for qid, answer in answers.items()}
    zeroed = zero_dependents(raw, dependencies)
    return sum(zeroed.values()) / len(zeroed), raw


def split_tiles(image: PIL.Image.Image, tiles_per_side: int = TILES_PER_SIDE) -> list[PIL.Image.Image]:
    """Row-major tiles: top left, top right, bottom left, bottom right."""
    size = image.width // tiles_per_side
    if image.width != image.height or image.width % tiles_per_side:
        raise OpenUniError(f"expected a square {tiles_per_side}x{tiles_per_side} grid, got {image.width}x{image.height}")
    return [image.crop((col * size, row * size, (col + 1) * size, (row + 1) * size))
            for row in range(tiles_per_side) for col in range(tiles_per_side)]


def score_item(image: PIL.Image.Image, item: ItemQuestions, judge: VQAJudge) -> dict:
    """One image: per-tile scores, the image score, and the raw answers of the last tile (for categories)."""
    tile_scores, answers_log, raw = [], [], {}
    for tile in split_tiles(image):
        answers = {qid: judge.answer(tile, question) for qid, question in item.questions.items()}
        score, raw = tile_score(answers, item.dependencies)
        tile_scores.append(score)
        answers_log.append(answers)
    return {"score": sum(tile_scores) / len(tile_scores), "tile_scores": tile_scores, "answers": answers_log,
            "category_scores": {qid: raw[qid] for qid in item.tuples}}


def summarize(item_results: dict[str, dict], questions: dict[str, ItemQuestions]) -> dict:
    """Overall and per-category scores in percent, as the official script prints them."""
    if not item_results:
        raise OpenUniError("no DPG-Bench images were scored")
    level2: dict[str, list[float]] = {}
    for item_id, result in item_results.items():
        for qid, value in result["category_scores"].items():
            category = questions[item_id].tuples[qid].split("(")[0].strip()
            level2.setdefault(category, []).append(value)
    level1: dict[str, list[float]] = {}
    for category, values in level2.items():
        level1.setdefault(category.split("-")[0].strip(), []).extend(values)
    return {
        "overall": float(np.mean([r["score"] for r in item_results.values()]) * 100),
        "categories": {name: float(np.mean(v) * 100) for name, v in level1.items()},
        "subcategories": {name: float(np.mean(level2[name]) * 100) for name in sorted(level2)},
        "images": len(item_results),
    }


def score_folder(folder: str | Path, questions: dict[str, ItemQuestions], judge: VQAJudge,
                 progress=lambda items: items) -> tuple[dict[str, dict], list[str]]:
    """Score every `<item_id>.png` with questions; returns (results per item, item ids of the files skipped)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        raise OpenUniError(f"{folder}: no DPG-Bench images (<item_id>.png)")
    results, skipped = {}, []
    for file in progress(files):
        item_id = file.name.split(".")[0]
        if item_id not in questions:
            skipped.append(item_id)
            continue
        results[item_id] = score_item(read_output_image(file), questions[item_id], judge)
    return results, skipped
