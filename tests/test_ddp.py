"""A real 2-process DDP run (gloo, CPU) matches one process with the same global batch.

The processes are started by torchrun, which is what `accelerate launch` runs on GPUs; on CPU `accelerate launch`
starts several processes only through mpirun.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training_helpers import OneThread, reset_accelerate, tiny_train_config, tiny_train_values, write_json_dataset

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_ddp_matches_one_process(tiny, tmp_path):
    from openuni.checkpoints import read_state_dict
    from openuni.training import checkpointing
    from openuni.training.trainer import Trainer

    data = write_json_dataset(tmp_path / "data", count=8)
    settings = dict(max_steps=3, train_transformer=True, checkpoint_every=3)

    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(tiny_train_values(tiny, data, tmp_path / "ddp", batch_size=2, **settings)))
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "openuni.cli", "train", str(config_file)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]

    reset_accelerate()
    with OneThread():
        single = Trainer(tiny_train_config(tiny, data, tmp_path / "single", batch_size=4, **settings))
        single_losses = single.run()
    reset_accelerate()

    last = checkpointing.complete_checkpoints(tmp_path / "ddp")[-1]
    ddp_losses = checkpointing.read_trainer_state(last)["losses"]
    loss_diff = max(abs(a - b) for a, b in zip(ddp_losses, single_losses))
    ddp_weights = read_state_dict(tmp_path / "ddp" / "final" / "openuni.pth")
    single_weights = read_state_dict(tmp_path / "single" / "final" / "openuni.pth")
    # Softmax attention is blind to a key bias, so its true gradient is 0 and Adam turns float noise into +-lr steps:
    # those are compared loosely, everything else tightly.
    noise_driven = {k for k in single_weights if k.endswith(("k_proj.bias", "attn2.to_k.bias"))}
    weight_diff = max((ddp_weights[k] - single_weights[k]).abs().max().item() for k in set(single_weights) - noise_driven)
    print(f"DDP vs single process: max loss diff {loss_diff:.3g}, max weight diff {weight_diff:.3g}")
    assert len(ddp_losses) == len(single_losses) == 3
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5, abs=1e-6)
    assert set(ddp_weights) == set(single_weights)
    for key, tensor in single_weights.items():
        atol = 3 * 3 * 1e-3 if key in noise_driven else 5e-5  # steps x lr for the noise-driven ones
        torch.testing.assert_close(ddp_weights[key], tensor, atol=atol, rtol=1e-4, msg=lambda m: f"{key}: {m}")


SLOW_RANK_RUN = """
import sys
import time

import yaml

from openuni.training.config import from_dict
from openuni.training.trainer import Trainer

trainer = Trainer(from_dict(yaml.safe_load(open(sys.argv[1]))))
if trainer.accelerator.process_index == 1:
    # Rank 1 writes its part of each checkpoint late, as a slow disk or a large shard would.
    trainer.accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: time.sleep(3))
trainer.run()
"""


def test_a_checkpoint_is_published_only_when_every_process_has_written_its_part(tiny, tmp_path):
    from openuni.training import checkpointing

    data = write_json_dataset(tmp_path / "data", count=4)
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(tiny_train_values(tiny, data, tmp_path / "run", max_steps=1, batch_size=1)))
    script = tmp_path / "slow_rank.py"
    script.write_text(SLOW_RANK_RUN)
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(script), str(config_file)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    [checkpoint] = checkpointing.complete_checkpoints(tmp_path / "run")
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
