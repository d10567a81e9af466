"""The same API on Ray Serve: every replica loads the model and runs `create_app` with its own batcher.

Ray Serve routes requests across replicas (one per GPU, on as many nodes as the cluster has) and scales them;
inside a replica our batcher groups concurrent requests into pipeline calls, so Ray Serve's own `@serve.batch` is
not used (batching twice would only add a second wait). The replica takes the flags of `openuni serve`:

    serve run configs/ray/serve.yaml            # import_path: openuni.serving.ray_app:app_builder

`max_ongoing_requests` must let a replica hold a full batch and its queue (the default set here does); beyond
that, our queue bound answers 429 just as `openuni serve` does. `--host`/`--port` are Ray Serve's `http_options`.
"""

from __future__ import annotations

import shlex

from ray import serve
from ray.serve import Application

from ..errors import OpenUniError

DEPLOYMENT_NAME = "OpenUni"


def parse_arguments(argv: list[str]):
    """`openuni serve`'s flags, parsed the same way (bad flags fail here, before any replica starts)."""
    import argparse

    from ..commands.serve import add_arguments

    parser = argparse.ArgumentParser(prog="openuni.serving.ray_app", exit_on_error=False)
    add_arguments(parser)
    try:
        return parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as error:
        raise OpenUniError(f"bad arguments for the Ray Serve deployment {argv}: {error}") from None


def deployment(argv: list[str]):
    """The Ray Serve deployment for these flags; each replica builds its app (and loads its model) at start."""
    from .config import config_from_args

    args = parse_arguments(argv)
    config = config_from_args(args)

    def build_app():  # runs in the replica, after Ray has placed it (on its GPU)
        from ..commands.options import pipeline_from_args
        from .app import create_app
        from .service import OpenUniService

        return create_app(OpenUniService(config, pipe=pipeline_from_args(args)))

    @serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=config.max_queue + config.max_batch_images)
    @serve.ingress(build_app)
    class OpenUni:
        pass

    return OpenUni


def app_builder(args: dict) -> Application:
    """`serve run` / `serve deploy` entry point; `args: {argv: [...]}` (a list, or one shell-style string)."""
    argv = args.get("argv", [])
    argv = shlex.split(argv) if isinstance(argv, str) else [str(value) for value in argv]
    unknown = set(args) - {"argv"}
    if unknown:
        raise OpenUniError(f"unknown Ray Serve application args {sorted(unknown)}: pass the flags of "
                           "`openuni serve` as args.argv")
    return deployment(argv).bind()
