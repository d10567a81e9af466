"""`openuni download VARIANT`: every part of a released variant into the Hugging Face cache, optionally assembled
into one pipeline directory that `--model DIR` loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OpenUniError

SAVE_DTYPES = ("float32", "bfloat16", "float16")


def add_parser(subparsers) -> None:
    from ..variants import STAGES, VARIANTS

    parser = subparsers.add_parser(
        "download", help="fetch every part of a released variant (MLLM, SANA, DC-AE, checkpoint)",
        description="Fetch every part of a released variant from the Hugging Face Hub into its cache (resumable: "
                    "run it again after an interruption). With --dir, also write one pipeline directory that "
                    "`openuni generate --model DIR` loads.")
    parser.add_argument("variant", choices=list(VARIANTS))
    parser.add_argument("--stage", default="finetune", choices=STAGES, help="finetuned (blip3o60k) or pretrained")
    parser.add_argument("--dir", type=Path, metavar="DIR", help="write the assembled pipeline here (safetensors)")
    parser.add_argument("--dtype", choices=SAVE_DTYPES,
                        help="weights' dtype in --dir (default float32, as the parts come)")
    parser.set_defaults(func=run, download_bars=True)  # (the CLI hides the Hub's progress bars elsewhere)


def run(args: argparse.Namespace) -> int:
    from ..files import check_writable
    from ..hub import fetch_parts, variant_parts

    if args.dir is not None:
        check_writable(args.dir, "--dir", folder=True)
    elif args.dtype is not None:
        raise OpenUniError("--dtype is the dtype of the pipeline folder --dir writes: give --dir with it (the Hub "
                           "cache keeps the parts as they come)")
    parts = variant_parts(args.variant, args.stage)
    for part in parts.values():
        print(f"{part.what}: {part.repo}" + (f" ({part.filename})" if part.filename else ""))
    fetch_parts(list(parts.values()), args.variant, args.stage)
    if args.dir is None:
        print(f"every part of {args.variant} is in the Hugging Face cache; generate with it (offline too, with "
              f"HF_HUB_OFFLINE=1):")
        stage = "" if args.stage == "finetune" else f" --stage {args.stage}"
        print(f"  openuni generate 'a red cube' --variant {args.variant}{stage}")
        return 0
    save_variant(args.variant, args.stage, args.dir, args.dtype or "float32")
    print(f"wrote {args.variant} to {args.dir}; generate with it:")
    print(f"  openuni generate 'a red cube' --model {args.dir}")
    return 0


def save_variant(variant: str, stage: str, target: Path, dtype: str = "float32", **parts) -> None:
    """Assemble `variant` from the Hub cache (or the local `parts` given) on the CPU and save it to `target`."""
    import torch

    from ..pipeline import OpenUniPipeline

    pipe = OpenUniPipeline.from_variant(variant, stage=stage, device="cpu", dtype=getattr(torch, dtype),
                                        local_files_only=True, **parts)
    pipe.save_pretrained(target)
