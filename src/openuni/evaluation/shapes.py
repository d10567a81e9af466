"""Scoring the synthetic-shapes task by rules: no learned judge.

An image is segmented by colour: a pixel belongs to a palette colour when it is saturated and close to that colour
(anything else is background). Each connected region of one colour large enough to be an object is classified by
fitting the three shapes to its bounding box (ellipse, box, upward triangle) and keeping the best fit by IoU; a
region that fits no shape well, or is far from square, is no object. The objects (colour, shape, centre) are then
checked against the prompt's GenEval-style metadata:

- single_object: an object of the shape; colors: an object of the shape in the colour;
- two_object: both shapes; color_attr: both (colour, shape) pairs;
- counting: exactly `count` objects of the shape;
- position: both shapes, the first in the relation to the second (centres, offset larger along the relation's
  axis than across it).

A task's score is the fraction of correct images, overall the mean of the task scores (GenEval's summary).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from ..data.shapes import PALETTE, TASKS
from ..errors import OpenUniError

MAX_COLOR_DISTANCE = 70.0  # RGB distance to the nearest palette colour (the palette's closest pair is 148 apart)
MIN_SATURATION = 80  # max - min channel: white, grey and black are background
MIN_AREA = 60  # pixels; the smallest object drawn (a triangle of side 17) covers ~150
MIN_FIT = 0.75  # IoU of the region with its best shape
MAX_ASPECT = 1.4  # bounding box sides


@dataclass(frozen=True)
class Found:
    color: str
    shape: str
    x: float
    y: float
    fit: float


def color_labels(pixels: np.ndarray) -> np.ndarray:
    """Per pixel the index of its palette colour, or -1."""
    rgb = pixels.astype(np.float32)
    palette = np.array(list(PALETTE.values()), dtype=np.float32)
    distance = np.linalg.norm(rgb[:, :, None, :] - palette[None, None], axis=-1)
    nearest = distance.argmin(-1)
    saturated = (rgb.max(-1) - rgb.min(-1)) >= MIN_SATURATION
    return np.where(saturated & (distance.min(-1) <= MAX_COLOR_DISTANCE), nearest, -1)


def regions(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of a boolean mask, as arrays of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, members = [start], []
        while stack:
            y, x = stack.pop()
            members.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        found.append(np.array(members))
    return found


def shape_templates(height: int, width: int) -> dict[str, np.ndarray]:
    """The three shapes filling a box of this size, as `data.shapes.draw` draws them."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    ry, rx = height / 2, width / 2
    ellipse = ((xs - rx) / rx) ** 2 + ((ys - ry) / ry) ** 2 <= 1.0
    triangle = np.abs(xs - rx) <= rx * ys / height
    return {"circle": ellipse, "square": np.ones((height, width), dtype=bool), "triangle": triangle}


def classify(members: np.ndarray) -> tuple[str, float] | None:
    """(shape, IoU of the best fit) of one region, or None when it is no object."""
    top, left = members.min(0)
    bottom, right = members.max(0) + 1
    height, width = bottom - top, right - left
    if max(height, width) > MAX_ASPECT * min(height, width):
        return None
    mask = np.zeros((height, width), dtype=bool)
    mask[members[:, 0] - top, members[:, 1] - left] = True
    fits = {name: (mask & template).sum() / (mask | template).sum()
            for name, template in shape_templates(height, width).items()}
    best = max(fits, key=fits.get)
    return (best, float(fits[best])) if fits[best] >= MIN_FIT else None


def find_objects(image: PIL.Image.Image) -> list[Found]:
    labels = color_labels(np.asarray(image.convert("RGB")))
    objects = []
    for index, color in enumerate(PALETTE):
        for members in regions(labels == index):
            if len(members) < MIN_AREA:
                continue
            shape = classify(members)
            if shape is not None:
                y, x = members.mean(0)
                objects.append(Found(color, shape[0], float(x), float(y), shape[1]))
    return objects


def holds(relation: str, a: Found, b: Found) -> bool:
    dx, dy = a.x - b.x, a.y - b.y  # image y points down
    along, across = (dx, dy) if relation in ("left of", "right of") else (dy, dx)
    sign = 1 if relation in ("right of", "below") else -1
    return sign * along > 0 and abs(along) > abs(across)


def judge(record: dict, objects: list[Found]) -> bool:
    """Whether the objects found in one image satisfy its prompt (rules above)."""
    tag, clauses = record["tag"], record["include"]

    def of(clause, with_color):
        return [o for o in objects if o.shape == clause["class"] and (not with_color or o.color == clause["color"])]

    if tag in ("single_object", "two_object"):
        return all(of(clause, False) for clause in clauses)
    if tag in ("colors", "color_attr"):
        return all(of(clause, True) for clause in clauses)
    if tag == "counting":
        return len(of(clauses[0], False)) == clauses[0]["count"]
    if tag == "position":
        relation = clauses[0]["position"][0]
        return any(holds(relation, a, b) for a in of(clauses[0], False) for b in of(clauses[1], False))
    raise OpenUniError(f"unknown shapes task {tag!r}")


def score_images(items: list[tuple[dict, PIL.Image.Image]]) -> tuple[list[dict], dict]:
    """Rows (one per image) and the summary: per task the fraction correct, overall their mean."""
    rows = []
    for record, image in items:
        objects = find_objects(image)
        rows.append({"tag": record["tag"], "prompt": record["prompt"], "correct": judge(record, objects),
                     "found": [f"{o.color} {o.shape}" for o in objects]})
    return rows, summarize(rows)


def summarize(rows: list[dict]) -> dict:
    tasks = {}
    for tag in TASKS:
        marks = [row["correct"] for row in rows if row["tag"] == tag]
        if marks:
            tasks[tag] = sum(marks) / len(marks)
    overall = sum(tasks.values()) / len(tasks) if tasks else None
    return {"overall": overall, "tasks": tasks, "images": len(rows)}


def read_folder(folder: Path) -> list[tuple[dict, PIL.Image.Image]]:
    """(metadata, image) pairs of a GenEval-layout folder (`<00000>/metadata.jsonl`, `<00000>/samples/*.png`)."""
    items = []
    for prompt_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir() and (p / "metadata.jsonl").is_file()):
        record = json.loads((prompt_dir / "metadata.jsonl").read_text(encoding="utf-8").splitlines()[0])
        for path in sorted((prompt_dir / "samples").glob("*.png")):
            with PIL.Image.open(path) as image:
                items.append((record, image.convert("RGB")))
    if not items:
        raise OpenUniError(f"{folder}: no <00000>/samples/<0000>.png images with metadata.jsonl to score")
    return items


def score_folder(folder: Path) -> tuple[list[dict], dict]:
    return score_images(read_folder(folder))
