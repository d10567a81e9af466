"""An exponential moving average of the trained weights (`ema_decay`), kept beside the run and exported in its place.

The average is diffusers' `EMAModel`, updated after every optimisation step: update 1 copies the weights, update
u > 1 keeps min(`ema_decay`, u / (9 + u)) of the average (a ramp: early weights do not linger). It is saved in each checkpoint as `ema.safetensors`, its tensors named as the trained parameters, and its step
count in `trainer_state.json`: no pickle.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import OpenUniError

FILE = "ema.safetensors"


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

        save_file({name: tensor.contiguous().cpu() for name, tensor in self.weights().items()}, str(directory / FILE))

    def load(self, directory: Path, steps: int) -> None:
        """The average a checkpoint holds; refused (one line) when it averages other weights than this run trains."""
        from safetensors.torch import load_file

        saved = load_file(str(directory / FILE))
        if set(saved) != set(self.names) or any(saved[name].shape != p.shape for name, p in zip(self.names, self.parameters)):
            odd = sorted(set(saved) ^ set(self.names)) or ["a tensor of another shape"]
            raise OpenUniError(f"{directory / FILE} averages other weights than this run trains (e.g. {odd[0]}): resume "
                               "it with the settings it was written with (train_transformer, lora_rank, connector)")
        with torch.no_grad():
            for name, shadow in zip(self.names, self.average.shadow_params):
                shadow.copy_(saved[name])
        self.average.optimization_step = steps
