"""An exponential moving average of the trained weights (`ema_decay`), kept beside the run and exported in its place.

The average is diffusers' `EMAModel`, updated after every optimisation step: update 1 copies the weights, update
u > 1 keeps min(`ema_decay`, u / (9 + u)) of the average (a ramp: early weights do not linger). It is saved in each
checkpoint as `ema.safetensors`, its tensors named as the trained parameters, and its update count in
`trainer_state.json`: no pickle. Only the main process keeps it: it alone saves and exports.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import OpenUniError
from .checkpointing import EMA_FILE


class WeightAverage:
    def __init__(self, named_parameters: list[tuple[str, torch.nn.Parameter]], decay: float):
        from diffusers.training_utils import EMAModel

        self.names = [name for name, _ in named_parameters]
        self.parameters = [parameter for _, parameter in named_parameters]
        self.average = EMAModel(self.parameters, decay=decay)

    def update(self) -> None:
        self.average.step(self.parameters)

    @property
    def steps(self) -> int:
        return self.average.optimization_step

    def restart(self) -> None:
        """Start the average again from the weights as they are now."""
        with torch.no_grad():
            for shadow, parameter in zip(self.average.shadow_params, self.parameters):
                shadow.copy_(parameter)
        self.average.optimization_step = 0

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: shadow.detach() for name, shadow in zip(self.names, self.average.shadow_params)}

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        weights = {name: tensor.contiguous().cpu() for name, tensor in self.weights().items()}
        save_file(weights, str(directory / EMA_FILE))

    def check(self, directory: Path) -> None:
        """Refuse (one line, before anything is loaded) an average of other weights than this run trains; read off
        the file's header."""
        from safetensors import safe_open

        with safe_open(str(directory / EMA_FILE), framework="pt") as file:
            saved = {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
        expected = {name: tuple(p.shape) for name, p in zip(self.names, self.parameters)}
        if saved != expected:
            odd = sorted(set(saved) ^ set(expected)) or ["a tensor of another shape"]
            raise OpenUniError(f"{directory / EMA_FILE} averages other weights than this run trains (e.g. {odd[0]}): "
                               "resume it with the settings it was written with (train_transformer, lora_rank, "
                               "connector)")

    def load(self, directory: Path, steps: int) -> None:
        """The average a checkpoint holds (`check`ed before), after `steps` updates."""
        from safetensors.torch import load_file

        saved = load_file(str(directory / EMA_FILE))
        with torch.no_grad():
            for name, shadow in zip(self.names, self.average.shadow_params):
                shadow.copy_(saved[name])
        self.average.optimization_step = steps
