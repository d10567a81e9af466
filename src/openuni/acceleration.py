"""Speed and memory options for `OpenUniPipeline`, each measured in `benchmarks/generate.py`.

- `compile_pipeline`: `torch.compile` of the DiT (20 x 2 forwards per image) and the connector, in place.
- `enable_vae_memory_savers`: DC-AE tiled decode (1024 px on small GPUs) and one-image-at-a-time slicing.
- Model CPU offload is the pipeline's own `enable_model_cpu_offload()`.
"""

from __future__ import annotations

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_pipeline(pipe, mode: str = "default", backend: str = "inductor") -> None:
    """Compile the DiT and the connector in place; the first call at each new shape pays the compilation.

    The MLLM runs once per prompt and the VAE once per image, so compiling them buys little for its start-up cost.
    "reduce-overhead" adds CUDA graphs, which pay off at small batches where kernel launches dominate.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    options = dict(backend=backend, mode=None if mode == "default" else mode)
    pipe.transformer.compile(**options)
    pipe.connector.compile(**options)


def enable_vae_memory_savers(pipe, tiling: bool = True, slicing: bool = True) -> None:
    """Decode large images in overlapping tiles and batches one image at a time: bounded memory, same sizes."""
    if tiling:
        pipe.vae.enable_tiling()
    if slicing:
        pipe.vae.enable_slicing()


def warm_up(pipe, batch_size: int, height: int | None = None, width: int | None = None, steps: int = 2) -> None:
    """One throw-away generation at the shapes to come, so compilation is not counted in the first image."""
    pipe(["warm-up"] * batch_size, height=height, width=width, num_inference_steps=steps, seed=0, output_type="latent")
