"""Where things run and in which precision: the one device and dtype policy of every command and the trainer.

bf16 on accelerators (as the reference runs), float32 on the CPU. The generation commands' `--dtype auto` goes one
step further (`choose_dtype`): bf16 on a CPU with bf16 matrix instructions (AMX or AVX512-BF16), where it is about
twice as fast (docs/benchmarks.md), and it says so. A device the machine does not have is an
`OpenUniError` naming what it has, before anything is loaded. torch is imported only when a function runs, so the
command line's flags (which name `DTYPES`) parse without it.
"""

from __future__ import annotations

from contextlib import contextmanager

from .errors import OpenUniError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def accelerator_available() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or (xpu is not None and xpu.is_available())


def cpu_only() -> bool:
    """No accelerator here: accelerate must then be told so to run several processes (gloo) rather than one."""
    return not accelerator_available()


def default_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on accelerators, fp32 on CPU."""
    import torch

    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def cpu_bf16_instructions() -> str | None:
    """The name of this CPU's bf16 matrix instructions (AMX, AVX512-BF16), or None where it has neither."""
    import torch

    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def choose_dtype(name: str | None, device: torch.device | str) -> tuple[torch.dtype, str]:
    """(dtype, why) for a generation command: `auto` is bf16 on accelerators and on CPUs with bf16 matrix
    instructions, float32 on other CPUs; any other name is taken as it is."""
    import torch

    if name not in (None, "auto"):
        return resolve_dtype(name, device), "as asked"
    if torch.device(device).type != "cpu":
        return default_dtype(device), "the accelerator's default"
    instructions = cpu_bf16_instructions()
    if instructions:
        return torch.bfloat16, f"this CPU has {instructions}; --dtype float32 for full precision"
    return torch.float32, "this CPU has no bf16 matrix instructions (AMX, AVX512-BF16)"


def resolve_device(name: str | torch.device | None) -> torch.device:
    """A device name as the user gave it (None: the default), checked against this machine: one that does not
    exist here, or cannot hold weights (meta), is an `OpenUniError`."""
    import torch

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
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        return default_dtype(device)
    if name not in DTYPES:
        raise OpenUniError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


@contextmanager
def default_dtype_kept():
    """Restore torch's default dtype afterwards: transformers sets it to the load dtype while it builds a model and
    leaves it there when the load fails (a truncated weight file in bf16 made every later float tensor bf16)."""
    import torch

    saved = torch.get_default_dtype()
    try:
        yield
    finally:
        torch.set_default_dtype(saved)
