"""A synthetic compositional text-to-image task: coloured circles, squares and triangles on a white canvas.

Every scene is a list of `Shape`s rendered at 64 px and described by a plain English caption. Prompts follow
GenEval's six tasks (single object, two objects, counting, colours, position, colour attribution) and carry
GenEval-style metadata (`tag`, `include` clauses), so the held-out prompts are an `evaluation_metadata.jsonl` that
`openuni eval shapes` reads. The split is compositional: some colour-shape pairs ("a green circle") never appear in a
training image or caption (green and circle do, separately); every held-out prompt names at least one of them.

`make_dataset` writes the reference's JSON layout (`annotations.json` listing `{image, annotation}`, captions in
`.txt` files) that `openuni train` reads with `kind: json`. Everything is fixed by the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import PIL.ImageDraw

from ..errors import OpenUniError
from ..files import check_writable

SIZE = 64
BACKGROUND = (255, 255, 255)
# Saturated and far apart in RGB (at least 148): a colour is read back by its nearest palette entry. All five are
# equally dark (R + G + B = 390), so an object's silhouette is the same whatever its colour along the grey axis of
# the shapes autoencoder's latents (`shapes_model.colour_transform`): that axis carries the shape alone, the two
# chroma axes the colour.
PALETTE = {
    "red": (245, 70, 75),
    "green": (60, 220, 110),
    "blue": (30, 110, 250),
    "yellow": (200, 190, 0),
    "purple": (160, 10, 220),
}
SHAPES = ("circle", "square", "triangle")
HELD_OUT_PAIRS = (("red", "triangle"), ("green", "circle"), ("blue", "square"))
RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
NUMBERS = {1: "one", 2: "two", 3: "three"}
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# The training split's prompts, in turn: position three times. Two pairs of tasks share their caption and scene
# (single_object/colors, two_object/color_attr), so with the tasks in turn a relation (4 layouts) had 1/24 of the
# images and was drawn right for 0.6 of even the training pairs (docs/benchmarks.md).
TRAINING_MIX = ("single_object", "two_object", "counting", "colors", "position", "color_attr", "position", "position")
CELL = SIZE // 2  # objects sit in the cells of a 2 x 2 grid
HALF = 12  # an object's half width in pixels: its box is 25 px, centred in its cell


@dataclass(frozen=True)
class Shape:
    color: str
    shape: str
    x: int  # centre, pixels
    y: int
    half: int  # half of the box side


def draw(shapes: list[Shape]) -> PIL.Image.Image:
    """The scene on a white canvas, without anti-aliasing (every pixel is background or a palette colour)."""
    image = PIL.Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    pen = PIL.ImageDraw.Draw(image)
    for item in shapes:
        box = (item.x - item.half, item.y - item.half, item.x + item.half, item.y + item.half)
        fill = PALETTE[item.color]
        if item.shape == "circle":
            pen.ellipse(box, fill=fill)
        elif item.shape == "square":
            pen.rectangle(box, fill=fill)
        else:  # pointing up, its base the box's bottom edge
            pen.polygon([(item.x, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return image


# -- prompts ------------------------------------------------------------------------------------------------------

def object_phrase(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def caption(tag: str, objects: list[tuple[str, str]], count: int = 1, relation: str | None = None) -> str:
    if tag == "counting":
        (color, shape), = objects
        return f"{NUMBERS[count]} {color} {shape}{'s' if count > 1 else ''}"
    if tag == "position":
        return f"{object_phrase(*objects[0])} {RELATIONS[relation]} {object_phrase(*objects[1])}"
    return " and ".join(object_phrase(*pair) for pair in objects)


def prompt_record(tag: str, objects: list[tuple[str, str]], count: int = 1, relation: str | None = None) -> dict:
    """A GenEval-style metadata object: the task, what must be in the image, and the caption."""
    include = [{"class": shape, "count": count, "color": color} for color, shape in objects]
    if relation is not None:
        include[0]["position"] = [relation, 1]
    return {"tag": tag, "include": include, "prompt": caption(tag, objects, count, relation)}


def pairs(held_out: bool) -> list[tuple[str, str]]:
    chosen = [(color, shape) for color in PALETTE for shape in SHAPES]
    return [pair for pair in chosen if (pair in HELD_OUT_PAIRS) == held_out]


def random_record(rng: random.Random, tag: str, held_out: bool, same_shape: bool = False) -> dict:
    """A prompt of `tag`. Held out: at least one object is a held-out pair (and the other any pair); training: none
    is. Two-object prompts name two different shapes, or with `same_shape` (training) two different pairs."""
    first = rng.choice(pairs(held_out))
    if tag in ("single_object", "colors"):
        return prompt_record(tag, [first])
    if tag == "counting":
        return prompt_record(tag, [first], count=rng.choice(sorted(NUMBERS)))
    pool = pairs(False) + (pairs(True) if held_out else [])
    others = [p for p in pool if p != first and (same_shape or p[1] != first[1])]
    objects = [first, rng.choice(others)]
    rng.shuffle(objects)
    relation = rng.choice(sorted(RELATIONS)) if tag == "position" else None
    return prompt_record(tag, objects, relation=relation)


# -- scenes -------------------------------------------------------------------------------------------------------

CELLS = {(column, row): (CELL // 2 + column * CELL, CELL // 2 + row * CELL) for row in range(2) for column in range(2)}


def placed(color: str, shape: str, cell: tuple[int, int]) -> Shape:
    return Shape(color, shape, *CELLS[cell], HALF)


# The cells objects take, in the order the prompt names them (column, row): a scene is fixed by its prompt.
ORDER = ((0, 0), (1, 0), (0, 1), (1, 1))
RELATION_CELLS = {"left of": ((0, 0), (1, 0)), "right of": ((1, 0), (0, 0)),
                  "above": ((0, 0), (0, 1)), "below": ((0, 1), (0, 0))}  # (A's cell, B's cell); image y points down


def render_scene(record: dict) -> list[Shape]:
    """The objects of a prompt record, each centred in its own cell of the 2 x 2 grid (neighbours are 7 px apart),
    in cells fixed by the prompt: named objects fill the top row, then the bottom one (`ORDER`); a relation puts A
    and B in the top row (left of / right of) or the left column (above / below). A model trained for minutes on a
    CPU drew speckled blobs where sizes and places were random, and mixed shapes across cells where the cells were
    drawn at random (each image token must then agree with the others on which cells hold what; docs/benchmarks.md).
    What is tested, colours bound to shapes never seen together, counts and relations, is the same."""
    clauses = record["include"]
    if record["tag"] == "position":
        a, b = RELATION_CELLS[clauses[0]["position"][0]]
        return [placed(clauses[0]["color"], clauses[0]["class"], a),
                placed(clauses[1]["color"], clauses[1]["class"], b)]
    objects = [(clause["color"], clause["class"]) for clause in clauses for _ in range(clause["count"])]
    return [placed(color, shape, cell) for (color, shape), cell in zip(objects, ORDER)]


# -- data sets ----------------------------------------------------------------------------------------------------

def training_samples(count: int, seed: int) -> list[tuple[dict, list[Shape]]]:
    """(prompt record, scene) pairs of the training split: the tasks of `TRAINING_MIX` in turn, no held-out pair.
    Two-object scenes may show one shape in two colours ("a red circle and a yellow circle"; 3 in 11 of them): the
    same words in the other order are another image, so only the order tells which colour goes where, the binding a
    held-out colour_attr prompt asks for (docs/benchmarks.md)."""
    rng = random.Random(f"shapes-train-{seed}")
    samples = []
    for index in range(count):
        record = random_record(rng, TRAINING_MIX[index % len(TRAINING_MIX)], held_out=False, same_shape=True)
        samples.append((record, render_scene(record)))
    return samples


def held_out_prompts(per_task: int, seed: int) -> list[dict]:
    """`per_task` distinct held-out prompts of each task (fewer where the task has fewer)."""
    return _task_prompts(per_task, random.Random(f"shapes-heldout-{seed}"), held_out=True)


def seen_prompts(per_task: int, seed: int) -> list[dict]:
    """`per_task` distinct prompts of each task naming only training pairs: what a model scores on these and not on
    the held-out ones is composition, not drawing."""
    return _task_prompts(per_task, random.Random(f"shapes-seen-{seed}"), held_out=False)


def _task_prompts(per_task: int, rng: random.Random, held_out: bool) -> list[dict]:
    records = []
    for tag in TASKS:
        seen: set[str] = set()
        for _ in range(per_task * 50):
            if len(seen) == per_task:
                break
            record = random_record(rng, tag, held_out=held_out)
            if record["prompt"] not in seen:
                seen.add(record["prompt"])
                records.append(record)
    return records


def make_dataset(output: str | Path, train_size: int = 6000, heldout_per_task: int = 20, seed: int = 0,
                 heldout_images: int = 4) -> dict:
    """Write the training split (`train/annotations.json`, images, captions), the held-out prompts
    (`heldout/evaluation_metadata.jsonl`), as many prompts of training pairs (`seen/evaluation_metadata.jsonl`) and,
    for checking the scorer, `heldout_images` rendered scenes per held-out prompt in the GenEval layout
    (`heldout/ground_truth/<00000>/samples/<0000>.png`)."""
    output = Path(output)
    if train_size < 1 or heldout_per_task < 1:
        raise OpenUniError("shapes: the training size and the held-out prompts per task must be at least 1")
    if heldout_images < 0:
        raise OpenUniError("shapes: the ground-truth images per held-out prompt must be 0 or more")
    check_writable(output, "the shapes folder", folder=True)
    train_dir = output / "train"
    (train_dir / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (record, scene) in enumerate(training_samples(train_size, seed)):
        name = f"{index:06d}"
        draw(scene).save(train_dir / "images" / f"{name}.png")
        (train_dir / "images" / f"{name}.txt").write_text(record["prompt"], encoding="utf-8")
        entries.append({"image": f"images/{name}.png", "annotation": f"images/{name}.txt"})
    (train_dir / "annotations.json").write_text(json.dumps(entries), encoding="utf-8")

    records, seen = held_out_prompts(heldout_per_task, seed), seen_prompts(heldout_per_task, seed)
    for split, chosen in (("heldout", records), ("seen", seen)):
        (output / split).mkdir(parents=True, exist_ok=True)
        (output / split / "evaluation_metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen),
                                                                  encoding="utf-8")
    heldout_dir = output / "heldout"
    for number, record in enumerate(records):
        folder = heldout_dir / "ground_truth" / f"{number:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
        image = draw(render_scene(record))  # a scene is fixed by its prompt: one drawing, saved as each sample
        for k in range(heldout_images):
            image.save(folder / "samples" / f"{k:04d}.png")
    summary = {"train": len(entries), "heldout_prompts": len(records), "seen_prompts": len(seen), "seed": seed,
               "held_out_pairs": [" ".join(pair) for pair in HELD_OUT_PAIRS]}
    (output / "shapes.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def caption_vocabulary() -> list[str]:
    """Every word a caption can use."""
    words = {"a", "and", "to", "the", "of", "left", "right", "above", "below", *PALETTE, *NUMBERS.values()}
    words.update(SHAPES)
    words.update(f"{shape}s" for shape in SHAPES)
    return sorted(words)
