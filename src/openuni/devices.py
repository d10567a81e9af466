"""Where things run and in which precision: the one device and dtype policy of every command and the trainer.

bf16 on accelerators (as the reference runs), float32 on the CPU. A device the machine does not have is an
`OpenUniError` naming what it has, before anything is loaded.
"""

from __future__ import annotations

import torch

from .errors import OpenUniError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def accelerator_available() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or (xpu is not None and xpu.is_available())


def cpu_only() -> bool:
    """No accelerator here: accelerate must then be told so to run several processes (gloo) rather than one."""
    return not accelerator_available()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on accelerators, fp32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def resolve_device(name: str | torch.device | None) -> torch.device:
    """A device name as the user gave it (None: the default), checked against this machine: one that does not
    exist here, or cannot hold weights (meta), is an `OpenUniError`."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise OpenUniError(f"unknown device {str(name)!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OpenUniError(f"device {name}: this machine has no CUDA GPU (or this torch build has no CUDA "
                               "support); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OpenUniError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "cpu":
        if device.index not in (None, 0):
            raise OpenUniError(f"device {name}: there is one CPU device; use cpu")
    elif device.type == "meta":
        raise OpenUniError(f"device {name}: holds no data, nothing can run there; use cpu or cuda")
    elif not accelerator_available():
        raise OpenUniError(f"device {name}: not available on this machine; use cpu")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """`auto`/None: the device's default; else one of float32, bfloat16, float16."""
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        return default_dtype(device)
    if name not in DTYPES:
        raise OpenUniError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)
