"""WISE scoring (PKU-YuanGroup/WISE): WiScore per image, category averages by prompt id, the weighted overall.

WiScore = (0.7 Consistency + 0.2 Realism + 0.1 Aesthetic Quality) / 2, each judged 0..2, so it lies in [0, 1].
Categories are prompt-id ranges; overall = 0.4 Cultural + 0.167 Time + 0.133 Space + 0.1 (Biology + Physics +
Chemistry), given only when every category has scores. The official judge is GPT-4o-2024-05-13 with the authors'
rubric; ours is any `WiseJudge` (by default an open VLM from transformers, labelled proxy) with our own rubric.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import numpy as np
import PIL.Image

from ..errors import OpenUniError
from .outputs import read_output_image
from .prompts import BenchmarkPrompt

WEIGHTS = {"consistency": 0.7, "realism": 0.2, "aesthetic_quality": 0.1}
CATEGORIES = {  # name: (first prompt id, last prompt id, weight in the overall score)
    "CULTURE": (1, 400, 0.4),
    "TIME": (401, 567, 0.167),
    "SPACE": (568, 700, 0.133),
    "BIOLOGY": (701, 800, 0.1),
    "PHYSICS": (801, 900, 0.1),
    "CHEMISTRY": (901, 1000, 0.1),
}
RUBRIC = """You judge how well an image realises a text prompt that requires world knowledge.
Prompt: "{prompt}"
What a correct image shows: "{explanation}"
Give three integer scores from 0 to 2:
Consistency - 0: key content missing or wrong; 1: partly right; 2: everything the prompt implies is shown correctly.
Realism - 0: clearly artificial or physically impossible; 1: believable with visible flaws; 2: like a real photograph.
Aesthetic Quality - 0: poor composition and colour; 1: acceptable; 2: outstanding.
Be strict: give 2 only when there is no doubt. Reply with exactly three lines:
Consistency: <score>
Realism: <score>
Aesthetic Quality: <score>"""
SCORE_LINE = re.compile(r"\**(consistency|realism|aesthetic quality)\**\s*[:：]?\s*\**\s*([0-2])", re.IGNORECASE)


class WiseJudge(Protocol):
    name: str
    proxy: bool

    def judge(self, image: PIL.Image.Image, prompt: str, explanation: str) -> str:
        """The judge's reply; `parse_scores` reads the three scores from it."""


def wiscore(consistency: float, realism: float, aesthetic_quality: float) -> float:
    return (WEIGHTS["consistency"] * consistency + WEIGHTS["realism"] * realism
            + WEIGHTS["aesthetic_quality"] * aesthetic_quality) / 2


def category_of(prompt_id: int) -> str | None:
    for name, (first, last, _) in CATEGORIES.items():
        if first <= prompt_id <= last:
            return name
    return None


def parse_scores(reply: str) -> dict[str, float] | None:
    """The three scores of a judge reply, or None when any is missing."""
    found = {}
    for name, value in SCORE_LINE.findall(reply):
        found.setdefault(name.lower().replace(" ", "_"), float(value))
    return found if set(found) == set(WEIGHTS) else None


def summarize(records: list[dict]) -> dict:
    """records: {prompt_id, consistency, realism, aesthetic_quality} (None scores = failed judgement)."""
    if not records:
        raise OpenUniError("no WISE images to score")
    by_category: dict[str, list[float]] = {}
    failed = 0
    for record in records:
        category = category_of(int(record["prompt_id"]))
        if category is None:
            continue
        if any(record.get(k) is None for k in WEIGHTS):
            failed += 1
            continue
        by_category.setdefault(category, []).append(
            wiscore(record["consistency"], record["realism"], record["aesthetic_quality"]))
    categories = {name: float(np.mean(by_category[name])) for name in CATEGORIES if name in by_category}
    complete = len(categories) == len(CATEGORIES)
    overall = sum(CATEGORIES[name][2] * score for name, score in categories.items()) if complete else None
    return {"overall": overall, "categories": categories, "images": sum(map(len, by_category.values())),
            "failed_judgements": failed,
            "note": None if complete else "overall needs every category; some have no scores"}


def score_folder(folder: str | Path, prompts: list[BenchmarkPrompt], judge: WiseJudge,
                 progress=lambda items: items) -> tuple[list[dict], list[str]]:
    """Judge every `<prompt_id>.png`; returns (score records as the official scores jsonl, prompt ids missing)."""
    folder = Path(folder)
    records, missing = [], []
    for prompt in progress(prompts):
        path = folder / f"{prompt.key}.png"
        if not path.is_file():
            missing.append(prompt.key)
            continue
        reply = judge.judge(read_output_image(path), prompt.text, prompt.record.get("Explanation", ""))
        scores = parse_scores(reply) or dict.fromkeys(WEIGHTS)
        records.append({"prompt_id": int(prompt.key), "Subcategory": prompt.record.get("Subcategory"), **scores,
                        "reply": reply})
    return records, missing
