"""Speed and memory options for `OpenUniPipeline`, each measured in `benchmarks/generate.py`.

- `compile_pipeline`: `torch.compile` of the DiT (20 x 2 forwards per image) and the connector, in place.
- `enable_vae_memory_savers`: DC-AE tiled decode (1024 px on small GPUs) and one-image-at-a-time slicing.
- Model CPU offload is the pipeline's own `enable_model_cpu_offload()`.
- `quantize_pipeline`: int8 weight-only (torchao; CPU and GPU), float8 (torchao; GPUs with float8 units) or NF4
  (bitsandbytes; CUDA) weights for the MLLM, connector and DiT; the DC-AE stays as it is (convolutions).
- `use_step_cache`: cache-dit's DBCache on the SANA DiT (opt-in fast sampling; the pipeline calls it per request).
"""

from __future__ import annotations

import os

QUANTIZATIONS = ("int8", "fp8", "nf4")
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


def use_step_cache(transformer, threshold: float | None, num_inference_steps: int) -> None:
    """Put cache-dit's DBCache on the DiT with this residual threshold for the coming denoising loop (None: take it
    off). F1B0: the first block always runs; when its residual changed less than `threshold` (relative L1) since
    the last full step, the other blocks' output of that step is reused. The first steps always run in full (its
    warm-up), so the images of a short schedule change little."""
    current = getattr(transformer, "_openuni_step_cache", None)
    if threshold is None and current is None:
        return
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # (it logs its settings and statistics per call)
    import cache_dit

    if threshold is None:
        cache_dit.disable_cache(transformer)
    elif current == threshold:
        cache_dit.refresh_context(transformer, num_inference_steps=num_inference_steps)
    else:
        if current is not None:
            cache_dit.disable_cache(transformer)
        config = cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                                         num_inference_steps=num_inference_steps)
        cache_dit.enable_cache(transformer, cache_config=config)
    transformer._openuni_step_cache = threshold


def check_quantization(kind: str, device) -> None:
    """Refuse a quantization this device cannot run, before anything is loaded."""
    import torch

    from .errors import OpenUniError

    if kind not in QUANTIZATIONS:
        raise OpenUniError(f"unknown quantization {kind!r}; use one of {', '.join(QUANTIZATIONS)}")
    device = torch.device(device)
    if kind == "nf4" and device.type != "cuda":
        raise OpenUniError("--quantize nf4 needs a CUDA GPU (bitsandbytes' 4-bit kernels); on the CPU use --quantize int8")
    if kind == "fp8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        raise OpenUniError("--quantize fp8 needs a CUDA GPU with float8 units (Ada or Hopper, compute capability 8.9+); "
                           "elsewhere use --quantize int8")
    require("bitsandbytes" if kind == "nf4" else "torchao", f"--quantize {kind}",
            "quantize-nf4" if kind == "nf4" else "fast")


def quantize_pipeline(pipe, kind: str, device) -> None:
    """Quantize the linear layers of the MLLM, connector and DiT in place (`device`: where they will run)."""
    check_quantization(kind, device)
    modules = (pipe.mllm, pipe.connector, pipe.transformer)
    if kind == "nf4":
        for module in modules:
            _linears_to_nf4(module)
        return
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, quantize_

    config = Int8WeightOnlyConfig() if kind == "int8" else Float8DynamicActivationFloat8WeightConfig()
    for module in modules:
        quantize_(module, config)


def _linears_to_nf4(module) -> None:
    """Every `nn.Linear` as a bitsandbytes NF4 `Linear4bit` (weights quantized when moved to the GPU)."""
    import bitsandbytes as bnb
    import torch

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=child.weight.dtype, quant_type="nf4", device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, name, layer)
        else:
            _linears_to_nf4(child)


def require(package: str, flag: str, extra: str) -> None:
    """A one-line error when the library behind `flag` is not installed (checked before anything loads)."""
    import importlib.util

    from .errors import OpenUniError

    if importlib.util.find_spec(package) is None:
        raise OpenUniError(f"{flag} needs {package}, which is not installed: pip install -e '.[{extra}]'")
