"""The resume decision under `accelerate launch` on CPU processes, with a toy shaped like OpenUni (tests/engine_toy.py):
one decision stops every process with one line when a process cannot read the chosen checkpoint, and a checkpoint
of another engine is refused with what to do. (Each engine matching one process and resuming onto its own curve is
tested on `openuni train` itself, in tests/test_engine_training.py.)
"""

from __future__ import annotations

import shutil

import pytest

from engine_helpers import launch

STEPS = 4
TOY = "tests/engine_toy.py"


def toy_run(engine: str, output_dir, num_processes: int = 2, *extra: str):
    return launch(engine, [TOY, str(output_dir), str(STEPS), *extra], num_processes=num_processes, timeout=400)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Each engine's uninterrupted 2-process run, made once for the tests that read it."""
    runs = {}

    def run(engine: str):
        if engine not in runs:
            runs[engine] = tmp_path_factory.mktemp(f"{engine}-2-processes")
            toy_run(engine, runs[engine]).check()
        return runs[engine]

    return run


def test_a_process_that_cannot_read_the_chosen_checkpoint_stops_every_process_with_one_line(tmp_path):
    from openuni.training import checkpointing

    # Output folders that are not shared: only the main process's holds the checkpoint it chooses.
    only_on_node_0 = tmp_path / "rank-0" / "checkpoints" / checkpointing.checkpoint_name(2)
    only_on_node_0.mkdir(parents=True)
    checkpointing.write_trainer_state(only_on_node_0, dict(step=2, losses=[1.0, 1.0]))
    (only_on_node_0 / "model.safetensors").touch()  # as DDP's save_state writes it: readable by the main process
    result = toy_run("ddp", tmp_path, 2, "--unshared-output")
    assert result.returncode != 0
    errors = [line for line in result.output.splitlines() if line.startswith("engine_toy: error:")]
    # Every process stops with the same line; the launcher may kill the slower one before it prints its copy.
    assert 1 <= len(errors) <= 2 and len(set(errors)) == 1
    assert "ran on 2 processes; losses" not in result.output  # nobody went on to train
    assert "process 1 cannot read the checkpoint" in errors[0] and "must be shared" in errors[0]
    assert result.seconds < 120  # at once, not after a collective's timeout


def test_a_checkpoint_of_another_engine_is_refused_with_what_to_do(two_process_run, tmp_path):
    shutil.copytree(two_process_run("ddp"), tmp_path / "run")
    result = toy_run("fsdp", tmp_path / "run", 2)
    assert result.returncode != 0
    errors = {line for line in result.output.splitlines() if line.startswith("engine_toy: error:")}
    assert len(errors) == 1
    [error] = errors
    assert "was written under DDP, this run is FSDP" in error and "configs/accelerate/ddp.yaml" in error
