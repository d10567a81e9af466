"""`openuni make-tiny DIR`: a complete tiny random OpenUni and a tiny dataset on disk, to try every command (training
included) without downloads."""

from __future__ import annotations

import argparse
import shlex


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("make-tiny", help="write a tiny random OpenUni (all formats) and a tiny dataset "
                                                     "for trying things out")
    parser.add_argument("directory", help="where to write it")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tiny import build_tiny_openuni, write_tiny_dataset, write_tiny_train_config

    tiny = build_tiny_openuni(args.directory, seed=args.seed, unit_latents=True)
    index = write_tiny_dataset(tiny.root / "data")
    config = write_tiny_train_config(tiny, index, tiny.root / "run")
    q = shlex.quote
    print(f"wrote a tiny OpenUni to {tiny.root}; generate with it:")
    print(
        f"  openuni generate 'a red cube' --mllm {q(str(tiny.mllm))} --transformer {q(str(tiny.transformer))} "
        f"--vae {q(str(tiny.vae))} --checkpoint {q(str(tiny.checkpoint))} --connector-heads {tiny.connector_heads} "
        f"--output tiny.png"
    )
    print(f"train it on the tiny dataset in {index.parent} (settings in {config}; override any as key=value):")
    print(f"  openuni train {q(str(config))} max_steps=20")
    return 0
