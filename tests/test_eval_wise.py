"""WISE: WiScore arithmetic, categories by prompt id, the weighted overall, judge replies and the report."""

from __future__ import annotations

import json

import PIL.Image
import pytest

from openuni.errors import OpenUniError
from openuni.evaluation import wise
from openuni.evaluation.prompts import BenchmarkPrompt
from openuni.evaluation.report import write_report


def test_wiscore_weights():
    assert wise.wiscore(2, 2, 2) == pytest.approx(1.0)
    assert wise.wiscore(0, 0, 0) == 0.0
    assert wise.wiscore(2, 0, 0) == pytest.approx(0.7)
    assert wise.wiscore(1, 2, 0) == pytest.approx((0.7 + 0.4) / 2)
    assert wise.wiscore(0, 1, 2) == pytest.approx((0.2 + 0.2) / 2)


@pytest.mark.parametrize("prompt_id, category", [(1, "CULTURE"), (400, "CULTURE"), (401, "TIME"), (567, "TIME"),
                                                 (568, "SPACE"), (700, "SPACE"), (701, "BIOLOGY"), (801, "PHYSICS"),
                                                 (1000, "CHEMISTRY"), (1001, None)])
def test_categories_by_prompt_id(prompt_id, category):
    assert wise.category_of(prompt_id) == category


def record(prompt_id, c, r, a):
    return {"prompt_id": prompt_id, "consistency": c, "realism": r, "aesthetic_quality": a}


def test_overall_is_the_category_weighted_sum():
    firsts = {"CULTURE": 1, "TIME": 401, "SPACE": 568, "BIOLOGY": 701, "PHYSICS": 801, "CHEMISTRY": 901}
    records = [record(firsts["CULTURE"], 2, 2, 2), record(firsts["CULTURE"] + 1, 0, 0, 0)]  # culture 0.5
    records += [record(firsts[name], 2, 0, 0) for name in ("TIME", "SPACE")]  # 0.7 each
    records += [record(firsts[name], 0, 2, 2) for name in ("BIOLOGY", "PHYSICS", "CHEMISTRY")]  # 0.3 each
    records += [record(5, None, None, None)]  # a failed judgement is counted, not scored
    summary = wise.summarize(records)
    assert summary["categories"]["CULTURE"] == pytest.approx(0.5)
    assert summary["overall"] == pytest.approx(0.4 * 0.5 + 0.167 * 0.7 + 0.133 * 0.7 + 0.3 * 0.3)
    assert summary["failed_judgements"] == 1 and summary["images"] == 7
    partial = wise.summarize(records[:2])
    assert partial["overall"] is None and partial["categories"] == {"CULTURE": pytest.approx(0.5)}
    unjudged = wise.summarize([record(3, None, None, None)])
    assert unjudged["overall"] is None and unjudged["categories"] == {} and unjudged["failed_judgements"] == 1
    with pytest.raises(OpenUniError):
        wise.summarize([])


def test_parse_scores_from_replies():
    assert wise.parse_scores("Consistency: 2\nRealism: 1\nAesthetic Quality: 0") == {
        "consistency": 2.0, "realism": 1.0, "aesthetic_quality": 0.0}
    assert wise.parse_scores("**Consistency**: 1\n**Realism:** 1\naesthetic quality 2")["aesthetic_quality"] == 2.0
    assert wise.parse_scores("Consistency: 2\nRealism: 1") is None


class FixedJudge:
    name, proxy = "fixed", True

    def judge(self, image, prompt, explanation):
        return "Consistency: 1\nRealism: 2\nAesthetic Quality: 2" if "good" in prompt else "I cannot tell."


def test_score_folder_and_report(tmp_path):
    prompts = [BenchmarkPrompt("1", "a good prompt", {"Explanation": "e", "Subcategory": "s"}),
               BenchmarkPrompt("2", "a vague prompt", {}), BenchmarkPrompt("3", "missing", {})]
    for key in ("1", "2"):
        PIL.Image.new("RGB", (8, 8)).save(tmp_path / f"{key}.png")
    records, missing = wise.score_folder(tmp_path, prompts, FixedJudge())
    assert missing == ["3"]
    assert records[0]["consistency"] == 1.0 and records[0]["Subcategory"] == "s"
    assert records[1]["consistency"] is None
    scores = wise.summarize(records)
    json_path, md_path = write_report(tmp_path, "wise", scores, {"judge": "fixed", "proxy": True},
                                      {"generation": {"seed": 42, "steps": 20}, "elapsed_s": 3.0}, 1.25)
    summary = json.loads(json_path.read_text())
    assert summary["proxy"] is True and summary["overall"] is None
    assert summary["scores"]["categories"] == {"CULTURE": pytest.approx(wise.wiscore(1, 2, 2))}
    assert summary["generation"] == {"seed": 42, "steps": 20} and summary["scoring_elapsed_s"] == 1.2
    text = md_path.read_text()
    assert "PROXY" in text and "CULTURE" in text and "seed: 42" in text


def test_a_damaged_image_is_a_clear_error(tmp_path):
    (tmp_path / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not the rest")
    with pytest.raises(OpenUniError, match="1.png.*generation again"):
        wise.score_folder(tmp_path, [BenchmarkPrompt("1", "a good prompt", {})], FixedJudge())
