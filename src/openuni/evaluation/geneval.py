"""GenEval's scoring rules (djghosh13/geneval `evaluation/evaluate_images.py` + `summary_scores.py`), model-free.

Per image: per class, detections scoring above 0.3 (0.9 for the counting task), best first, at most 16. Every
`include` clause must hold (AND): at least `count` objects of the class; with a colour, at least `count` of those
(the `count` most confident) classified as that colour; with a position, each of them in that relation to every
object of the clause it refers to, and that clause must have held. Any `exclude` clause holding fails the image (OR).
A task's score is the fraction of its correct images; the overall score is the mean of the task scores.

Detections and colours come from outside (`geneval_models` has the Mask2Former and CLIP used by `openuni eval`), so
these rules run on hand-built detections in tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import OpenUniError
from .outputs import read_output_image

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1  # margin, as a fraction of the two objects' summed sizes
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {color} {object}", "a photo of a {color}-colored {object}", "a photo of a {color} object")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
IMAGE_NAME = re.compile(r"\d+\.png")


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float
    mask: np.ndarray | None = None  # bool [H, W]


# (image, class name, detections) -> one colour name per detection
ColorClassifier = Callable[[object, str, list[Detection]], list[str]]


def keep_detections(candidates: dict[str, list[Detection]], tag: str) -> dict[str, list[Detection]]:
    """Per class: above the task's threshold, most confident first, at most 16; classes with none are dropped."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    kept = {}
    for name, detections in candidates.items():
        confident = sorted((d for d in detections if d.score > threshold), key=lambda d: -d.score)[:MAX_OBJECTS]
        if confident:
            kept[name] = confident
    return kept


def relative_position(a: Detection, b: Detection) -> set[str]:
    """Where A is relative to B: centre offset shrunk by the margin, then its direction (image y points down)."""
    boxes = np.array([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    size_a, size_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    shrunk = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def evaluate(metadata: dict, detections: dict[str, list[Detection]], classify_colors: ColorClassifier | None = None,
             image=None) -> tuple[bool, str]:
    """(correct, reasons) for one image's kept detections."""
    correct, reasons, matched_groups = True, [], []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = detections.get(name, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in clause:
                if classify_colors is None:
                    raise ValueError("a colour clause needs a colour classifier")
                colors = classify_colors(image, name, found)
                if colors.count(clause["color"]) < count:
                    matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(f"expected {clause['color']} {name}>={count}, found "
                                   f"{colors.count(clause['color'])} {clause['color']}; and {seen}")
            if "position" in clause and matched:
                matched = _position_holds(clause, name, found, matched_groups, reasons)
        correct = correct and matched
        matched_groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        name = clause["class"]
        if len(detections.get(name, [])) >= clause["count"]:
            correct = False
            reasons.append(f"expected {name}<{clause['count']}, found {len(detections[name])}")
    return correct, "\n".join(reasons)


def _position_holds(clause: dict, name: str, found: list[Detection], matched_groups: list, reasons: list[str]) -> bool:
    relation, target_index = clause["position"]
    targets = matched_groups[target_index]
    if targets is None:
        reasons.append(f"no target for {name} to be {relation}")
        return False
    for obj in found:
        for target in targets:
            actual = relative_position(obj, target)
            if relation not in actual:
                reasons.append(f"expected {name} {relation} target, found {' and '.join(actual)} target")
                return False
    return True


def summarize(results: list[dict]) -> dict:
    """Per-task accuracy (tasks in order of appearance) and overall = mean of the task scores."""
    if not results:
        raise OpenUniError("no GenEval images were scored")
    by_task: dict[str, list[bool]] = {}
    by_prompt: dict[str, list[bool]] = {}
    for result in results:
        by_task.setdefault(result["tag"], []).append(bool(result["correct"]))
        by_prompt.setdefault(result["metadata"], []).append(bool(result["correct"]))
    tasks = {tag: float(np.mean(values)) for tag, values in by_task.items()}
    return {
        "overall": float(np.mean(list(tasks.values()))),
        "tasks": tasks,
        "task_counts": {tag: [int(sum(v)), len(v)] for tag, v in by_task.items()},
        "images": len(results),
        "prompts": len(by_prompt),
        "correct_images": float(np.mean([bool(r["correct"]) for r in results])),
        "correct_prompts": float(np.mean([any(v) for v in by_prompt.values()])),
    }


def sample_images(folder: Path) -> list[tuple[dict, Path]]:
    """(metadata, image path) for every sample of an output folder, as the official evaluator finds them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OpenUniError(f"{folder}: no such folder")
    samples = []
    for prompt_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        try:
            metadata = json.loads((prompt_dir / "metadata.jsonl").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise OpenUniError(f"{prompt_dir}: unreadable metadata.jsonl ({error})") from None
        images = sorted((prompt_dir / "samples").glob("*.png")) if (prompt_dir / "samples").is_dir() else []
        samples += [(metadata, image) for image in images if IMAGE_NAME.fullmatch(image.name)]
    if not samples:
        raise OpenUniError(f"{folder}: no GenEval samples (<00000>/samples/<0000>.png with metadata.jsonl)")
    return samples


def score_image(path: Path, metadata: dict, detect, classify_colors: ColorClassifier) -> dict:
    """One row of the official results.jsonl."""
    image = read_output_image(path)
    detections = keep_detections(detect(image), metadata["tag"])
    correct, reason = evaluate(metadata, detections, classify_colors, image)
    return {
        "filename": str(path), "tag": metadata["tag"], "prompt": metadata["prompt"], "correct": correct,
        "reason": reason, "metadata": json.dumps(metadata),
        "details": json.dumps({name: [[*d.box, d.score] for d in found] for name, found in detections.items()}),
    }


def score_folder(folder: Path, detect, classify_colors: ColorClassifier, progress=lambda items: items) -> list[dict]:
    """`detect(image)` -> candidates per class; one row per sample, as the official results.jsonl."""
    return [score_image(path, metadata, detect, classify_colors) for metadata, path in progress(sample_images(folder))]
