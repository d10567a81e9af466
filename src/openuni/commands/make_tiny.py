"""`openuni make-tiny DIR`: a complete tiny random OpenUni on disk, to try every command without downloads."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("make-tiny", help="write a tiny random OpenUni (all formats) for trying things out")
    parser.add_argument("directory", help="where to write it")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tiny import build_tiny_openuni

    tiny = build_tiny_openuni(args.directory, seed=args.seed)
    print(f"wrote a tiny OpenUni to {tiny.root}; generate with it:")
    print(
        f"  openuni generate 'a red cube' --mllm {tiny.mllm} --transformer {tiny.transformer} --vae {tiny.vae} "
        f"--checkpoint {tiny.checkpoint} --connector-heads {tiny.connector_heads} --output tiny.png"
    )
    return 0
