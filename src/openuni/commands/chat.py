"""`openuni chat`: ask the frozen InternVL3 about images, or just chat with it; answers stream to the terminal.

With a question it answers once. Without one it reads questions line by line from standard input and keeps the
conversation; `/image PATH` attaches an image to the next question, `/reset` starts over, `/exit` (or end of
input, Ctrl-D) quits. At a terminal, lines are edited and recalled with readline (arrow keys, history). Only the
MLLM is loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import OpenUniError
from .options import add_model_arguments

HELP_LINE = "commands: /image PATH (attach to the next question), /reset (new conversation), /exit"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("chat", help="ask InternVL3 about images (or chat without one)",
                                   description="Image understanding with the frozen InternVL3 of an OpenUni variant.")
    parser.add_argument("question", nargs="?", help="omit for an interactive conversation read from standard input")
    parser.add_argument("--image", action="append", type=Path, default=[], metavar="PATH",
                        help="an image to ask about (repeat for several)")
    add_model_arguments(parser, mllm_only=True)
    group = parser.add_argument_group("answering")
    group.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    group.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, help="sampling temperature (implies --do-sample; default 1.0)")
    group.add_argument("--top-p", type=float, help="nucleus sampling mass (implies --do-sample; default 1.0)")
    group.add_argument("--seed", type=int, help="seed for sampling")
    group.add_argument("--max-tiles", type=int, default=12, help="448-px tiles per image, thumbnail aside (default 12)")
    group.add_argument("--system", help="system prompt (default: InternVL3's own; '' for none)")
    parser.set_defaults(func=run, interrupted="interrupted")


def check_arguments(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise OpenUniError("--max-new-tokens must be at least 1")
    if args.temperature is not None and not 0 < args.temperature < math.inf:  # (NaN fails both comparisons)
        raise OpenUniError(f"--temperature must be a positive number (leave sampling off for greedy decoding), got "
                           f"{args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise OpenUniError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not 1 <= args.max_tiles <= 40:
        raise OpenUniError("--max-tiles must be between 1 and 40")
    if args.question is not None and not args.question.strip():
        raise OpenUniError("the question is empty")
    for image in args.image:
        if not image.is_file():
            raise OpenUniError(f"--image {image}: no such file")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..chat import INTERNVL_SYSTEM_PROMPT, Conversation, InternVLChat
    from ..devices import resolve_device, resolve_dtype

    check_arguments(args)
    device = resolve_device(args.device)
    chat = InternVLChat.from_pretrained(mllm=args.mllm, variant=args.variant, tokenizer=args.tokenizer, device=device,
                                        dtype=resolve_dtype(args.dtype, device), max_tiles=args.max_tiles)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    settings = dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample or args.temperature is not None or args.top_p is not None,
        temperature=args.temperature if args.temperature is not None else 1.0,
        top_p=args.top_p if args.top_p is not None else 1.0,
    )
    system_prompt = INTERNVL_SYSTEM_PROMPT if args.system is None else (args.system or None)

    def new_conversation() -> Conversation:
        return Conversation(system_prompt=system_prompt)

    if args.question is not None:
        try:
            answer_streamed(chat, args.question, args.image, new_conversation(), settings)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            print("openuni chat: answer stopped", file=sys.stderr)
            return 130
        return 0
    return interactive(chat, list(args.image), new_conversation, settings)


def answer_streamed(chat, question: str, images: list, conversation, settings: dict) -> None:
    for piece in chat.stream(question, images, conversation, **settings):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def interactive(chat, pending_images: list, new_conversation, settings: dict) -> int:
    """One question per input line; a bad line prints an error and the conversation goes on. An image is checked
    when it is attached, and a question that fails drops the images attached to it (saying so), so one bad file
    never spoils the questions after it. At a terminal, lines are edited and recalled with readline; Ctrl-C stops
    an answer (or, at the prompt, says how to quit) and Ctrl-D quits."""
    conversation = new_conversation()
    prompting = sys.stdin.isatty()
    editing = prompting and sys.stdout.isatty() and line_editing()
    if prompting:
        print(HELP_LINE, file=sys.stderr)
    while True:
        try:
            line = read_line(prompting, editing)
        except KeyboardInterrupt:
            print("\n(Ctrl-D or /exit quits)", file=sys.stderr)
            continue
        if line is None:
            if prompting:  # the shell's prompt must start on a line of its own
                print(file=sys.stderr)
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            conversation, pending_images = new_conversation(), []
            print("new conversation: earlier questions, answers and attached images are forgotten", file=sys.stderr)
            continue
        if line.startswith("/image"):
            attach(chat, line[len("/image"):].strip(), pending_images)
            continue
        if line.startswith("/"):
            print(f"openuni chat: unknown command {line.split()[0]}; {HELP_LINE}", file=sys.stderr)
            continue
        try:
            answer_streamed(chat, line, pending_images, conversation, settings)
        except OpenUniError as error:
            dropped = f"; the {len(pending_images)} attached image(s) were dropped (attach again with /image)" \
                if pending_images else ""
            print(f"openuni chat: error: {error}{dropped}", file=sys.stderr)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            print("(answer stopped; the conversation keeps it as far as it went)", file=sys.stderr)
        pending_images = []


def line_editing() -> bool:
    """Arrow keys, line editing and history for `input()` (readline is missing on some platforms)."""
    try:
        import readline  # noqa: F401  (importing it is what turns it on)
    except ImportError:
        return False
    return True


def read_line(prompting: bool, editing: bool) -> str | None:
    """The next line typed or piped in; None at the end of input."""
    if editing:
        try:
            return input("> ")
        except EOFError:
            return None
    if prompting:
        print("> ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline() or None


def attach(chat, text: str, pending_images: list) -> None:
    """`/image PATH`: read and tile the image now, so a file that is no image is refused here, not with every later
    question."""
    if not text:
        print("openuni chat: error: /image needs a PATH", file=sys.stderr)
        return
    path = Path(text).expanduser()
    try:
        chat.tile(path)
    except OpenUniError as error:
        print(f"openuni chat: error: {error}; not attached", file=sys.stderr)
        return
    pending_images.append(path)
    print(f"attached {path} to the next question", file=sys.stderr)
