"""`openuni train` itself under the shipped engine configs, on CPU processes through `accelerate launch`.

The tiny model with a fresh connector (so every process must draw the same one from the seed) and SANA training,
on cached latents. Each engine's 2-process run (batch 2 per process) must match the 1-process run of the same
global batch (4) within LOSS_RTOL, and resume from its own step-2 checkpoint onto its own uninterrupted curve.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from engine_helpers import launch, recorded_losses
from training_helpers import OneThread, reset_accelerate, tiny_train_values, write_latent_dataset

STEPS = 4
# Two processes sum their gradients in another order than one process does (gloo all-reduce / reduce-scatter):
# float32 rounding, amplified a little by AdamW over 4 steps. Measured differences are ~1e-7 relative.
LOSS_RTOL = 1e-5
FRESH_TINY_CONNECTOR = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_queries=8)


def train_values(tiny, tmp_path, name: str, **overrides) -> dict:
    data = tmp_path / "latents"
    if not data.exists():
        write_latent_dataset(data, count=8)
    settings = dict(max_steps=STEPS, checkpoint_every=2, keep_checkpoints=2, init_checkpoint="none",
                    connector=FRESH_TINY_CONNECTOR, train_transformer=True, max_prompt_tokens=16)
    values = tiny_train_values(tiny, data, tmp_path / name, **{**settings, **overrides})
    values["data"] = [dict(kind="latents", path=str(data))]
    return values


def config_file(tiny, tmp_path, name: str, **overrides):
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(train_values(tiny, tmp_path, name, **overrides)))
    return config


def cli_train(engine: str, config, *overrides: str):
    return launch(engine, ["-m", "openuni.cli", "train", str(config), *overrides], num_processes=2, timeout=400)


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-training")
    made = {}

    def run(engine: str):
        if engine not in made:
            config = config_file(tiny, root, engine, batch_size=2)
            result = cli_train(engine, config).check()
            made[engine] = (config, root / engine, result)
        return made[engine]

    return run


@pytest.fixture(scope="module")
def one_process_losses(tiny, tmp_path_factory):
    from openuni.training.config import from_dict
    from openuni.training.trainer import Trainer

    root = tmp_path_factory.mktemp("engine-training-1")
    reset_accelerate()
    with OneThread():
        losses = Trainer(from_dict(train_values(tiny, root, "single", batch_size=4))).run()
    reset_accelerate()
    return losses


@pytest.mark.parametrize("engine", ["ddp", "fsdp", "deepspeed"])
def test_openuni_train_under_each_engine_matches_one_process_and_resumes_onto_its_curve(engine, runs,
                                                                                       one_process_losses, tmp_path):
    from openuni.checkpoints import read_state_dict
    from openuni.training import checkpointing
    from openuni.training.engines import checkpoint_engine

    config, run, result = runs(engine)
    losses = recorded_losses(run)
    checkpoint = checkpointing.complete_checkpoints(run)[-1]
    assert checkpoint_engine(checkpoint) == engine  # the engine asked for is the one that ran and wrote it
    difference = max(abs(a - b) / abs(b) for a, b in zip(losses, one_process_losses))
    print(f"{engine}: 2 processes {losses} vs 1 process {one_process_losses}: max rel diff {difference:.3g}")
    assert len(losses) == STEPS and losses == pytest.approx(one_process_losses, rel=LOSS_RTOL)
    assert read_state_dict(run / "final" / "openuni.pth")  # the export gathers the whole model

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(checkpointing.checkpoint_root(resumed) / checkpoint.name)  # as if killed after step 2's
    shutil.rmtree(resumed / "final")
    again = cli_train(engine, config, f"output_dir={resumed}").check()
    assert "resumed from" in again.output and "at step 2" in again.output
    resumed_losses = recorded_losses(resumed)
    print(f"{engine}: resumed {resumed_losses} vs uninterrupted {losses}")
    assert resumed_losses == losses  # the same engine, processes and machine: the same bytes


@pytest.mark.parametrize("setting, message", [
    (dict(sample_every=1, sample_steps=1), "sample_every needs the whole model"),
    (dict(ema_decay=0.9), "ema_decay needs the whole trained weights"),
], ids=["sampling", "weight-average"])
def test_what_needs_whole_weights_is_refused_under_fsdp_at_start_up_with_one_line(tiny, tmp_path, setting, message):
    config = config_file(tiny, tmp_path, "fsdp-refused", batch_size=2, **setting)
    result = cli_train("fsdp", config)
    assert result.returncode != 0
    errors = {line for line in result.output.splitlines() if line.startswith("openuni train: error:")}
    assert len(errors) == 1, result.output[-3000:]
    assert message in errors.pop()
    assert not (tmp_path / "fsdp-refused" / "checkpoints").exists()


def test_fsdp_pretraining_shards_the_connector_alone_and_checkpoints_only_it(tiny, tmp_path):
    """In pretraining the frozen SANA is not part of the trained model: FSDP wraps the connector's layers only."""
    from openuni.training import checkpointing

    config = config_file(tiny, tmp_path, "fsdp-pretrain", batch_size=2, max_steps=2, train_transformer=False)
    cli_train("fsdp", config).check()
    [checkpoint] = checkpointing.complete_checkpoints(tmp_path / "fsdp-pretrain")
    metadata = checkpoint / "pytorch_model_fsdp_0" / ".metadata"
    from openuni.training.checkpoint_files import DCPMetadataUnpickler

    with metadata.open("rb") as file:
        keys = set(DCPMetadataUnpickler(file).load().state_dict_metadata)
    assert keys and all(key.startswith("model.connector.") for key in keys), sorted(keys)[:5]
    assert (tmp_path / "fsdp-pretrain" / "final" / "pipeline").is_dir()
