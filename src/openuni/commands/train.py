"""`openuni train CONFIG_OR_PRESET [key=value ...]`: pretrain or finetune; run under `accelerate launch` for many
devices (the engine - DDP, FSDP, DeepSpeed - is the accelerate config's, see configs/accelerate/)."""

from __future__ import annotations

import argparse
import re

from ..errors import OpenUniError

# The loaders name the generate/edit flags; a training run sets the same things as `key=value`.
FLAG_SETTINGS = {"--mllm": "mllm", "--tokenizer": "tokenizer", "--transformer": "transformer", "--vae": "vae",
                 "--scheduler": "scheduler", "--checkpoint": "init_checkpoint", "--connector-heads": "connector_heads"}
FLAG_WITH_VALUE = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, FLAG_SETTINGS)) + r")(?![\w-])"
                             r"( (PATH|DIR|FILE|N|\d+|\S*[/.]\S*))?")


def add_parser(subparsers) -> None:
    from ..training.config import PRESETS

    parser = subparsers.add_parser(
        "train", help="pretrain or finetune OpenUni (flow matching)",
        description="Train OpenUni. CONFIG is a preset (" + ", ".join(PRESETS) + ") or a YAML file; settings "
                    "(before or after the flags) override it, e.g. data.0.path=blip3o.json batch_size=16 "
                    "max_steps=500. `openuni train PRESET --print-config` lists every setting.",
    )
    parser.add_argument("config", metavar="CONFIG_OR_PRESET")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--resume", metavar="CHECKPOINT",
                        help="a checkpoint directory, 'auto' (default: the newest in output_dir) or 'none'")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit (a preset needs no data for this)")
    parser.set_defaults(func=run, takes_overrides=True)


def as_settings(message: str) -> str:
    """A loader's message with its command-line flags written as this command's settings (`mllm=PATH`)."""
    def setting(match: re.Match) -> str:
        name = FLAG_SETTINGS[match.group(1)]
        return f"{name}={match.group(3)}" if match.group(3) else f"`{name}`"

    return FLAG_WITH_VALUE.sub(setting, message)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..training.config import build_config

    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    config = build_config(args.config, overrides, require_data=not args.print_config)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    from ..training.trainer import Trainer

    try:
        trainer = Trainer(config)
        losses = trainer.run()
    except OpenUniError as error:
        raise OpenUniError(as_settings(str(error))) from None
    if trainer.accelerator.is_main_process:
        final = trainer.output_dir / "final"
        print(f"trained {trainer.step} steps (last loss {losses[-1]:.4f}); exported {final / 'pipeline'} and "
              f"{final / 'openuni.pth'}" if losses else f"nothing to do: already at step {trainer.step}")
    return 0
