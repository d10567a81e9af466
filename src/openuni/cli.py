"""The `openuni` command: one entry point, a subcommand per job.

Each subcommand's module (`openuni.commands.*`) parses its arguments and does its I/O; the work lives in the
library. The modules import heavy libraries only when their command runs, so `openuni --help` stays quick. Bad
input ends with one line saying what to do and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .commands import chat, demo, download, edit, extract_latents, generate, make_tiny, serve, shapes, train
from .commands import eval as evaluate
from .errors import OpenUniError

SUBCOMMANDS = (generate, edit, chat, download, train, extract_latents, evaluate, make_tiny, shapes, demo, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openuni", description="OpenUni: generate, edit and understand images.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the libraries say")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.add_parser(subparsers)
    for subparser in subparsers.choices.values():
        subparser.set_defaults(subparser=subparser)  # whose usage an unknown argument is reported with
    return parser


def quiet_libraries(download_bars: bool = False) -> None:
    """Only errors from transformers/diffusers, no download bars (but for a command whose job is downloading). Through their environment settings while they are
    not imported yet, so a command that fails on bad input never pays for importing them. torchao (imported by
    diffusers when installed) warns at import about optional kernels this torch build cannot load, and torch about
    its enums: nothing a user of openuni can act on, so those loggers say errors only too."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules or "diffusers" in sys.modules:
        import diffusers
        import transformers

        transformers.logging.set_verbosity_error()
        diffusers.logging.set_verbosity_error()
        if not download_bars:
            transformers.utils.logging.disable_progress_bar()
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    if not download_bars:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like `parse_args`, but `key=value` settings may follow the flags (argparse leaves those after an option
    unparsed) and an unknown flag is reported with the subcommand's usage rather than the top-level one."""
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_overrides", False):
        args.overrides += [item for item in extra if "=" in item and not item.startswith("-")]
        extra = [item for item in extra if item not in args.overrides]
    if extra:
        args.subparser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        quiet_libraries(download_bars=getattr(args, "download_bars", False))
    try:
        return args.func(args) or 0
    except OpenUniError as error:
        print(f"openuni {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # (commands that write files keep what they finished; others, like chat, say so themselves)
        message = getattr(args, "interrupted", "interrupted; finished outputs are kept")
        print(f"\nopenuni {args.command}: {message}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
