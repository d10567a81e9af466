"""The `openuni` command: one entry point, a subcommand per job.

Each subcommand lives with the code it drives and registers itself through an `add_parser(subparsers)` function
listed in `SUBCOMMANDS`. Bad input ends with one line saying what to do and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from .acceleration import COMPILE_MODES  # light: no heavy imports there
from .errors import OpenUniError
from .files import save_image_atomically  # noqa: F401  (a shared helper of the commands, kept importable here)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DTYPES = ("auto", "float32", "bfloat16", "float16")

# Each module's add_parser(subparsers) registers one subcommand (handler in `func`); they import heavy
# libraries only when run, so `openuni --help` stays quick.
SUBCOMMANDS = [
    "openuni.commands.generate",
    "openuni.commands.edit",
    "openuni.commands.chat",
    "openuni.commands.train",
    "openuni.commands.extract_latents",
    "openuni.commands.eval",
    "openuni.commands.make_tiny",
    "openuni.commands.demo",
]


# -- shared by every subcommand that loads the model --------------------------------------------------------------

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from .variants import STAGES, VARIANTS

    group = parser.add_argument_group("model (a released variant from the Hub, each part overridable by a local path)")
    group.add_argument("--variant", default="openuni-b-512", choices=list(VARIANTS), help="released variant")
    group.add_argument("--stage", default="finetune", choices=STAGES, help="finetuned (blip3o60k) or pretrained weights")
    group.add_argument("--model", metavar="DIR", help="a saved OpenUniPipeline directory (instead of --variant)")
    for name, what in (("mllm", "InternVL3 directory or Hub id (original or -hf layout)"),
                       ("tokenizer", "tokenizer directory (default: the MLLM's)"),
                       ("transformer", "SANA transformer directory or Hub id"),
                       ("vae", "DC-AE directory or Hub id"),
                       ("scheduler", "scheduler directory or scheduler_config.json"),
                       ("checkpoint", "release .pth file")):
        group.add_argument(f"--{name}", metavar="PATH", help=what)
    group.add_argument("--connector-heads", type=int, metavar="N",
                       help="attention heads of the connector, for checkpoints of a size no variant has")
    group.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    group.add_argument("--dtype", default="auto", choices=DTYPES, help="default: bfloat16 on GPU, float32 on CPU")
    speed = parser.add_argument_group("speed and memory (see docs/benchmarks.md)")
    speed.add_argument("--compile", nargs="?", const="default", metavar="MODE", choices=COMPILE_MODES,
                       help=f"torch.compile the DiT and connector; MODE: {', '.join(COMPILE_MODES)}")
    speed.add_argument("--offload", action="store_true",
                       help="keep the model in CPU memory, moving each part to the GPU only while it runs")
    speed.add_argument("--vae-tiling", action="store_true", help="decode in tiles and one image at a time (1024 px)")


def pipeline_from_args(args: argparse.Namespace):
    import torch

    from .acceleration import compile_pipeline, enable_vae_memory_savers
    from .loading import default_device

    device = torch.device(args.device) if args.device else default_device()
    offload = args.offload and device.type != "cpu"
    if args.offload and not offload:
        logging.getLogger(__name__).warning("--offload has no effect on the CPU")
    # With offload the weights are loaded into CPU memory, never all at once onto the GPU.
    pipe = load_pipeline_from_args(args, torch.device("cpu") if offload else device, device)
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    if args.vae_tiling:
        enable_vae_memory_savers(pipe)
    if args.compile:
        compile_pipeline(pipe, mode=args.compile)
    return pipe


def load_pipeline_from_args(args: argparse.Namespace, device, target_device):
    """The pipeline on `device`, in the dtype that suits `target_device` (where it will run)."""
    import torch

    from .loading import default_dtype, load_pipeline
    from .pipeline import OpenUniPipeline

    dtype = default_dtype(target_device) if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.model:
        overrides = [n for n in ("mllm", "tokenizer", "transformer", "vae", "scheduler", "checkpoint") if getattr(args, n)]
        if overrides:
            raise OpenUniError(f"--model loads a whole saved pipeline; it cannot be combined with --{overrides[0]}")
        model_dir = Path(args.model)
        if not (model_dir / "model_index.json").is_file():
            raise OpenUniError(f"--model {model_dir}: not a saved OpenUni pipeline (no model_index.json)")
        return OpenUniPipeline.from_pretrained(model_dir, dtype=dtype).to(device)
    return load_pipeline(
        args.variant, stage=args.stage, mllm=args.mllm, tokenizer=args.tokenizer, transformer=args.transformer,
        vae=args.vae, scheduler=args.scheduler, checkpoint=args.checkpoint, connector_heads=args.connector_heads,
        device=device, dtype=dtype,
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, batch_size: int = 4, images_per_prompt: bool = True) -> None:
    """The sampling flags; `images_per_prompt=False` where a layout fixes the count (benchmarks)."""
    group = parser.add_argument_group("sampling (defaults follow the reference protocol)")
    group.add_argument("--seed", type=int, default=42, help="image k of each prompt uses seed + k (default 42)")
    group.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    group.add_argument("--cfg-scale", type=float, default=4.5, help="classifier-free guidance scale (default 4.5)")
    group.add_argument("--negative-prompt", help="unconditional branch text (default: the reference's)")
    group.add_argument("--height", type=int, help="multiple of 32 (default: the variant's resolution)")
    group.add_argument("--width", type=int, help="multiple of 32 (default: the variant's resolution)")
    if images_per_prompt:
        group.add_argument("--num-images", type=int, default=1, help="images per prompt")
    group.add_argument("--batch-size", type=int, default=batch_size,
                       help=f"images per forward pass (does not change images; default {batch_size})")


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """Fail on bad numbers before any model is loaded."""
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value <= 0 or value % 32):
            raise OpenUniError(f"--{name} must be a positive multiple of 32, got {value}")
    for name in ("steps", "num_images", "batch_size"):
        if getattr(args, name, 1) < 1:
            raise OpenUniError(f"--{name.replace('_', '-')} must be at least 1")


# -- entry point -------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openuni", description="OpenUni: generate, edit and understand images.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the libraries say")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def quiet_libraries() -> None:
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        quiet_libraries()
    try:
        return args.func(args) or 0
    except OpenUniError as error:
        print(f"openuni {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"openuni {args.command}: interrupted; finished outputs are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
