"""A server inside this process: uvicorn on a thread, for notebooks, tests and benchmarks.

    with serve_in_thread(OpenUniService(ServerConfig(), pipe=pipe)) as url:
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused").images.generate(prompt="a red fox")
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from .app import create_app
from .service import OpenUniService


@contextmanager
def serve_in_thread(service: OpenUniService, host: str = "127.0.0.1", port: int = 0, on_load_failure=None,
                    start_timeout: float = 60.0):
    """Serve `create_app(service)` until the block ends; yields the base URL (port 0: a free port)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(service, on_load_failure), host=host, port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="openuni-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True  # uvicorn finishes the requests in flight, then the lifespan closes the service
        thread.join(start_timeout)
