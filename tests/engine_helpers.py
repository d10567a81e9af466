"""Running a program under `accelerate launch` with a shipped engine config, on CPU processes, as a user would.

`launch` starts `accelerate launch --config_file configs/accelerate/<engine>.yaml --num_processes N PROGRAM...`
in its own process group with a free rendezvous port and one thread per process, and kills the whole group (the
launcher and every worker) when the timeout passes. `train` runs `-m openuni.cli train` that way and returns the
losses the run recorded in its newest checkpoint's trainer_state.json.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE_CONFIGS = {
    "ddp": ROOT / "configs" / "accelerate" / "ddp.yaml",
    "fsdp": ROOT / "configs" / "accelerate" / "fsdp.yaml",
    "deepspeed": ROOT / "configs" / "accelerate" / "deepspeed_zero2.yaml",
}


@dataclass
class Launched:
    returncode: int
    output: str  # stdout and stderr of the launcher and of every process, interleaved
    seconds: float

    def check(self) -> "Launched":
        assert self.returncode == 0, f"exit {self.returncode} after {self.seconds:.0f}s:\n{self.output[-4000:]}"
        return self


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def engine_environment() -> dict[str, str]:
    """This process's environment for the launched ones: the source tree importable, one thread per process (two
    processes on a shared 2-core machine), and no accelerate settings inherited from whoever runs the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    src = str(ROOT / "src")
    env.update(PYTHONPATH=os.pathsep.join(p for p in (src, str(ROOT / "tests"), env.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def launch(engine: str, program: list[str], num_processes: int = 2, timeout: float = 600) -> Launched:
    """`accelerate launch` of `program` (`-m module args` or `script.py args`) with the shipped `engine` config."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ENGINE_CONFIGS[engine]),
               "--num_processes", str(num_processes), "--main_process_port", str(free_port()), *program]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=engine_environment(), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher's workers too, not only the launcher
        output, _ = process.communicate()
        output += f"\n[killed after {timeout:.0f}s]"
    return Launched(process.returncode, output, time.perf_counter() - started)


def recorded_losses(output_dir: str | Path) -> list[float]:
    """The loss history of the newest complete checkpoint of a run (the trainer's layout)."""
    from openuni.training import checkpointing

    found = checkpointing.complete_checkpoints(output_dir)
    assert found, f"no complete checkpoint in {output_dir}"
    return json.loads((found[-1] / checkpointing.STATE_FILE).read_text())["losses"]


def train(engine: str, config_file: str | Path, overrides: list[str], num_processes: int = 2,
          timeout: float = 600) -> list[float]:
    """`openuni train CONFIG overrides` under `engine` on `num_processes` CPU processes; the recorded losses."""
    from openuni.training.config import build_config

    launch(engine, ["-m", "openuni.cli", "train", str(config_file), *overrides], num_processes, timeout).check()
    return recorded_losses(build_config(str(config_file), overrides).output_dir)
