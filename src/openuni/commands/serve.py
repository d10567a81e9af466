"""`openuni serve`: the OpenAI-compatible HTTP API (images, edits, chat) on one loaded model, with uvicorn.

The server listens at once and loads the model on a thread of its own: /health answers 503 until the model is
ready. A model that fails to load stops the server with one line and exit code 2.
"""

from __future__ import annotations

import argparse

from ..errors import OpenUniError
from .demo import check_port_free
from .options import add_fast_sampling_arguments, add_model_arguments, add_rewrite_argument, pipeline_from_args


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve an OpenAI-compatible HTTP API (images, edits, chat)",
        description="Serve /v1/images/generations, /v1/images/edits, /v1/chat/completions, /v1/models, /health "
                    "and /metrics on one loaded model, batching concurrent requests. Needs the 'serve' extra: "
                    "pip install -e '.[serve]'. Ray Serve: docs/serving.md.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of `openuni serve` (the Ray Serve deployment parses the same ones)."""
    from ..serving.config import add_server_arguments

    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for the network, "
                            "then with --api-key)")
    group.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_server_arguments(parser)
    add_rewrite_argument(parser)
    add_model_arguments(parser)
    add_fast_sampling_arguments(parser)


def require_serving_packages() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (the edit route's uploads)
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise OpenUniError(f"openuni serve needs the 'serve' extra ({error.name} is missing): "
                           "pip install -e '.[serve]'") from None


def run(args: argparse.Namespace) -> int:
    require_serving_packages()
    import uvicorn

    from ..serving.app import create_app
    from ..serving.config import config_from_args
    from ..serving.service import OpenUniService

    config = config_from_args(args)
    check_port_free(args.host, args.port)
    service = OpenUniService(config, load=lambda: pipeline_from_args(args))
    server: uvicorn.Server | None = None

    def stop(error: BaseException) -> None:
        server.should_exit = True

    app = create_app(service, on_load_failure=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))
    print(f"openuni serve: loading the model; http://{args.host}:{args.port}/health answers 503 until it is ready",
          flush=True)
    server.run()
    if service.load_error is not None:
        if isinstance(service.load_error, OpenUniError):
            raise service.load_error
        raise OpenUniError(f"the model failed to load: {service.load_error}")
    return 0
