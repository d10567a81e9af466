"""What one server allows and how it batches: every bound a request is checked against, as data.

`openuni serve` fills it from its flags (`config_from_args`), the Ray Serve deployment from the same flags, tests
directly. Everything here is checked before the model loads.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

from ..errors import OpenUniError

API_KEY_ENVIRONMENT = "OPENUNI_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    model_name: str = "openuni"  # the id `GET /v1/models` lists and requests may name
    api_key: str | None = None  # Bearer token required on every route but /health
    # Batching: requests that arrive within `max_wait_ms` of the oldest waiting one and share their settings run
    # as one pipeline call of up to `max_batch_images` images.
    max_wait_ms: float = 20.0
    max_batch_images: int = 8
    max_queue: int = 64  # images waiting (and, separately, chat requests waiting); beyond it: 429
    request_timeout: float = 300.0  # seconds from arrival to answer; beyond it: 504 and the work is dropped
    # Bounds on one request.
    max_side: int = 2048
    max_steps: int = 100
    max_upload_bytes: int = 20 * 2**20  # any request body (uploads, JSON with data-URL images)
    max_image_pixels: int = 16_000_000  # decoded pixels of an uploaded image (checked from its header)
    max_chat_tokens: int = 2048  # max_tokens of one answer
    max_chat_images: int = 8
    allow_remote_images: bool = False  # fetch http(s) image_url parts (the server then reaches out on request)
    remote_image_timeout: float = 10.0
    rewrite: bool = False  # the MLLM expands each generation prompt first (`--rewrite`); answered as revised_prompt

    def check(self) -> "ServerConfig":
        positive = dict(max_batch_images=self.max_batch_images, max_queue=self.max_queue,
                        max_side=self.max_side, max_steps=self.max_steps, max_upload_bytes=self.max_upload_bytes,
                        max_image_pixels=self.max_image_pixels, max_chat_tokens=self.max_chat_tokens,
                        max_chat_images=self.max_chat_images)
        for name, value in positive.items():
            if value < 1:
                raise OpenUniError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("max_wait_ms", "request_timeout", "remote_image_timeout"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (value == 0 and name != "max_wait_ms"):
                raise OpenUniError(f"--{name.replace('_', '-')} must be a positive number of "
                                   f"{'milliseconds' if name == 'max_wait_ms' else 'seconds'}, got {value}")
        if self.max_queue < self.max_batch_images:
            raise OpenUniError(f"--max-queue ({self.max_queue}) must hold at least one full batch "
                               f"(--max-batch-images {self.max_batch_images})")
        if self.api_key is not None and not self.api_key.strip():
            raise OpenUniError(f"--api-key (or ${API_KEY_ENVIRONMENT}) is empty")
        return self


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the API itself (the model flags come from `add_model_arguments`)."""
    defaults = ServerConfig()
    api = parser.add_argument_group("API")
    api.add_argument("--model-name", default=None,
                     help="the model id /v1/models lists (default: the variant's name, or 'openuni')")
    api.add_argument("--api-key", default=os.environ.get(API_KEY_ENVIRONMENT),
                     help=f"require 'Authorization: Bearer KEY' on every route but /health (default: "
                          f"${API_KEY_ENVIRONMENT}, which keeps the key out of the process list)")
    api.add_argument("--allow-remote-images", action="store_true",
                     help="let chat messages name http(s) image URLs, which the server then downloads "
                          "(default: data: URLs only)")
    batching = parser.add_argument_group("batching and backpressure")
    batching.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                          help=f"how long the oldest waiting request waits for others to batch with "
                               f"(default {defaults.max_wait_ms:g})")
    batching.add_argument("--max-batch-images", type=int, default=defaults.max_batch_images,
                          help=f"images per pipeline call, and the most one request may ask for "
                               f"(default {defaults.max_batch_images})")
    batching.add_argument("--max-queue", type=int, default=defaults.max_queue,
                          help=f"images waiting (and chat requests waiting) before new ones get 429 "
                               f"(default {defaults.max_queue})")
    batching.add_argument("--request-timeout", type=float, default=defaults.request_timeout,
                          help=f"seconds a request may take from arrival; then 504 and its work is dropped "
                               f"(default {defaults.request_timeout:g})")
    bounds = parser.add_argument_group("bounds on one request")
    bounds.add_argument("--max-side", type=int, default=defaults.max_side,
                        help=f"largest width or height (default {defaults.max_side})")
    bounds.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help=f"most denoising steps (default {defaults.max_steps})")
    bounds.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20,
                        help=f"largest request body in MiB (default {defaults.max_upload_bytes // 2**20})")
    bounds.add_argument("--max-image-megapixels", type=float, default=defaults.max_image_pixels / 1e6,
                        help=f"largest uploaded image, decoded (default {defaults.max_image_pixels / 1e6:g})")
    bounds.add_argument("--max-tokens", type=int, default=defaults.max_chat_tokens,
                        help=f"longest chat answer (default {defaults.max_chat_tokens})")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    model_name = args.model_name or (getattr(args, "variant", None) if not getattr(args, "model", None) else None)
    return ServerConfig(
        model_name=model_name or "openuni", api_key=args.api_key, max_wait_ms=args.max_wait_ms,
        max_batch_images=args.max_batch_images, max_queue=args.max_queue, request_timeout=args.request_timeout,
        max_side=args.max_side, max_steps=args.max_steps, max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_image_pixels=int(args.max_image_megapixels * 1e6), max_chat_tokens=args.max_tokens,
        allow_remote_images=args.allow_remote_images, rewrite=getattr(args, "rewrite", False),
    ).check()
