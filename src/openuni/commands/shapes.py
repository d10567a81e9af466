"""`openuni shapes make DIR`: the synthetic-shapes data set (training split in the reference's JSON layout, held-out
prompts of unseen colour-shape pairs, their rendered ground truth, prompts of training pairs) and `openuni shapes
model DIR`: the small frozen MLLM, SANA and autoencoder the `shapes-tiny` preset trains from."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("shapes", help="the synthetic-shapes task: data set and its small model")
    actions = parser.add_subparsers(dest="shapes_action", required=True, metavar="ACTION")
    make = actions.add_parser("make", help="write the data set (train/, heldout/, seen/)")
    make.add_argument("directory", help="where to write it")
    make.add_argument("--train-size", type=int, default=6000, help="training images (default: 6000)")
    make.add_argument("--heldout-per-task", type=int, default=20, help="held-out prompts per task, at most, and as "
                                                                       "many of training pairs (default: 20)")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(func=run_make)
    model = actions.add_parser("model", help="write the small model the shapes-tiny preset trains (mllm/, "
                                             "transformer/, vae/, scheduler/)")
    model.add_argument("directory", help="where to write it")
    model.add_argument("--seed", type=int, default=0)
    model.set_defaults(func=run_model)


def run_make(args: argparse.Namespace) -> int:
    from ..data.shapes import make_dataset

    summary = make_dataset(args.directory, args.train_size, args.heldout_per_task, args.seed)
    print(f"wrote {summary['train']} training images to {args.directory}/train/annotations.json and "
          f"{summary['heldout_prompts']} held-out prompts (unseen pairs: {', '.join(summary['held_out_pairs'])}) "
          f"to {args.directory}/heldout/evaluation_metadata.jsonl ({summary['seen_prompts']} of training pairs in "
          f"{args.directory}/seen/)")
    return 0


def run_model(args: argparse.Namespace) -> int:
    from ..files import check_writable
    from ..shapes_model import build_shapes_model

    check_writable(args.directory, "the model folder", folder=True)
    paths = build_shapes_model(args.directory, seed=args.seed)
    print(f"wrote the shapes model to {args.directory} ({', '.join(p.name for p in paths.values())}); train it with "
          "`openuni train shapes-tiny` (paths: see docs/benchmarks.md)")
    return 0
