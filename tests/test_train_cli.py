"""`openuni train`: presets, YAML configs with overrides, logging, samples, export loaded by `openuni generate`."""

from __future__ import annotations

import math

import pytest
import yaml

from conftest import tiny_cli_args
from training_helpers import OneThread, reset_accelerate, tiny_train_values, write_json_dataset


def run_cli(*args) -> int:
    from openuni.cli import main

    reset_accelerate()
    with OneThread():
        try:
            return main([str(a) for a in args])
        finally:
            reset_accelerate()


def test_train_from_a_config_file_logs_samples_and_exports_for_generate(tiny, tmp_path, capsys):
    from openuni.training import checkpointing

    data = write_json_dataset(tmp_path / "data", count=4)
    values = tiny_train_values(tiny, data, tmp_path / "run", max_steps=2, checkpoint_every=1, keep_checkpoints=1)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(values))
    code = run_cli("train", config, "log_with=tensorboard", "sample_every=2", "sample_steps=2",
                   "mixed_precision=bf16", "activation_checkpointing=true", "train_transformer=true")
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "run"
    assert [p.name for p in checkpointing.complete_checkpoints(run)] == ["step-00000002"]  # keep the last 1
    losses = checkpointing.read_trainer_state(run / "checkpoints" / "step-00000002")["losses"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    assert (run / "samples" / "step-00000002.png").is_file()

    args = tiny_cli_args(tiny)
    args[args.index("--checkpoint") + 1] = str(run / "final" / "openuni.pth")
    image = tmp_path / "out.png"
    assert run_cli("generate", "a green disc", "--steps", 2, "--height", 64, "--width", 64, "-o", image, *args) == 0
    assert image.is_file()


def test_print_config_resolves_presets_and_overrides(capsys):
    assert run_cli("train", "finetune-l-1024", "data.0.path=blip3o.json", "batch_size=8", "--print-config") == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["lr"] == 1e-5 and config["max_steps"] == 10_000 and config["train_transformer"] is True
    assert config["resolution"] == 1024 and config["batch_size"] == 8 and config["data"][0]["path"] == "blip3o.json"
    assert run_cli("train", "pretrain-b-512", "data.0.path=x", "--print-config") == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["lr"] == 1e-4 and config["max_steps"] == 100_000 and config["train_transformer"] is False
    assert config["init_checkpoint"] == "none" and config["betas"] == [0.9, 0.95] and config["weight_decay"] == 0.05


@pytest.mark.parametrize("args, message", [
    (["pretrain-b-512", "data.0.path=x", "learning_rate=1"], "unknown setting 'learning_rate'"),
    (["pretrain-b-512", "data.3.path=x"], "no data source 3"),
    (["pretrain-b-512", "data.0.path=x", "batch_size"], "not key=value"),
    (["pretrain-b-512", "data.0.path=x", "resolution=500"], "multiple of 32"),
    (["no-such-preset"], "neither a preset"),
])
def test_bad_configs_fail_with_one_clear_line(args, message, capsys):
    assert run_cli("train", *args, "--print-config") == 2
    assert message in capsys.readouterr().err


def test_make_tiny_prints_a_train_command_that_works_as_printed(tmp_path, capsys):
    """A new user's first training run: `make-tiny` writes a model and a dataset and prints the command; the run's
    losses are on the real model's scale (~1), not ~1e5 as the random VAE's raw latents would make them."""
    import shlex

    from openuni.training import checkpointing

    assert run_cli("make-tiny", tmp_path / "tiny") == 0
    out = capsys.readouterr().out
    printed = [line.strip() for line in out.splitlines() if line.strip().startswith("openuni train")]
    assert len(printed) == 1, printed
    command = shlex.split(printed[0])[1:]
    assert run_cli(*command, "max_steps=2", "checkpoint_every=2") == 0, capsys.readouterr().err
    assert "trained 2 steps" in capsys.readouterr().out
    run = tmp_path / "tiny" / "run"
    losses = checkpointing.read_trainer_state(run / "checkpoints" / "step-00000002")["losses"]
    assert len(losses) == 2 and all(0.05 < loss < 50 for loss in losses), losses
    assert (run / "final" / "openuni.pth").is_file()


def test_print_config_shows_a_preset_without_data(capsys):
    assert run_cli("train", "finetune-edit-b-512", "--print-config") == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"] == [] and config["task"] == "edit" and config["batch_size"] == 16
    assert "mllm" in config and "init_checkpoint" in config and "connector_heads" in config


def test_no_data_is_refused_before_training(tmp_path, capsys):
    assert run_cli("train", "pretrain-b-512", f"output_dir={tmp_path}") == 2
    assert "no training data" in capsys.readouterr().err


def test_settings_may_follow_the_flags(capsys):
    assert run_cli("train", "pretrain-b-512", "data.0.path=x", "--resume", "none", "max_steps=3",
                   "--print-config", "lr=2e-4") == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["resume"] == "none" and config["max_steps"] == 3 and config["lr"] == 2e-4


def test_an_unknown_flag_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "pretrain-b-512", "--no-such-flag", "none")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: openuni train" in err and "unrecognized arguments: --no-such-flag none" in err


def test_loader_messages_name_the_training_settings(tmp_path, capsys):
    from openuni.commands.train import as_settings

    data = write_json_dataset(tmp_path / "data", count=2)
    code = run_cli("train", "finetune-b-512", f"data.0.path={data}", f"output_dir={tmp_path / 'run'}",
                   "log_with=none", "mllm=/nonexistent/mllm")
    assert code == 2
    err = capsys.readouterr().err
    assert "mllm=/nonexistent/mllm: no such directory" in err and "--mllm" not in err
    assert as_settings("download it and pass --mllm PATH, or set HF_HUB_OFFLINE=1") == \
        "download it and pass mllm=PATH, or set HF_HUB_OFFLINE=1"
    assert as_settings("--checkpoint x.pth: no such file; --connector-heads 3 does not divide 64") == \
        "init_checkpoint=x.pth: no such file; connector_heads=3 does not divide 64"
    assert as_settings("the checkpoint and --mllm belong to different variants") == \
        "the checkpoint and `mllm` belong to different variants"


def test_missing_data_fails_before_the_model_loads(tmp_path, capsys):
    code = run_cli("train", "finetune-b-512", f"data.0.path={tmp_path / 'missing.json'}", f"output_dir={tmp_path}",
                   "log_with=none", "mllm=/nonexistent/mllm")
    assert code == 2
    assert "cannot read the dataset index" in capsys.readouterr().err


def test_numbers_written_without_a_dot_and_wrong_types_are_handled(capsys):
    from openuni.training.config import build_config

    # YAML reads `2e-5` as text; the docs' own example `lr=2e-5` must still give a number AdamW takes.
    config = build_config("finetune-b-512", ["data.0.path=x", "lr=2e-5", "weight_decay=5e-2", "max_steps=1e3",
                                             "data.0.ratio=3"])
    assert config.lr == 2e-5 and config.weight_decay == 0.05 and config.max_steps == 1000
    assert isinstance(config.max_steps, int) and config.data[0].ratio == 3.0
    for override, message in [("batch_size=abc", "batch_size: expected int"), ("batch_size=1.5", "expected int"),
                              ("train_transformer=maybe", "expected bool"), ("data.0.ratio=x", "data.0.ratio"),
                              ("lr.x=1", "lr has no setting 'x'"), ("data.0=3", "data source's fields")]:
        assert run_cli("train", "pretrain-b-512", "data.0.path=x", override, "--print-config") == 2, override
        assert message in capsys.readouterr().err, override


class Planted:
    """Unpickling it runs a shell command that creates the marker file (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def checkpointed_run(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpointed")
    data = write_json_dataset(root / "data", count=4)
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_train_values(tiny, data, root / "run", max_steps=2, checkpoint_every=1,
                                                       keep_checkpoints=2, max_prompt_tokens=16)))
    assert run_cli("train", config) == 0
    return config, root / "run"


def resumed_copy(checkpointed_run, tmp_path):
    import shutil

    config, run = checkpointed_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return config, copy, sorted((copy / "checkpoints").iterdir())


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin",
                                     "extra/state.pt"])
def test_a_crafted_pickle_in_a_checkpoint_is_refused_with_one_line_and_never_runs(checkpointed_run, tmp_path,
                                                                                 planted, capsys):
    import torch

    config, run, checkpoints = resumed_copy(checkpointed_run, tmp_path)
    marker = tmp_path / "marker"
    target = checkpoints[-1] / planted
    target.parent.mkdir(exist_ok=True)
    if planted.endswith(".pkl") and planted.startswith("custom"):
        import pickle

        target.write_bytes(pickle.dumps(Planted(marker)))  # as accelerate's custom checkpoints are written
    else:
        torch.save({"state": Planted(marker)}, target)
    capsys.readouterr()
    code = run_cli("train", config, f"output_dir={run}", "max_steps=3", "resume=auto")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("openuni train: error:") and planted.split("/")[0] in err[0]
    assert not marker.exists()
    assert not (run / "checkpoints" / "step-00000003").exists()


def test_a_torn_checkpoint_is_a_clear_error_naming_what_to_do(checkpointed_run, tmp_path, capsys):
    config, run, checkpoints = resumed_copy(checkpointed_run, tmp_path)
    for name in ("model.safetensors", "optimizer.bin"):
        torn = checkpoints[-1] / name
        good = torn.read_bytes()
        torn.write_bytes(good[: len(good) // 2])  # cut off mid-write
        capsys.readouterr()
        assert run_cli("train", config, f"output_dir={run}", "max_steps=3", "resume=auto") == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert f"{name} is torn" in line and f"delete {checkpoints[-1]}" in line
        torn.write_bytes(good)
    # Deleted as the error says, the run resumes from the previous checkpoint.
    import shutil

    shutil.rmtree(checkpoints[-1])
    assert run_cli("train", config, f"output_dir={run}", "max_steps=3", "resume=auto") == 0
    assert "resumed from" in capsys.readouterr().out
