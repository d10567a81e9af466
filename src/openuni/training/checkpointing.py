"""Training checkpoints on disk: written atomically, the last K kept, the latest complete one found again.

A checkpoint is `checkpoints/step-00001000/`: accelerate's state (what trains, optimiser, RNG) plus
`trainer_state.json` (step, counters, LR scheduler: JSON, never a pickle). It is written as `.step-00001000.partial`
and renamed when complete, so a crash mid-write leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..errors import OpenUniError
from ..files import partial_path as hidden_partial, publish_directory, write_text_atomically

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"  # the weight average (`ema_decay`, training/ema.py)
NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def partial_path(output_dir: str | Path, step: int) -> Path:
    return hidden_partial(checkpoint_root(output_dir) / checkpoint_name(step))


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def write_trainer_state(directory: Path, state: dict) -> None:
    # Its presence marks a checkpoint complete, so it must never be seen half-written.
    write_text_atomically(directory / STATE_FILE, json.dumps(state, indent=1))


def read_trainer_state(directory: Path) -> dict:
    try:
        return json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OpenUniError(f"{directory} is not a complete training checkpoint ({error})") from None


def publish(output_dir: str | Path, step: int, keep: int) -> Path:
    """Rename the finished partial checkpoint into place and delete all but the newest `keep`."""
    final = checkpoint_root(output_dir) / checkpoint_name(step)
    publish_directory(partial_path(output_dir, step), final)
    for old in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_root(output_dir).glob(".step-*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`auto`: the newest complete checkpoint in the output dir (None when there is none); a path; `none`."""
    if resume is None or str(resume).lower() in ("none", "false", "no"):
        return None
    if str(resume).lower() == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise OpenUniError(f"--resume {resume}: not a complete training checkpoint (no {STATE_FILE})")
    return path


def agreed_resume(accelerator, resume: str | None, output_dir: str | Path, check=None) -> Path | None:
    """`resolve_resume` decided once, by the main process, for every process; each then checks it can read that
    checkpoint (and runs `check(path)`, which raises OpenUniError). Any process's error stops every process with the
    same one line, at once, instead of processes resuming at different steps and then waiting on each other.

    A checkpoint in the output folder is passed on by its name there, so a node whose output folder is not shared
    with the main one's finds it missing (the folder must be shared; the error says so)."""
    from accelerate.utils import broadcast_object_list, gather_object

    decision = [None, None]  # [checkpoint, error], the main process's
    if accelerator.is_main_process:
        try:
            found = resolve_resume(resume, output_dir)
            decision = [None if found is None else portable_name(found, output_dir), None]
        except OpenUniError as error:
            decision = [None, str(error)]
    broadcast_object_list(decision, from_process=0)
    name, error = decision
    found = None if name is None else Path(output_dir) / name
    if error is None and found is not None:
        try:
            if not (found / STATE_FILE).is_file():
                raise OpenUniError(f"process {accelerator.process_index} cannot read the checkpoint {found} the main "
                                   "process resumes from: the output folder must be shared by every node")
            if check is not None:
                check(found)
        except OpenUniError as problem:
            error = str(problem)
    errors = [e for e in gather_object([error]) if e]
    if errors:
        raise OpenUniError(errors[0])
    return found


def portable_name(checkpoint: Path, output_dir: str | Path) -> str:
    """The checkpoint relative to the output folder when it is in it (each node reads its own view), else absolute."""
    try:
        return str(Path(checkpoint).resolve().relative_to(Path(output_dir).resolve()))
    except ValueError:
        return str(Path(checkpoint).resolve())
