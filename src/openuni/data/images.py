"""Image decoding and the training crops: random square crop + resize (the reference), or aspect buckets."""

from __future__ import annotations

import io
import random

import numpy as np
import PIL.Image
import torch

BUCKET_MULTIPLE = 32


class BadSample(Exception):
    """A sample that cannot be used (unreadable image, missing caption); the reader skips and counts it."""


def decode_image(data: bytes | str, what: str) -> PIL.Image.Image:
    """RGB image from a path or encoded bytes; anything unreadable becomes `BadSample` naming `what`."""
    try:
        with PIL.Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        raise BadSample(f"{what}: unreadable image ({error})") from None


def aspect_buckets(resolution: int, multiple: int = BUCKET_MULTIPLE, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """(height, width) pairs, multiples of `multiple`, of about `resolution`² pixels, aspect ratio within `max_ratio`."""
    area = resolution * resolution
    buckets = set()
    for width in range(multiple, 4 * resolution + 1, multiple):
        height = round(area / width / multiple) * multiple
        if height >= multiple and max(width / height, height / width) <= max_ratio:
            buckets.add((height, width))
    return sorted(buckets)


def crop_to(image: PIL.Image.Image, height: int, width: int, rng: random.Random | None = None) -> PIL.Image.Image:
    """Crop to the target aspect ratio (at random, or centred without `rng`), then a bicubic resize."""
    source_w, source_h = image.size
    scale = min(source_w / width, source_h / height)
    crop_w, crop_h = min(source_w, round(width * scale)), min(source_h, round(height * scale))
    if rng is None:
        left, top = (source_w - crop_w) // 2, (source_h - crop_h) // 2
    else:
        left, top = rng.randint(0, source_w - crop_w), rng.randint(0, source_h - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    return image.resize((width, height), PIL.Image.BICUBIC)


def resize_to(image: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    """A bicubic resize to exactly (height, width), the aspect ratio not kept (edit pairs, as the reference)."""
    return image if image.size == (width, height) else image.resize((width, height), PIL.Image.BICUBIC)


def to_pixels(image: PIL.Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [-1, 1] (the VAE's input range)."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
