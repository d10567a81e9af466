"""`openuni extract-latents`: shards complete or absent, resumed without redoing or duplicating anything."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from training_helpers import OneThread, write_json_dataset, write_webdataset


def run_cli(*args) -> int:
    from openuni.cli import main

    with OneThread():
        return main(["extract-latents", *map(str, args)])


def read_shards(folder):
    keys, latents = [], {}
    for shard in sorted(folder.glob("shard-*.safetensors")):
        with safe_open(shard, framework="pt") as reader:
            shard_keys = json.loads(reader.metadata()["keys"])
            keys += shard_keys
            latents.update({k: reader.get_tensor(f"latents.{i}") for i, k in enumerate(shard_keys)})
    return keys, latents


def test_extraction_resumes_after_a_kill_without_duplicates_or_torn_files(tiny, tmp_path):
    index = write_json_dataset(tmp_path / "data", count=7, corrupt=(3,))
    out = tmp_path / "latents"
    args = ["json", index, "--output", out, "--vae", tiny.vae, "--resolution", 64, "--shard-size", 3,
            "--batch-size", 2, "--device", "cpu"]
    assert run_cli(*args) == 0
    shards = sorted(out.glob("shard-*.safetensors"))
    assert len(shards) == 3
    keys, latents = read_shards(out)
    assert len(keys) == len(set(keys)) == 6  # the corrupt image is skipped

    # A kill mid-shard: shard 1 never renamed into place (only its partial file, torn), the others complete.
    shards[1].unlink()
    (out / ".shard-000001.safetensors.partial").write_bytes(b"torn")
    untouched = {p.name: p.stat().st_mtime_ns for p in (shards[0], shards[2])}
    assert run_cli(*args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (shards[0], shards[2])} == untouched
    resumed_keys, resumed = read_shards(out)
    assert sorted(resumed_keys) == sorted(keys) and len(resumed_keys) == len(set(resumed_keys))
    assert all(torch.equal(resumed[k], latents[k]) for k in keys)
    assert not (out / ".shard-000001.safetensors.partial").exists()


def test_latents_are_the_vae_encoding_and_train_like_images(tiny, tiny_pipe, tmp_path, capsys):
    from openuni.data.images import crop_to, to_pixels
    from openuni.data.sources import CachedLatents, JsonImageFolder

    urls = write_webdataset(tmp_path / "wds", shards=2, per_shard=2)
    out = tmp_path / "latents"
    assert run_cli("webdataset", urls, "--output", out, "--vae", tiny.vae, "--resolution", 64, "--device", "cpu") == 0
    assert "2/2 [" in capsys.readouterr().err  # the progress bar knows its total (so it shows an ETA)
    cache = CachedLatents(out)
    assert len(cache) == 4
    sample = cache[0]
    index = write_json_dataset(tmp_path / "json", count=1)
    image = JsonImageFolder(index)[0]["image"]
    with torch.no_grad():
        expected = tiny_pipe.model.pixels_to_latents(to_pixels(crop_to(image, 64, 64))[None])[0]
    assert sample["latents"].shape == expected.shape
    assert torch.allclose(sample["latents"], expected, atol=1e-4, rtol=1e-4)


def test_bad_arguments_fail_cleanly(tiny, tmp_path, capsys):
    index = write_json_dataset(tmp_path / "data", count=1)
    assert run_cli("json", index, "--output", tmp_path / "o", "--vae", tiny.vae, "--resolution", 50) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert run_cli("json", tmp_path / "missing.json", "--output", tmp_path / "o", "--vae", tiny.vae) == 2


def test_resuming_with_other_settings_is_refused_instead_of_duplicating_samples(tiny, tmp_path, capsys):
    index = write_json_dataset(tmp_path / "data", count=4)
    out = tmp_path / "latents"
    common = ["json", index, "--output", out, "--vae", tiny.vae, "--batch-size", 2, "--device", "cpu"]
    assert run_cli(*common, "--resolution", 64, "--shard-size", 3) == 0
    (out / "shard-000001.safetensors").unlink()  # interrupted before its last shard
    before = sorted(p.name for p in out.glob("shard-*"))
    # Shard 1 of size 2 would repeat items 2 and 3... of which item 2 is already in shard 0.
    assert run_cli(*common, "--resolution", 64, "--shard-size", 2) == 2
    assert "shard_size 3 (now 2)" in capsys.readouterr().err
    assert run_cli(*common, "--resolution", 96, "--shard-size", 3) == 2
    assert "resolution 64 (now 96)" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("shard-*")) == before
    assert run_cli(*common, "--resolution", 64, "--shard-size", 3) == 0
    keys, _ = read_shards(out)
    assert sorted(keys) == [f"{i:04d}.png" for i in range(4)]
