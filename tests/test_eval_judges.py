"""The transformers VLM judge on a tiny random LLaVA written here (its answers are noise; the plumbing is real)."""

from __future__ import annotations

import re

import PIL.Image
import pytest
import torch

from conftest import PARITY_DIR
from openuni.errors import OpenUniError
from openuni.evaluation import dpg, wise
from openuni.evaluation.dpg import ItemQuestions
from openuni.evaluation.judges import TransformersJudge
from openuni.evaluation.prompts import BenchmarkPrompt

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config)

    if not (PARITY_DIR / "tokenizer").is_dir():
        pytest.skip("shared parity tokenizer not present")
    folder = tmp_path_factory.mktemp("vlm")
    tokenizer = AutoTokenizer.from_pretrained(PARITY_DIR / "tokenizer")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                   chat_template=CHAT_TEMPLATE, image_token="<image>", num_additional_image_tokens=1).save_pretrained(folder)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=8),
        text_config=Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def judge(tiny_vlm):
    return TransformersJudge(str(tiny_vlm))


def test_yes_no_answers_are_one_lower_case_word_and_greedy(judge):
    image = PIL.Image.new("RGB", (40, 40), "red")
    answer = judge.answer(image, "Is there a cat?")
    assert re.fullmatch(r"[a-z]*", answer)
    assert judge.answer(image, "Is there a cat?") == answer
    assert judge.proxy is True


def test_judge_drives_dpg_and_wise_scoring(judge, tmp_path):
    grid = PIL.Image.new("RGB", (64, 64), "blue")
    item = ItemQuestions({1: "Is there a cat?", 2: "Is the cat black?"}, {1: "entity - whole (cat)",
                         2: "attribute - color (cat, black)"}, {1: [0], 2: [1]})
    result = dpg.score_item(grid, item, judge)
    assert len(result["tile_scores"]) == 4 and 0.0 <= result["score"] <= 1.0

    grid.save(tmp_path / "7.png")
    records, missing = wise.score_folder(tmp_path, [BenchmarkPrompt("7", "a cat", {"Explanation": "a cat"})], judge)
    assert missing == [] and isinstance(records[0]["reply"], str)
    # A random model does not follow the rubric: the judgement counts as failed instead of as zeros.
    assert (records[0]["consistency"] is None) == (wise.parse_scores(records[0]["reply"]) is None)


def test_missing_judge_is_a_clear_error(tmp_path):
    with pytest.raises(OpenUniError, match="--judge"):
        TransformersJudge(str(tmp_path / "no-such-model"))


def test_cli_scores_dpg_and_wise_folders(tiny_vlm, tmp_path, capsys):
    import csv
    import json

    from openuni.cli import main

    dpg_dir, wise_dir = tmp_path / "dpg", tmp_path / "wise"
    dpg_dir.mkdir()
    wise_dir.mkdir()
    for item_id in ("3", "4"):
        PIL.Image.new("RGB", (64, 64), "green").save(dpg_dir / f"{item_id}.png")
    with open(tmp_path / "dpg_bench.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
                         "category_detailed", "tuple", "question_natural_language"])
        for item_id, qid, dependency in (("3", 1, "0"), ("3", 2, "0"), ("3", 3, "2"), ("4", 1, "0")):
            writer.writerow([item_id, "t", "k", qid, dependency, "entity", "whole", f"entity - whole (x{qid})", "Is it?"])
    base = ["--judge", str(tiny_vlm), "--device", "cpu"]
    assert main(["eval", "score", "dpg", str(dpg_dir), "--questions", str(tmp_path / "dpg_bench.csv"), *base]) == 0
    summary = json.loads((dpg_dir / "dpg_summary.json").read_text())
    assert summary["proxy"] is True and summary["scores"]["images"] == 2 and 0 <= summary["overall"] <= 100
    assert len((dpg_dir / "dpg_results.jsonl").read_text().splitlines()) == 2
    assert "PROXY" in (dpg_dir / "dpg_summary.md").read_text()

    PIL.Image.new("RGB", (32, 32), "white").save(wise_dir / "1.png")
    (tmp_path / "cultural_common_sense.json").write_text(json.dumps(
        [{"prompt_id": 1, "Prompt": "a lantern", "Explanation": "a lantern", "Subcategory": "Festival"}]))
    assert main(["eval", "score", "wise", str(wise_dir), "--prompts", str(tmp_path / "cultural_common_sense.json"),
                 *base]) == 0
    summary = json.loads((wise_dir / "wise_summary.json").read_text())
    assert summary["proxy"] is True and summary["scorer"]["official_judge"] == "gpt-4o-2024-05-13"
    scored = summary["scores"]
    assert scored["images"] + scored["failed_judgements"] == 1 and scored["missing_images"] == 0
    assert "wise overall" in capsys.readouterr().out
