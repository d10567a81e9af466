"""The flags several subcommands share, and what they turn into: the model flags -> a loaded pipeline (or just the
MLLM), the sampling flags -> `SamplingOptions`. Heavy libraries are imported only when a command runs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..acceleration import COMPILE_MODES, QUANTIZATIONS  # light: no heavy imports there
from ..devices import DTYPES
from ..errors import OpenUniError
from ..sampling import SAMPLING_PRESETS, SamplingOptions

PART_FLAGS = {
    "mllm": "InternVL3 directory or Hub id (original or -hf layout)",
    "tokenizer": "tokenizer directory (default: the MLLM's)",
    "transformer": "SANA transformer directory or Hub id",
    "vae": "DC-AE directory or Hub id",
    "scheduler": "scheduler directory or scheduler_config.json",
    "checkpoint": "release .pth file",
}
MLLM_PARTS = ("mllm", "tokenizer")
SAMPLING_FLAGS = {"height": "--height", "width": "--width", "steps": "--steps", "num_images": "--num-images",
                  "seed": "--seed", "cfg_scale": "--cfg-scale", "negative_prompt": "--negative-prompt",
                  "guidance_interval": "--guidance-interval", "step_cache": "--step-cache"}


def add_device_arguments(group, dtype: bool = True, cpu_bf16: bool = False) -> None:
    """`cpu_bf16`: the command resolves `--dtype auto` with `devices.choose_dtype` (bf16 on CPUs made for it)."""
    group.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    if dtype:
        where = "on GPU and on CPUs with AMX or AVX512-BF16, float32 elsewhere" if cpu_bf16 else "on GPU, float32 on CPU"
        group.add_argument("--dtype", default="auto", choices=DTYPES, help=f"default: bfloat16 {where}")


def add_model_arguments(parser: argparse.ArgumentParser, mllm_only: bool = False) -> None:
    """The model flags: a released variant from the Hub, each part overridable by a local path. `mllm_only` for
    commands that load only the MLLM (chat)."""
    from ..variants import STAGES, VARIANTS

    if mllm_only:
        group = parser.add_argument_group("model (only the MLLM is loaded)")
        group.add_argument("--variant", default="openuni-b-512", choices=list(VARIANTS),
                           help="use this variant's InternVL3 from the Hub")
    else:
        group = parser.add_argument_group("model (a released variant from the Hub, each part overridable by a "
                                          "local path)")
        group.add_argument("--variant", default="openuni-b-512", choices=list(VARIANTS), help="released variant")
        group.add_argument("--stage", default="finetune", choices=STAGES,
                           help="finetuned (blip3o60k) or pretrained weights")
        group.add_argument("--model", metavar="DIR", help="a saved OpenUniPipeline directory (instead of --variant)")
    for name, what in PART_FLAGS.items():
        if name in MLLM_PARTS or not mllm_only:
            group.add_argument(f"--{name}", metavar="PATH", help=what)
    if not mllm_only:
        group.add_argument("--connector-heads", type=int, metavar="N",
                           help="attention heads of the connector, for checkpoints of a size no variant has")
    add_device_arguments(group, cpu_bf16=not mllm_only)
    if mllm_only:
        return
    speed = parser.add_argument_group("speed and memory (see docs/benchmarks.md)")
    speed.add_argument("--compile", nargs="?", const="default", metavar="MODE", choices=COMPILE_MODES,
                       help=f"torch.compile the DiT and connector; MODE: {', '.join(COMPILE_MODES)}")
    speed.add_argument("--offload", action="store_true",
                       help="keep the model in CPU memory, moving each part to the GPU only while it runs")
    speed.add_argument("--vae-tiling", action="store_true", help="decode in tiles and one image at a time (1024 px)")
    add_quantize_argument(speed)


def add_quantize_argument(group) -> None:
    group.add_argument("--quantize", choices=QUANTIZATIONS,
                       help="weights of the MLLM, connector and DiT: int8 (torchao, CPU or GPU), fp8 (torchao, Ada/"
                            "Hopper GPUs), nf4 (bitsandbytes, CUDA)")


def add_sampling_arguments(parser: argparse.ArgumentParser, batch_size: int = 4, images_per_prompt: bool = True) -> None:
    """The sampling flags; `images_per_prompt=False` where a layout fixes the count (benchmarks)."""
    defaults = SamplingOptions()
    group = parser.add_argument_group("sampling (defaults follow the reference protocol)")
    group.add_argument("--seed", type=int, default=defaults.seed,
                       help=f"image k of each prompt uses seed + k (default {defaults.seed})")
    group.add_argument("--steps", type=int, help=f"denoising steps (default {defaults.steps}, or the --preset's)")
    group.add_argument("--cfg-scale", type=float, default=defaults.cfg_scale,
                       help=f"classifier-free guidance scale (default {defaults.cfg_scale})")
    group.add_argument("--negative-prompt", help="unconditional branch text (default: the reference's)")
    group.add_argument("--height", type=int, help="multiple of 32 (default: the variant's resolution)")
    group.add_argument("--width", type=int, help="multiple of 32 (default: the variant's resolution)")
    if images_per_prompt:
        group.add_argument("--num-images", type=int, default=1, help="images per prompt")
    group.add_argument("--batch-size", type=int, default=batch_size,
                       help=f"images per forward pass (default {batch_size}); another batch size changes pixels "
                            "by float rounding only (at most 2 levels; README, 'Reproducibility')")
    add_fast_sampling_arguments(parser, presets=True)


def add_fast_sampling_arguments(parser: argparse.ArgumentParser, presets: bool = False) -> None:
    """Opt-in fast sampling, off by default; `presets` where the command takes --steps (not serve/demo, whose
    requests carry their own step count)."""
    group = parser.add_argument_group("fast sampling (opt-in; speed and drift in docs/benchmarks.md)")
    if presets:
        group.add_argument("--preset", choices=list(SAMPLING_PRESETS),
                           help="DPM-Solver steps: " + ", ".join(f"{k} {v}" for k, v in SAMPLING_PRESETS.items())
                                + " (--steps overrides)")
    group.add_argument("--guidance-interval", type=float, nargs=2, metavar=("START", "END"),
                       help="classifier-free guidance only on this fraction of the steps (e.g. 0.2 0.8)")
    group.add_argument("--step-cache", type=float, nargs="?", const=0.08, metavar="THRESHOLD",
                       help="reuse the DiT's output between similar steps (cache-dit DBCache; default threshold 0.08)")


def fast_sampling_from_args(args: argparse.Namespace) -> SamplingOptions:
    """The fast sampling flags, checked (serve and demo: the pipeline's defaults for every request)."""
    interval = getattr(args, "guidance_interval", None)
    return SamplingOptions(guidance_interval=None if interval is None else tuple(interval),
                           step_cache=getattr(args, "step_cache", None)).check(names=SAMPLING_FLAGS)


def sampling_from_args(args: argparse.Namespace) -> SamplingOptions:
    """The sampling flags as checked `SamplingOptions` (before any model is loaded)."""
    if getattr(args, "batch_size", 1) < 1:
        raise OpenUniError("--batch-size must be at least 1")
    steps = args.steps
    if steps is None:
        steps = SamplingOptions.preset_steps(args.preset) if getattr(args, "preset", None) else SamplingOptions.steps
    fast = fast_sampling_from_args(args)
    return SamplingOptions(seed=args.seed, steps=steps, cfg_scale=args.cfg_scale,
                           negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                           num_images=getattr(args, "num_images", 1), guidance_interval=fast.guidance_interval,
                           step_cache=fast.step_cache).check(names=SAMPLING_FLAGS)


def pipeline_from_args(args: argparse.Namespace):
    """The pipeline the model flags describe, with offload, VAE tiling and compilation as asked."""
    from ..acceleration import (check_quantization, compile_pipeline, enable_vae_memory_savers, quantize_pipeline,
                                require)
    from ..devices import resolve_device

    fast = fast_sampling_from_args(args)  # (bad values fail before anything loads)
    if fast.step_cache is not None:
        require("cache_dit", "--step-cache", "fast")
    if args.connector_heads is not None and args.connector_heads < 1:
        raise OpenUniError(f"--connector-heads must be at least 1, got {args.connector_heads}")
    device = resolve_device(args.device)
    if args.quantize:
        check_quantization(args.quantize, device)
    offload = args.offload and device.type != "cpu"
    if args.offload and not offload:
        logging.getLogger(__name__).warning("--offload has no effect on the CPU")
    # With offload the weights are loaded into CPU memory, never all at once onto the GPU; NF4 too: bitsandbytes
    # quantizes its weights as they move to the GPU, so the whole bf16 model must never be there first.
    staged = offload or args.quantize == "nf4"
    pipe = _load_pipeline(args, "cpu" if staged else device, device)
    if args.quantize:
        quantize_pipeline(pipe, args.quantize, device)
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    elif staged:
        pipe.to(device)
    if args.vae_tiling:
        enable_vae_memory_savers(pipe)
    if args.compile:
        compile_pipeline(pipe, mode=args.compile)
    pipe.default_guidance_interval, pipe.default_step_cache = fast.guidance_interval, fast.step_cache
    return pipe


def _load_pipeline(args: argparse.Namespace, device, target_device):
    """The pipeline on `device`, in the dtype that suits `target_device` (where it will run)."""
    from ..devices import choose_dtype
    from ..pipeline import OpenUniPipeline

    dtype, why = choose_dtype(args.dtype, target_device)
    if args.model:
        overrides = [name for name in PART_FLAGS if getattr(args, name)]
        if overrides:
            raise OpenUniError(f"--model loads a whole saved pipeline; it cannot be combined with --{overrides[0]}")
        model_dir = Path(args.model)
        if not (model_dir / "model_index.json").is_file():
            raise OpenUniError(f"--model {model_dir}: not a saved OpenUni pipeline (no model_index.json)")
        pipe = OpenUniPipeline.from_pretrained(model_dir, dtype=dtype).to(device)
    else:
        pipe = OpenUniPipeline.from_variant(
            args.variant, stage=args.stage, connector_heads=args.connector_heads, device=device, dtype=dtype,
            **{name: getattr(args, name) for name in PART_FLAGS},
        )
    # Said once the model has loaded, so that a refused input stays the only line.
    print(f"openuni: {str(dtype).removeprefix('torch.')} on {target_device.type} ({why})", file=sys.stderr)
    return pipe


def model_description(args: argparse.Namespace) -> dict:
    """What the model flags name, for run records."""
    if args.model:
        return {"model": str(args.model)}
    parts = {"variant": args.variant, "stage": args.stage}
    parts.update({name: str(getattr(args, name)) for name in PART_FLAGS if getattr(args, name)})
    return parts


def model_identity(args: argparse.Namespace) -> dict:
    """What an image was generated with, for its record: enough to load the same model again from any folder (a
    saved pipeline's folder, or the variant, stage and release file with each local part as an absolute path)."""
    from ..variants import get_variant

    if args.model:
        return {"model": _absolute(args.model)}
    identity = {"variant": args.variant, "stage": args.stage}
    if not args.checkpoint:
        identity["checkpoint_file"] = get_variant(args.variant).checkpoint_filename(args.stage)
    identity.update({name: _absolute(getattr(args, name)) for name in PART_FLAGS if getattr(args, name)})
    if args.connector_heads is not None:
        identity["connector_heads"] = args.connector_heads
    if getattr(args, "quantize", None):
        identity["quantize"] = args.quantize
    return identity


def apply_model_identity(args: argparse.Namespace, identity: dict) -> None:
    """Load what `identity` (a record's "model") names; model part flags given on the command line still win (for
    parts that moved since)."""
    if hasattr(args, "quantize"):
        args.quantize = args.quantize or identity.get("quantize")
    if "model" in identity:
        args.model = args.model or identity["model"]
        return
    args.variant = identity.get("variant", args.variant)
    args.stage = identity.get("stage", args.stage)
    for name in PART_FLAGS:
        if not getattr(args, name) and identity.get(name):
            setattr(args, name, identity[name])
    if args.connector_heads is None:
        args.connector_heads = identity.get("connector_heads")


def _absolute(value) -> str:
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else str(value)  # (a Hub id stays as it is)


def add_rewrite_argument(parser: argparse.ArgumentParser) -> None:
    """`--rewrite`: the MLLM expands each prompt before generating (`openuni.rewriting`)."""
    parser.add_argument("--rewrite", action="store_true",
                        help="let the model's own MLLM expand each prompt into a detailed one first (greedy; the "
                             "instruction is in openuni/rewriting.py); off by default, as in the reference's scores; "
                             "the rewritten prompt is recorded with each image")
