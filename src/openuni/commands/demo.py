"""`openuni demo`: the web demo (Generate, Edit and Chat tabs on one loaded model), served with gradio."""

from __future__ import annotations

import argparse
import socket

from ..errors import OpenUniError
from .options import add_fast_sampling_arguments, add_model_arguments, add_rewrite_argument, pipeline_from_args


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="serve the web demo (generate, edit, chat)",
                                   description="Serve a web page to generate and edit images and to chat about "
                                               "them, all with one loaded model. Needs gradio: "
                                               'pip install -e ".[demo]".')
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    group.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    group.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    add_rewrite_argument(parser)
    add_model_arguments(parser)
    add_fast_sampling_arguments(parser)
    parser.set_defaults(func=run)


def check_port_free(host: str, port: int) -> None:
    """Fail before the model loads, not after, when the address cannot be served."""
    if not 1 <= port <= 65535:
        raise OpenUniError(f"--port must be between 1 and 65535, got {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise OpenUniError(f"cannot listen on {host}:{port} ({error.strerror or error}); pick another --port "
                           "or --host") from None


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise OpenUniError('the demo needs gradio: pip install -e ".[demo]"') from None
    from ..demo import MAX_UPLOAD_SIZE, DemoApp

    check_port_free(args.host, args.port)
    page = DemoApp(pipeline_from_args(args), rewrite=args.rewrite).build()
    # (quiet: gradio's own banner tells users to edit `launch()`; ours names this command's flags)
    page.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD_SIZE,
                quiet=True, prevent_thread_lock=True)
    print(banner(page.local_url, page.share_url, args.share), flush=True)
    page.block_thread()
    return 0


def banner(local_url: str, share_url: str | None, share_asked: bool) -> str:
    lines = [f"OpenUni demo running on {local_url} (Ctrl-C stops it)"]
    if share_url:
        lines.append(f"public link, temporary: {share_url}")
    elif share_asked:
        lines.append("no public link could be made (see above); the local address works")
    else:
        lines.append("--share also opens a temporary public link (gradio.live)")
    return "\n".join(lines)
