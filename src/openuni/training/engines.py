"""The training engine a run was launched with - DDP, FSDP2 or DeepSpeed ZeRO - engaged for real, on GPUs and CPUs.

`accelerate launch --config_file configs/accelerate/<engine>.yaml` tells every process which engine to run through
environment variables. accelerate itself turns them into FSDP only on accelerator process groups, and into DeepSpeed
only when it is not told `cpu=True`; on a CPU machine both would quietly run as plain DDP, or as one process.
`engine_accelerator` builds the `Accelerator` so that the engine asked for is the one that runs (gloo on CPUs) and
stops with one line when it cannot, before any model is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..devices import cpu_only
from ..errors import OpenUniError

DDP, FSDP, DEEPSPEED = "ddp", "fsdp", "deepspeed"
CONFIGS = {DDP: "configs/accelerate/ddp.yaml", FSDP: "configs/accelerate/fsdp.yaml",
           DEEPSPEED: "configs/accelerate/deepspeed_zero2.yaml"}


def requested_engine(environ=os.environ) -> str:
    """The engine of the accelerate config this process was launched with (DDP when launched without one)."""
    def flag(name: str) -> bool:
        return environ.get(name, "false").lower() == "true"

    if flag("ACCELERATE_USE_DEEPSPEED"):
        return DEEPSPEED
    if flag("ACCELERATE_USE_FSDP"):
        return FSDP
    return DDP


def running_engine(accelerator) -> str:
    from accelerate.utils import DistributedType

    return {DistributedType.FSDP: FSDP, DistributedType.DEEPSPEED: DEEPSPEED}.get(accelerator.distributed_type, DDP)


def engine_accelerator(**kwargs):
    """An `Accelerator` running the launched engine; `kwargs` are the `Accelerator`'s own (never `cpu`)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    engine, cpu = requested_engine(), cpu_only()
    if engine == DEEPSPEED:
        require_deepspeed()
    if not cpu:
        accelerator = Accelerator(**kwargs)
    elif engine == DEEPSPEED:
        # cpu=True would make accelerate skip DeepSpeed; without a named backend it would see no process group.
        handlers = [*(kwargs.pop("kwargs_handlers", None) or []), InitProcessGroupKwargs(backend="gloo")]
        accelerator = Accelerator(cpu=False, kwargs_handlers=handlers, **kwargs)
    else:
        accelerator = Accelerator(cpu=True, **kwargs)
        if engine == FSDP:
            engage_fsdp_on_gloo(accelerator)
    if running_engine(accelerator) != engine:
        raise OpenUniError(f"launched for {engine.upper()} but accelerate runs "
                           f"{str(accelerator.distributed_type).split('.')[-1]}: nothing would be sharded as asked")
    return accelerator


def engage_fsdp_on_gloo(accelerator) -> None:
    """FSDP2 itself runs on gloo; accelerate only never labels a CPU process group FSDP. Label it so, with the plugin
    read from the FSDP_* variables `accelerate launch` set from the config file."""
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    plugin = FullyShardedDataParallelPlugin()
    if accelerator.state.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.state.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def fit_fsdp_wrap_policy(plugin, model) -> None:
    """Wrap only the layer classes of the config that this model holds: a frozen SANA is not part of the trained
    model in pretraining, and accelerate refuses a class it cannot find (the connector's layers are always there)."""
    names = getattr(plugin, "transformer_cls_names_to_wrap", None) if plugin is not None else None
    if names:
        present = {type(module).__name__ for module in model.modules()}
        plugin.transformer_cls_names_to_wrap = [name for name in names if name in present] or names


def require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise OpenUniError("the DeepSpeed config needs the deepspeed package: pip install -e '.[engines]' "
                           "(DS_BUILD_OPS=0 without a CUDA toolkit)") from None


# -- checkpoints written by an engine --------------------------------------------------------------------------------

def checkpoint_engine(directory: str | Path) -> str | None:
    """Which engine wrote an `accelerator.save_state` folder, read off its layout (None: not one)."""
    directory = Path(directory)
    if (directory / "pytorch_model_fsdp_0").is_dir():
        return FSDP
    if (directory / "latest").is_file() and (directory / "zero_to_fp32.py").is_file():
        return DEEPSPEED
    if (directory / "model.safetensors").is_file() or (directory / "pytorch_model.bin").is_file():
        return DDP
    return None


def deepspeed_world_size(directory: str | Path) -> int:
    """Processes that wrote a DeepSpeed checkpoint: one optimiser shard each."""
    directory = Path(directory)
    tag = (directory / "latest").read_text().strip()
    return len(list((directory / tag).glob("zero_pp_rank_*_mp_rank_00_optim_states.pt")))


def check_resumable(directory: str | Path, engine: str, num_processes: int) -> None:
    """One line naming what to do when `directory` cannot be resumed by this engine and process count."""
    written_by = checkpoint_engine(directory)
    if written_by is None:
        raise OpenUniError(f"{directory} holds no model state of accelerate's save_state")
    if written_by != engine:
        raise OpenUniError(f"{directory} was written under {written_by.upper()}, this run is {engine.upper()}: "
                           f"resume it with --config_file {CONFIGS[written_by]}, or start a new run from its weights "
                           f"({merge_command(directory, written_by)})")
    if engine == DEEPSPEED and deepspeed_world_size(directory) != num_processes:
        raise OpenUniError(f"{directory} was written by {deepspeed_world_size(directory)} DeepSpeed processes, this "
                           f"run has {num_processes}: DeepSpeed ZeRO resumes only on as many processes")


def merge_command(directory: str | Path, engine: str) -> str:
    """The command that turns an engine's checkpoint into one full safetensors state dict."""
    directory = Path(directory)
    if engine == FSDP:
        return f"accelerate merge-weights {directory / 'pytorch_model_fsdp_0'} OUT_DIR"
    if engine == DEEPSPEED:
        # DeepSpeed's installed copy of the script, not the one in the checkpoint (a file from disk is never run).
        return f"python -m deepspeed.utils.zero_to_fp32 {directory} OUT_DIR --safe_serialization"
    return f"the weights are {directory / 'model.safetensors'}"
