"""The settings of one generation request, apart from its prompts: checked once, turned into pipeline arguments once.

`openuni generate`, `edit`, `eval`, the demo and the server all describe a request with `SamplingOptions`; the
defaults are the reference protocol's (seed 42, 20 steps, guidance 4.5, the model's own resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OpenUniError


@dataclass(frozen=True)
class SamplingOptions:
    seed: int = 42
    steps: int = 20
    cfg_scale: float = 4.5
    negative_prompt: str | None = None
    height: int | None = None  # None: the model's resolution (editing: the source's aspect ratio)
    width: int | None = None
    num_images: int = 1  # per prompt; image k of a prompt starts from the noise of seed + k

    def check(self, size_multiple: int = 32, names: dict[str, str] | None = None) -> "SamplingOptions":
        """Refuse bad numbers before any model is loaded or any work starts; returns self. `names` are what the
        caller calls the settings (the CLI's flags), the field names by default."""
        names = names or {}
        for field in ("height", "width"):
            value = getattr(self, field)
            if value is not None and (value <= 0 or value % size_multiple):
                raise OpenUniError(f"{names.get(field, field)} must be a positive multiple of {size_multiple}, "
                                   f"got {value}")
        for field in ("steps", "num_images"):
            if getattr(self, field) < 1:
                raise OpenUniError(f"{names.get(field, field)} must be at least 1")
        return self

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of `OpenUniPipeline.__call__` / `edit` for these settings."""
        return dict(negative_prompt=self.negative_prompt, height=self.height, width=self.width,
                    num_inference_steps=self.steps, guidance_scale=self.cfg_scale,
                    num_images_per_prompt=self.num_images, seed=self.seed)
