"""What a training checkpoint may hold, checked before anything in it is loaded.

accelerate, FSDP's distributed checkpoint and DeepSpeed read parts of a checkpoint with pickle, some of them with
full unpickling (accelerate's `custom_checkpoint_*.pkl`, DCP's `.metadata`, DeepSpeed's `*.pt`): a crafted file
would run code on `resume`. So a checkpoint is resumed only when
- it holds exactly the files the engine that wrote it writes (nothing else: no other pickle, no custom checkpoint),
- every pickled file references only the classes those files are made of (torch's `weights_only` loader with an
  allow-list of DeepSpeed's state classes; a restricted unpickler for DCP's metadata), and
- no file is torn (truncated or cut off), read off headers and sizes without loading the weights.
Anything else is refused with one line before `load_state`.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from ..errors import OpenUniError
from .checkpointing import EMA_FILE, STATE_FILE
from .engines import DDP, DEEPSPEED, FSDP
COMMON = [re.compile(r"random_states_\d+\.pkl"), re.compile(re.escape(STATE_FILE)), re.compile(re.escape(EMA_FILE))]
LAYOUTS = {
    DDP: [re.compile(r"model\.safetensors"), re.compile(r"optimizer\.bin")],
    FSDP: [re.compile(r"(pytorch_model_fsdp_0|optimizer_0)/(\.metadata|__\d+_\d+\.distcp)")],
    # accelerate saves DeepSpeed's state under the tag `pytorch_model`, named in `latest`; the two scripts are
    # DeepSpeed's merge tools, written beside it and never run by openuni.
    DEEPSPEED: [re.compile(r"latest"), re.compile(r"zero_to_fp32\.py"), re.compile(r"zero_to_torch\.py"),
                re.compile(r"pytorch_model/(mp_rank_\d+_model_states|zero_pp_rank_\d+_mp_rank_\d+_optim_states)\.pt")],
}
# The only globals DCP's `.metadata` pickles reference (torch 2.x): its dataclasses, shapes, dtypes, paths.
DCP_METADATA = "torch.distributed.checkpoint.metadata"
DCP_GLOBALS = {
    *((DCP_METADATA, name) for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                        "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                                        "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
    ("torch", "Size"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
    *(("torch", dtype) for dtype in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
                                     "uint8", "bool", "complex64", "float8_e4m3fn", "float8_e5m2")),
}


def check_checkpoint_files(directory: str | Path, engine: str) -> None:
    """Refuse (one line) a checkpoint with unexpected, untrusted or torn files; see the module's docstring."""
    directory = Path(directory)
    expected = COMMON + LAYOUTS[engine]
    for path in sorted(p for p in directory.rglob("*") if not p.is_dir()):
        relative = path.relative_to(directory).as_posix()
        if path.is_symlink() or not any(pattern.fullmatch(relative) for pattern in expected):
            older = (" (older openuni versions pickled the LR schedule there: such a checkpoint cannot be resumed "
                     "safely; start a new run from its weights)" if relative.startswith("custom_checkpoint_") else "")
            raise OpenUniError(f"{directory} holds {relative}, which a {engine.upper()} checkpoint of openuni never "
                               "holds: refusing to resume from it (a file that is loaded could run code); remove "
                               f"what you added, or resume from a checkpoint openuni wrote{older}")
        try:
            check_file(path, relative)
        except OpenUniError:
            raise
        except Exception as error:  # whatever the readers raise on a cut-off or foreign file
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            raise OpenUniError(f"{directory / relative} is torn or not what openuni writes ({reason[:200]}): "
                               f"the checkpoint is incomplete or altered; delete {directory} to resume from the "
                               "previous checkpoint") from None


def check_file(path: Path, relative: str) -> None:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt"):  # checks the header against the file's length
            pass
    elif path.suffix in (".bin", ".pkl", ".pt"):
        weights_only_load(path)
    elif path.name == ".metadata":
        check_dcp_metadata(path)


def weights_only_load(path: Path) -> None:
    """torch's `weights_only` loader over the file, with the allow-list of what accelerate and DeepSpeed store in
    it (numpy RNG states; DeepSpeed's loss scaler, ZeRO stage and fragment addresses); memory-mapped, so the
    weights themselves are not read."""
    import torch

    with torch.serialization.safe_globals(trusted_globals()):
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def trusted_globals() -> list:
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    allowed = list(TORCH_SAFE_GLOBALS)
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return allowed
    return allowed + [LossScaler, ZeroStageEnum, fragment_address]


class DCPMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in DCP_GLOBALS:
            raise OpenUniError(f"it references {module}.{name}")
        return super().find_class(module, name)


def check_dcp_metadata(path: Path) -> None:
    """DCP reads `.metadata` with full unpickling: read it here with only its own classes allowed, and check that
    every shard file it points to is as long as it says."""
    with path.open("rb") as file:
        try:
            metadata = DCPMetadataUnpickler(file).load()
        except OpenUniError as error:
            raise OpenUniError(f"{path} is not the metadata torch's distributed checkpoint writes ({error}): "
                               "refusing to resume from it (unpickling it could run code)") from None
    needed: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        end = info.offset + info.length
        needed[str(info.relative_path)] = max(needed.get(str(info.relative_path), 0), end)
    for name, end in needed.items():
        shard = path.parent / name
        if not shard.is_file() or shard.stat().st_size < end:
            raise ValueError(f"{name} is {shard.stat().st_size if shard.is_file() else 'missing'}, "
                             f"its metadata needs {end} bytes")


def safe_deepspeed_loading(engine) -> None:
    """DeepSpeed loads its checkpoint files with full unpickling; make the engine load them with torch's
    `weights_only` loader and the allow-list instead (the files are also checked before; this closes the gap)."""
    import torch

    checkpoint_engine = engine.checkpoint_engine

    def load(path, map_location=None):
        with torch.serialization.safe_globals(trusted_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)

    checkpoint_engine.load = load
