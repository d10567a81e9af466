"""The GenEval models from transformers, on tiny random Mask2Former and CLIP checkpoints written here."""

from __future__ import annotations

import json
import string
from collections import Counter

import numpy as np
import PIL.Image
import pytest
import torch

from openuni.evaluation.geneval import COLORS, Detection
from openuni.evaluation.geneval_models import ClipColorClassifier, Mask2FormerDetector, mask_box, masked_crop


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    names = ["person"] * 64 + ["mouse", "remote", "keyboard"] + [f"class{i}" for i in range(67, 80)]
    config = Mask2FormerConfig(backbone_config=backbone, hidden_dim=32, mask_feature_size=32, feature_size=32,
                               num_queries=10, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                               dim_feedforward=64, encoder_feedforward_dim=64, num_labels=80,
                               id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                               use_pretrained_backbone=False)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mask2former")
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip")
    letters = list(string.ascii_lowercase) + ["-"]
    vocab = {t: i for i, t in enumerate(letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    special = dict(eos_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|startoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=77, **special),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    return folder


def test_detector_candidates_follow_mmdet(tiny_mask2former):
    detector = Mask2FormerDetector(str(tiny_mask2former))
    assert detector.class_names[64:67] == ["computer mouse", "tv remote", "computer keyboard"]  # GenEval's names
    image = PIL.Image.new("RGB", (64, 48), (200, 30, 30))
    found = detector(image)
    detections = [d for group in found.values() for d in group]
    assert len(detections) == 100  # the best 100 (query, class) pairs
    for detection in detections:
        assert detection.mask.shape == (48, 64) and detection.box == mask_box(detection.mask)
        assert 0.0 <= detection.score <= 1.0

    # The same (query, class) pairs as transformers' own instance post-processing selects.
    inputs = detector.processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = detector.model(pixel_values=inputs.pixel_values)
    reference = detector.processor.post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=[(48, 64)])
    # transformers keeps those of the pairs whose (384 px) mask is not empty: all of them are among ours.
    reference_labels = Counter(detector.class_names[s["label_id"]] for s in reference[0]["segments_info"])
    assert sum(reference_labels.values()) > 0
    assert not reference_labels - Counter({name: len(group) for name, group in found.items()})


def test_clip_colours_use_the_mask_and_the_class_name(tiny_clip):
    classify = ClipColorClassifier(str(tiny_clip))
    rows = classify.classifier("car")
    assert rows.shape[0] == len(COLORS) and torch.allclose(rows.norm(dim=-1), torch.ones(len(COLORS)))
    assert not torch.allclose(rows, classify.classifier("bus"))  # the class name is in two of the templates

    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    mask = np.zeros((48, 64), bool)
    mask[5:30, 10:50] = True
    masked = Detection(mask_box(mask), 0.9, mask)
    colors = classify(image, "car", [masked, Detection((0, 0, 64, 48), 0.5)])
    assert len(colors) == 2 and set(colors) <= set(COLORS)
    # The masked crop is what CLIP sees: the same answer on the pre-composited crop.
    assert classify(masked_crop(image, masked), "car", [Detection((0, 0, 40, 25), 0.9)]) == colors[:1]


def test_cli_scores_a_geneval_folder(tiny_mask2former, tiny_clip, tmp_path):
    from openuni.cli import main

    metadata = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}
    (tmp_path / "00000" / "samples").mkdir(parents=True)
    (tmp_path / "00000" / "metadata.jsonl").write_text(json.dumps(metadata) + "\n")
    PIL.Image.new("RGB", (32, 32), "red").save(tmp_path / "00000" / "samples" / "0000.png")
    (tmp_path / "00000" / "samples" / "grid.png").write_bytes(b"")  # not a sample name: ignored, as officially
    assert main(["eval", "score", "geneval", str(tmp_path), "--detector", str(tiny_mask2former),
                 "--clip", str(tiny_clip), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "geneval_results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["tag"] == "colors" and json.loads(rows[0]["metadata"]) == metadata
    summary = json.loads((tmp_path / "geneval_summary.json").read_text())
    assert summary["proxy"] is False and summary["overall"] == summary["scores"]["tasks"]["colors"]
    assert summary["overall"] == float(rows[0]["correct"])


def test_generate_then_score_in_one_command(tiny, tiny_mask2former, tiny_clip, tmp_path):
    from conftest import tiny_cli_args
    from openuni.cli import main

    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text(json.dumps({"tag": "single_object", "include": [{"class": "person", "count": 1}],
                                    "prompt": "a photo of a person"}) + "\n")
    out = tmp_path / "geneval"
    assert main(["eval", "geneval", "--output", str(out), "--prompts", str(metadata), "--steps", "1", "--height", "32",
                 "--width", "32", "--score", "--detector", str(tiny_mask2former), "--clip", str(tiny_clip),
                 *tiny_cli_args(tiny)]) == 0
    summary = json.loads((out / "geneval_summary.json").read_text())
    assert summary["scores"]["images"] == 4 and summary["generation"]["steps"] == 1
    assert summary["generation"]["model"]["checkpoint"] == str(tiny.checkpoint)
    assert "## Generation" in (out / "geneval_summary.md").read_text()


def test_a_limited_run_is_recorded_and_reported_as_a_smoke_run(tiny, tiny_mask2former, tiny_clip, tmp_path, capsys):
    from conftest import tiny_cli_args
    from openuni.cli import main

    lines = [{"tag": tag, "include": [{"class": "person", "count": 1}], "prompt": f"a photo of a person, {tag} {i}"}
             for tag in ("single_object", "counting") for i in range(3)]
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "geneval"
    base = ["eval", "geneval", "--output", str(out), "--prompts", str(metadata), "--steps", "1", "--height", "32",
            "--width", "32", *tiny_cli_args(tiny)]
    assert main([*base, "--limit", "1", "--score", "--detector", str(tiny_mask2former), "--clip", str(tiny_clip)]) == 0
    printed = capsys.readouterr().out
    assert "smoke run: 2 of 6 prompts" in printed and "SMOKE RUN" in printed
    # The first prompt of each task, under the names a full run gives them.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["00000", "00003"]
    run = json.loads((out / "openuni_run.json").read_text())
    assert run["generation"]["smoke_run"] == {"prompts_per_task": 1, "of_prompts": 6}
    summary = json.loads((out / "geneval_summary.json").read_text())
    assert summary["smoke_run"]["prompts_per_task"] == 1 and summary["scores"]["images"] == 8
    assert "SMOKE RUN" in (out / "geneval_summary.md").read_text()
    # A full run never resumes into (and so never passes for) the smoke run's folder.
    assert main(base) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*base, "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


def test_scoring_offline_names_every_missing_model_and_the_command(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from openuni.cli import main
    from openuni.evaluation import DEFAULT_CLIP, DEFAULT_DETECTOR

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "00000" / "samples").mkdir(parents=True)
    (tmp_path / "00000" / "metadata.jsonl").write_text(json.dumps({"tag": "single_object", "prompt": "a cat"}) + "\n")
    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "00000" / "samples" / "0000.png")
    assert main(["eval", "score", "geneval", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert DEFAULT_DETECTOR in err and DEFAULT_CLIP in err and "--detector" in err and "--clip" in err
    assert f"`hf download {DEFAULT_DETECTOR} && hf download {DEFAULT_CLIP}`" in err
