"""`openuni extract-latents --task edit|reconstruct`: target latents with the source (pixels or InternViT features),
and training on them as on the images."""

from __future__ import annotations

import PIL.Image
import pytest
import torch

from training_helpers import (OneThread, edit_pair, instruction_of, pixels_of, reset_accelerate, synthetic_image,
                              tiny_train_config, write_edit_dataset, write_json_dataset)


def extract(*args) -> int:
    from openuni.cli import main

    with OneThread():
        return main(["extract-latents", *map(str, args)])


def encode(pipe, image: PIL.Image.Image) -> torch.Tensor:
    with torch.no_grad():
        return pipe.model.pixels_to_latents(pixels_of(image)[None])[0]


def test_edit_pairs_cache_the_targets_latents_and_the_resized_source(tiny, tiny_pipe, tmp_path):
    from openuni.data.readers import open_source

    index = write_edit_dataset(tmp_path / "edits", count=5, missing_target=(2,))
    out = tmp_path / "cache"
    assert extract("json", index, "--task", "edit", "--output", out, "--vae", tiny.vae, "--resolution", 64,
                   "--shard-size", 3, "--batch-size", 2, "--device", "cpu") == 0
    cache = open_source("latents", str(out), "edit")
    assert len(cache) == 4  # the pair without a target is skipped
    for position, item in enumerate((0, 1, 3, 4)):
        sample = cache[position]
        source, target = edit_pair(item, 64)
        assert sample["instruction"] == instruction_of(item)
        assert torch.equal(sample["source_pixels"], pixels_of(source))
        torch.testing.assert_close(sample["latents"], encode(tiny_pipe, target), atol=1e-4, rtol=1e-4)


def test_reconstruction_caches_one_centred_crop_as_source_and_target(tiny, tiny_pipe, tmp_path):
    from openuni.data.readers import open_source
    from openuni.prompting import RECONSTRUCTION_INSTRUCTION

    index = write_json_dataset(tmp_path / "images", count=2, no_caption=(0, 1))  # captions are not needed
    out = tmp_path / "cache"
    assert extract("json", index, "--task", "reconstruct", "--output", out, "--vae", tiny.vae, "--resolution", 64,
                   "--device", "cpu") == 0
    sample = open_source("latents", str(out), "reconstruct")[1]
    crop = synthetic_image(1).crop((8, 0, 72, 64))  # the centred square of the 80x64 image
    assert sample["instruction"] == RECONSTRUCTION_INSTRUCTION
    assert torch.equal(sample["source_pixels"], pixels_of(crop))
    torch.testing.assert_close(sample["latents"], encode(tiny_pipe, crop), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("features", [False, True], ids=["pixels", "features"])
def test_training_on_cached_edits_is_training_on_the_images(tiny, tiny_pipe, tmp_path, features):
    """The cache changes where latents (and features) come from, not what trains: the same losses, up to the float
    rounding of encoding in other batches."""
    from openuni.data.readers import open_source
    from openuni.training.trainer import Trainer

    index = write_edit_dataset(tmp_path / "edits", count=4)
    out = tmp_path / "cache"
    extra = ["--source-features", tiny.mllm] if features else []
    assert extract("json", index, "--task", "edit", "--output", out, "--vae", tiny.vae, "--resolution", 64,
                   "--batch-size", 3, "--device", "cpu", *extra) == 0
    if features:
        sample = open_source("latents", str(out), "edit")[0]
        with torch.no_grad():
            expected = tiny_pipe.model.semantic_features(pixels_of(edit_pair(0, 64)[0])[None])[0]
        assert "source_pixels" not in sample
        torch.testing.assert_close(sample["source_features"], expected, atol=1e-5, rtol=1e-5)
    settings = dict(task="edit", max_steps=3, train_transformer=True)
    reset_accelerate()
    from_images = Trainer(tiny_train_config(tiny, index, tmp_path / "images", **settings)).run()
    reset_accelerate()
    from_cache = Trainer(tiny_train_config(tiny, index, tmp_path / "cached", **settings,
                                           data=[dict(kind="latents", path=str(out))])).run()
    reset_accelerate()
    assert from_cache == pytest.approx(from_images, rel=1e-4)


def test_edit_extraction_settings_are_checked(tiny, tmp_path, capsys):
    index = write_edit_dataset(tmp_path / "edits", count=2)
    common = ["json", index, "--output", tmp_path / "cache", "--vae", tiny.vae, "--resolution", 64, "--device", "cpu"]
    assert extract(*common, "--task", "text2image", "--source-features", tiny.mllm) == 2
    assert "use it with --task edit or --task reconstruct" in capsys.readouterr().err
    assert extract(*common, "--task", "edit") == 0
    images = write_json_dataset(tmp_path / "images", count=2)
    assert extract("json", images, *common[2:], "--task", "reconstruct") == 2  # the folder holds edit shards
    assert "task edit (now reconstruct)" in capsys.readouterr().err
    assert extract("json", images, *common[2:]) == 2  # nor text-to-image ones
    assert "task edit (now None)" in capsys.readouterr().err


def test_a_micro_batch_of_cached_features_and_images_conditions_each_on_its_own_source(tiny, tmp_path):
    """Two edit sources, one cached with features and one of images, may fill one micro-batch: the images' features
    are computed there, and the loss is the one of the same batch given as pixels."""
    from openuni.data.readers import open_source
    from openuni.training.trainer import Trainer

    index = write_edit_dataset(tmp_path / "edits", count=2)
    out = tmp_path / "cache"
    assert extract("json", index, "--task", "edit", "--output", out, "--vae", tiny.vae, "--resolution", 64,
                   "--device", "cpu", "--source-features", tiny.mllm) == 0
    reset_accelerate()
    trainer = Trainer(tiny_train_config(tiny, index, tmp_path / "run", task="edit",
                                        data=[dict(kind="latents", path=str(out)), dict(kind="json", path=str(index))]))
    stream = trainer.sample_stream().dataset
    cached, images = open_source("latents", str(out), "edit"), open_source("json", str(index), "edit")
    mixed = [stream.finish(dict(cached[0]), 0), stream.finish(dict(images[1]), 1)]
    plain = [stream.finish(dict(images[0]), 0), stream.finish(dict(images[1]), 1)]
    mixed_inputs, plain_inputs = trainer.model_inputs(mixed), trainer.model_inputs(plain)
    assert "source_pixels" not in mixed_inputs and "source_features" not in plain_inputs
    with torch.no_grad():
        expected_features = trainer.model.semantic_features(plain_inputs["source_pixels"])
        torch.testing.assert_close(mixed_inputs["source_features"], expected_features, atol=1e-5, rtol=1e-5)
        losses = [trainer.wrapped(**inputs) for inputs in (mixed_inputs, plain_inputs)]
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=1e-4)
    reset_accelerate()


def test_a_torn_edit_shard_is_refused_for_training_and_redone_by_a_rerun(tiny, tmp_path):
    from openuni.data.readers import open_source
    from openuni.errors import OpenUniError

    index = write_edit_dataset(tmp_path / "edits", count=4)
    out = tmp_path / "cache"
    args = ["json", index, "--task", "edit", "--output", out, "--vae", tiny.vae, "--resolution", 64, "--shard-size", 2,
            "--device", "cpu"]
    assert extract(*args) == 0
    before = [open_source("latents", str(out), "edit")[i] for i in range(4)]
    whole = (out / "shard-000001.safetensors").read_bytes()
    (out / "shard-000001.safetensors").write_bytes(whole[: len(whole) // 2])  # a copy cut short
    with pytest.raises(OpenUniError, match="shard-000001.safetensors is damaged"):
        open_source("latents", str(out), "edit")
    assert extract(*args) == 0
    after = [open_source("latents", str(out), "edit")[i] for i in range(4)]
    assert [s["key"] for s in after] == [s["key"] for s in before]
    assert all(torch.equal(a["latents"], b["latents"]) and torch.equal(a["source_pixels"], b["source_pixels"])
               for a, b in zip(after, before))
