"""Real uvicorn servers on the loopback interface for the serving tests, and what they compare."""

from __future__ import annotations

import base64
import io
import re
import socket

import numpy as np
import PIL.Image


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def running_server(service, on_load_failure=None):
    """`create_app(service)` served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    from openuni.serving.threaded import serve_in_thread

    return serve_in_thread(service, on_load_failure=on_load_failure)


def decoded(b64_json: str) -> PIL.Image.Image:
    return PIL.Image.open(io.BytesIO(base64.b64decode(b64_json))).convert("RGB")


def decoded_png(png: bytes) -> PIL.Image.Image:
    return PIL.Image.open(io.BytesIO(png)).convert("RGB")


def metric(text: str, name: str, **labels) -> float:
    """One sample of a Prometheus text exposition (0 when the series does not exist yet)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match[1] or "").split(","))) == wanted:
            return float(match[2])
    return 0.0


def random_png(seed: int, size=(80, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
