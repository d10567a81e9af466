"""`openuni train` itself under the shipped engine configs, on CPU processes through `accelerate launch`."""

from __future__ import annotations

import yaml

from engine_helpers import launch
from training_helpers import tiny_train_values, write_latent_dataset


def train_config(tiny, tmp_path, name: str, **overrides):
    data = write_latent_dataset(tmp_path / "latents", count=8)
    values = tiny_train_values(tiny, data, tmp_path / name, **overrides)
    values["data"] = [dict(kind="latents", path=str(data))]
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(values))
    return config


def test_sampling_under_fsdp_is_refused_at_start_up_with_one_line(tiny, tmp_path):
    config = train_config(tiny, tmp_path, "fsdp-sampling", sample_every=1, sample_steps=1)
    result = launch("fsdp", ["-m", "openuni.cli", "train", str(config)], num_processes=2, timeout=300)
    assert result.returncode != 0
    errors = {line for line in result.output.splitlines() if line.startswith("openuni train: error:")}
    assert len(errors) == 1, result.output[-3000:]
    assert "sample_every needs the whole model" in errors.pop()
    assert not (tmp_path / "fsdp-sampling" / "checkpoints").exists()
