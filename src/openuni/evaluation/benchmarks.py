"""One record per benchmark: where its prompts come from, the layout its official scorer reads, and how we score it.

Generation (`generate.py`), scoring (`scoring.py`) and `openuni eval` read everything benchmark-specific from here.

Layouts (SPEC "Benchmarks"):
- GenEval: `<out>/<00000>/metadata.jsonl` (the prompt's JSON object) and `<out>/<00000>/samples/<0000>.png`, 4 each;
- DPG-Bench: `<out>/<item_id>.png`, a 2x2 grid of 4 images (row-major: image 0 top left, 1 top right, ...);
- WISE: `<out>/<prompt_id>.png`, one image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import OpenUniError
from ..hub import HubPart, check_models_cached
from . import DEFAULT_CLIP, DEFAULT_DETECTOR, DEFAULT_JUDGE
from .prompts import BenchmarkPrompt, dpg_questions_file, load_dpg, load_geneval, load_wise


@dataclass(frozen=True)
class ScorerOptions:
    """The models that judge, as the user names them (the defaults are downloaded from the Hub)."""

    detector: str = DEFAULT_DETECTOR  # GenEval
    clip: str = DEFAULT_CLIP  # GenEval
    object_names: Path | None = None  # GenEval: object_names.txt
    questions: Path | None = None  # DPG-Bench: dpg_bench.csv
    judge: str = DEFAULT_JUDGE  # DPG-Bench, WISE


@dataclass(frozen=True)
class Scored:
    rows: list[dict]  # per image, as the official results file
    scores: dict  # `overall` plus tasks/categories
    scorer: dict  # what judged, for the report


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    load_prompts: Callable[[Path | None], list[BenchmarkPrompt]]
    prompts_help: str
    images_per_prompt: int
    grid: bool  # a prompt's images tiled into one 2x2 file
    per_prompt_folder: bool  # GenEval: <key>/samples/<k>.png and <key>/metadata.jsonl
    results_file: str
    proxy: bool  # judged by a stand-in for the official judge
    score: Callable[[Path, ScorerOptions, list[BenchmarkPrompt] | None, str], Scored]
    scorer_settings: tuple[str, ...]  # the `ScorerOptions` fields its scorer reads

    def image_files(self, output: Path, prompt: BenchmarkPrompt) -> list[Path]:
        """The files one prompt produces, in sample order."""
        if self.per_prompt_folder:
            return [output / prompt.key / "samples" / f"{k:04d}.png" for k in range(self.images_per_prompt)]
        return [output / f"{prompt.key}.png"]

    def side_files(self, output: Path, prompt: BenchmarkPrompt) -> dict[Path, str]:
        """Text files the scorer reads next to the images."""
        if self.per_prompt_folder:
            return {output / prompt.key / "metadata.jsonl": json.dumps(prompt.record) + "\n"}
        return {}


def _progress(desc: str):
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, unit="image", dynamic_ncols=True)


def _require_images(folder: Path) -> None:
    if not any(folder.glob("*.png")):
        raise OpenUniError(f"{folder}: no images (<id>.png) to score")


def score_geneval(folder: Path, options: ScorerOptions, prompts, device: str) -> Scored:
    from . import geneval
    from .geneval_models import ClipColorClassifier, Mask2FormerDetector, read_object_names

    geneval.sample_images(folder)  # a folder without samples fails before the models load
    check_models_cached([HubPart("detector", "detector", options.detector),
                         HubPart("clip", "CLIP model", options.clip)], "GenEval scoring model(s)")
    detector = Mask2FormerDetector(options.detector, read_object_names(options.object_names), device=device)
    colors = ClipColorClassifier(options.clip, device=device)
    rows = geneval.score_folder(folder, detector, colors, _progress("geneval scoring"))
    scorer = {"name": "GenEval rules", "detector": options.detector, "clip": options.clip, "proxy": False,
              "differs": "transformers Mask2Former and CLIP instead of mmdet and open_clip"}
    return Scored(rows, geneval.summarize(rows), scorer)


def score_dpg(folder: Path, options: ScorerOptions, prompts, device: str) -> Scored:
    from . import dpg
    from .judges import TransformersJudge

    _require_images(folder)
    questions = dpg.read_questions(dpg_questions_file(options.questions))
    check_models_cached([HubPart("judge", "judge", options.judge)], "judge model(s)")
    judge = TransformersJudge(options.judge, device=device)
    results, skipped = dpg.score_folder(folder, questions, judge, _progress("dpg scoring"))
    rows = [{"item_id": key, **{name: value for name, value in result.items() if name != "category_scores"}}
            for key, result in results.items()]
    scores = {**dpg.summarize(results, questions), "skipped_without_questions": len(skipped)}
    scorer = {"name": "DPG-Bench aggregation", "judge": options.judge, "proxy": True,
              "official_judge": "mPLUG-large (ModelScope)"}
    return Scored(rows, scores, scorer)


def score_wise(folder: Path, options: ScorerOptions, prompts, device: str) -> Scored:
    from . import wise
    from .judges import TransformersJudge

    _require_images(folder)
    prompts = prompts if prompts is not None else load_wise(None)
    check_models_cached([HubPart("judge", "judge", options.judge)], "judge model(s)")
    judge = TransformersJudge(options.judge, device=device)
    records, missing = wise.score_folder(folder, prompts, judge, _progress("wise scoring"))
    scores = {**wise.summarize(records), "missing_images": len(missing)}
    scorer = {"name": "WiScore", "judge": options.judge, "proxy": True, "official_judge": "gpt-4o-2024-05-13"}
    return Scored(records, scores, scorer)


def load_shapes(path: Path | None):
    """The held-out prompts of a shapes data set (`openuni shapes make DIR`: DIR/heldout/evaluation_metadata.jsonl),
    or its prompts of training pairs (DIR/seen)."""
    if path is None:
        raise OpenUniError("shapes: give --prompts DIR/heldout (written by `openuni shapes make DIR`)")
    return load_geneval(path)


def score_shapes(folder: Path, options: ScorerOptions, prompts, device: str) -> Scored:
    from . import shapes

    rows, scores = shapes.score_folder(folder)
    scorer = {"name": "shapes rules (colour segmentation, shape fit)", "proxy": False}
    return Scored(rows, scores, scorer)


BENCHMARKS = {
    "geneval": Benchmark(
        name="geneval", title="GenEval", load_prompts=load_geneval,
        prompts_help="evaluation_metadata.jsonl (default: fetched from djghosh13/geneval at a pinned commit)",
        images_per_prompt=4, grid=False, per_prompt_folder=True, results_file="geneval_results.jsonl", proxy=False,
        score=score_geneval, scorer_settings=("detector", "clip", "object_names"),
    ),
    "dpg": Benchmark(
        name="dpg", title="DPG-Bench", load_prompts=load_dpg,
        prompts_help="the folder of <item_id>.txt prompts (default: fetched from TencentQQGYLab/ELLA at a pinned "
                     "commit)",
        images_per_prompt=4, grid=True, per_prompt_folder=False, results_file="dpg_results.jsonl", proxy=True,
        score=score_dpg, scorer_settings=("questions", "judge"),
    ),
    "wise": Benchmark(
        name="wise", title="WISE", load_prompts=load_wise,
        prompts_help="a folder with WISE's three JSON files, or one of them (default: fetched from PKU-YuanGroup/WISE)",
        images_per_prompt=1, grid=False, per_prompt_folder=False, results_file="wise_scores.jsonl", proxy=True,
        score=score_wise, scorer_settings=("judge",),
    ),
    "shapes": Benchmark(
        name="shapes", title="Synthetic shapes", load_prompts=load_shapes,
        prompts_help="the held-out prompts, DIR/heldout of `openuni shapes make DIR`, or DIR/seen (required)",
        images_per_prompt=4, grid=False, per_prompt_folder=True, results_file="shapes_results.jsonl", proxy=False,
        score=score_shapes, scorer_settings=(),
    ),
}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise OpenUniError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}") from None
