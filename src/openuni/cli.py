"""The `openuni` command: one entry point, a subcommand per job.

Each subcommand's module (`openuni.commands.*`) parses its arguments and does its I/O; the work lives in the
library. The modules import heavy libraries only when their command runs, so `openuni --help` stays quick. Bad
input ends with one line saying what to do and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .commands import chat, demo, edit, extract_latents, generate, make_tiny, serve, shapes, train
from .commands import eval as evaluate
from .errors import OpenUniError

SUBCOMMANDS = (generate, edit, chat, train, extract_latents, evaluate, make_tiny, shapes, demo, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openuni", description="OpenUni: generate, edit and understand images.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the libraries say")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.add_parser(subparsers)
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
