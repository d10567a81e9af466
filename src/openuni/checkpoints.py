"""Released OpenUni `.pth` files: reading them safely, checking them against the model, writing them back.

A release file is a `torch.save`d state dict of the reference model: `meta_queries`, `connector.*`, `projector.*`
(what OpenUni trains) and `transformer.*` (the SANA transformer, diffusers names), sometimes with the frozen
`lmm.*` / `vae.*` too, sometimes nested under `state_dict`. Nothing but tensors is ever unpickled.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import OpenUniError
from .files import write_atomically

logger = logging.getLogger(__name__)

CONNECTOR_PREFIXES = ("meta_queries", "connector.", "projector.")
TRANSFORMER_PREFIX = "transformer."
FROZEN_PREFIXES = ("lmm.", "vae.")  # the frozen MLLM and VAE: identical to their hub weights, not loaded from here
WRAPPER_KEYS = ("state_dict", "module", "model")


@dataclass
class LoadReport:
    connector_keys: int = 0
    transformer_keys: int = 0
    frozen_keys_ignored: int = 0
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.connector_keys} connector tensors", f"{self.transformer_keys} SANA transformer tensors"]
        if self.frozen_keys_ignored:
            parts.append(f"{self.frozen_keys_ignored} frozen MLLM/VAE tensors ignored")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys ignored (first: {self.unexpected[0]})")
        return "loaded " + ", ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth` holding tensors only (`weights_only=True`), unwrapping a `state_dict`/`module` nesting."""
    path = Path(path)
    if not path.is_file():
        raise OpenUniError(f"checkpoint {path} does not exist")
    try:
        state = _load_tensors(path)
    except pickle.UnpicklingError as error:
        raise OpenUniError(
            f"refusing to load {path}: it holds Python objects other than tensors, which could run code "
            f"when unpickled ({str(error).splitlines()[0]})"
        ) from None
    except Exception as error:  # torch raises RuntimeError/EOFError/zipfile errors for damaged files
        raise OpenUniError(f"cannot read checkpoint {path}: {error} (is the file complete?)") from None
    while isinstance(state, dict) and len(state) == 1 and next(iter(state)) in WRAPPER_KEYS:
        state = next(iter(state.values()))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OpenUniError(f"{path} is not a state dict of tensors (found {type(state).__name__})")
    return state


def _load_tensors(path: Path):
    """Memory-mapped where the file allows it; files in torch's legacy (pre-zip) format cannot be mapped."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap can only be used" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def split_release(state: dict[str, torch.Tensor]) -> tuple[dict, dict, LoadReport]:
    """Sort a release state dict into connector weights, SANA weights, and what is ignored."""
    connector, transformer, report = {}, {}, LoadReport()
    for key, tensor in state.items():
        if key.startswith(CONNECTOR_PREFIXES):
            connector[key] = tensor
        elif key.startswith(TRANSFORMER_PREFIX):
            transformer[key[len(TRANSFORMER_PREFIX) :]] = tensor
        elif key.startswith(FROZEN_PREFIXES):
            report.frozen_keys_ignored += 1
        else:
            report.unexpected.append(key)
    return connector, transformer, report


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: str | Path) -> None:
    """Copy `state` into `module`, failing with the key's name on anything missing, extra or misshapen."""
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise OpenUniError(f"{source}: missing {what} key {key!r}; is this a checkpoint of the same model size?")
        if state[key].shape != tensor.shape:
            raise OpenUniError(
                f"{source}: {what} key {key!r} has shape {tuple(state[key].shape)}, the model expects "
                f"{tuple(tensor.shape)}; is this a checkpoint of the same model size (--variant)?"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise OpenUniError(f"{source}: unexpected {what} key {extra[0]!r} ({len(extra)} in all): the sizes differ")
    check_finite_weights(state, what, source)
    module.load_state_dict(state, strict=True, assign=False)


def check_finite_weights(state: dict[str, torch.Tensor], what: str, source: str | Path) -> None:
    """NaN or inf weights (a damaged file, a diverged run) would give black images without a word."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise OpenUniError(f"{source}: {what} weight {key!r} holds NaN or infinite values: the checkpoint is "
                               "damaged or comes from a run that diverged")


def load_release(
    connector: nn.Module, transformer: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None
) -> LoadReport:
    """Load a release `.pth` (or its `state`, already read) into the connector and, if it has one, the SANA."""
    connector_state, transformer_state, report = split_release(state if state is not None else read_state_dict(path))
    load_strict(connector, connector_state, "connector", path)
    report.connector_keys = len(connector_state)
    if transformer_state:
        load_strict(transformer, transformer_state, "SANA transformer", path)
        report.transformer_keys = len(transformer_state)
    if report.unexpected:
        logger.warning("%s: %d keys belong to no OpenUni component and were ignored: %s", path, len(report.unexpected), report.unexpected[:5])
    logger.info("%s: %s", path, report.summary())
    return report


def save_release(connector: nn.Module, transformer: nn.Module | None, path: str | Path) -> None:
    """Write a release-style `.pth` (what `load_release` and the reference read), atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in connector.state_dict().items()}
    if transformer is not None:
        state.update({TRANSFORMER_PREFIX + k: v.detach().cpu().contiguous() for k, v in transformer.state_dict().items()})
    write_atomically(Path(path), lambda partial: torch.save(state, partial))
