"""The settings of one generation request, apart from its prompts: checked once, turned into pipeline arguments once.

`openuni generate`, `edit`, `eval`, the demo and the server all describe a request with `SamplingOptions`; the
defaults are the reference protocol's (seed 42, 20 steps, guidance 4.5, the model's own resolution).

Limits (README "Limits"): at most `MAX_STEPS` denoising steps (the schedulers' 1000 training timesteps: more steps
only repeat timesteps), no side over `MAX_SIDE` pixels (a model allows at most 4x its own resolution, which the
pipeline checks), seeds in [0, 2^63 - 1] for every image of a prompt (image k uses seed + k).

Opt-in fast sampling (each trades fidelity to the full path for speed; ratios and drifts in docs/benchmarks.md):
`preset` picks fewer DPM-Solver steps, `guidance_interval` (start, end) applies classifier-free guidance only on
the steps in that fraction of the schedule (the others run the conditional branch alone: half the DiT batch),
`step_cache` is cache-dit's residual threshold for reusing the DiT's output between steps (0: off).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .checks import integer, real
from .errors import OpenUniError

MAX_STEPS = 1000
MAX_SIDE = 4096  # 4x the largest variant's resolution (openuni-l-1024)
MAX_SEED = 2**63 - 1
# Steps of the flow DPM-Solver++ (2nd order) per preset; "reference" is the reference protocol.
SAMPLING_PRESETS = {"reference": 20, "fast": 10, "faster": 6}


@dataclass(frozen=True)
class SamplingOptions:
    seed: int = 42
    steps: int = 20
    cfg_scale: float = 4.5
    negative_prompt: str | None = None
    height: int | None = None  # None: the model's resolution (editing: the source's aspect ratio)
    width: int | None = None
    num_images: int = 1  # per prompt; image k of a prompt starts from the noise of seed + k
    guidance_interval: tuple[float, float] | None = None  # fractions of the steps; None: guidance on every step
    step_cache: float | None = None  # cache-dit residual threshold; None: every step runs the whole DiT

    @staticmethod
    def preset_steps(preset: str) -> int:
        if preset not in SAMPLING_PRESETS:
            raise OpenUniError(f"unknown preset {preset!r}; use one of {', '.join(SAMPLING_PRESETS)}")
        return SAMPLING_PRESETS[preset]

    def check(self, size_multiple: int = 32, names: dict[str, str] | None = None) -> "SamplingOptions":
        """Refuse bad values before any model is loaded or any work starts; returns the options with plain Python
        numbers (NumPy integers are accepted). `names` are what the caller calls the settings (the CLI's flags),
        the field names by default."""
        names = names or {}

        def name(field: str) -> str:
            return names.get(field, field)

        sizes = {}
        for field in ("height", "width"):
            value = getattr(self, field)
            if value is not None:
                value = integer(value, name(field))
                if value <= 0 or value % size_multiple:
                    raise OpenUniError(f"{name(field)} must be a positive multiple of {size_multiple}, got {value}")
                if value > MAX_SIDE:
                    raise OpenUniError(f"{name(field)} must be at most {MAX_SIDE} pixels, got {value} (a model "
                                       "allows at most 4x its own resolution)")
            sizes[field] = value
        num_images = integer(self.num_images, name("num_images"), low=1)
        steps = integer(self.steps, name("steps"), low=1, high=MAX_STEPS)
        seed = integer(self.seed, name("seed"), low=0, high=MAX_SEED - (num_images - 1))
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise OpenUniError(f"{name('negative_prompt')} must be text, got {type(self.negative_prompt).__name__}")
        return replace(self, seed=seed, steps=steps, cfg_scale=real(self.cfg_scale, name("cfg_scale")),
                       num_images=num_images, **sizes, **self._checked_fast_sampling(name))

    def _checked_fast_sampling(self, name) -> dict:
        interval, cache = self.guidance_interval, self.step_cache
        if interval is not None:
            if not isinstance(interval, (tuple, list)) or len(interval) != 2:
                raise OpenUniError(f"{name('guidance_interval')} takes two fractions START END, got {interval!r}")
            start, end = (real(v, name("guidance_interval")) for v in interval)
            if not 0 <= start < end <= 1:
                raise OpenUniError(f"{name('guidance_interval')} needs 0 <= START < END <= 1, got {start} {end}")
            interval = (start, end)
        if cache is not None:
            cache = real(cache, name("step_cache"))
            if not 0 < cache <= 1:
                raise OpenUniError(f"{name('step_cache')} is a residual threshold in (0, 1], got {cache}")
            if interval is not None and interval != (0.0, 1.0):
                raise OpenUniError(f"{name('guidance_interval')} and {name('step_cache')} cannot be combined (the "
                                   "cache reuses outputs of a DiT batch whose size the interval changes)")
        return dict(guidance_interval=interval, step_cache=cache)

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of `OpenUniPipeline.__call__` / `edit` for these settings."""
        return dict(negative_prompt=self.negative_prompt, height=self.height, width=self.width,
                    num_inference_steps=self.steps, guidance_scale=self.cfg_scale,
                    num_images_per_prompt=self.num_images, seed=self.seed,
                    guidance_interval=self.guidance_interval, step_cache=self.step_cache)
