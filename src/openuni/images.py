"""Image helpers shared by the pipeline, the chat and the commands: reading user images safely, grids.

`load_image` turns whatever a user hands us (a path, or an already opened PIL image) into an upright 8-bit RGB
image, or fails with one `OpenUniError` line saying what is wrong. Memory is bounded before any pixel is decoded:
the header's size is checked against `MAX_IMAGE_PIXELS` (PIL's own decompression-bomb guard stays on underneath).
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from .errors import OpenUniError

# 64 megapixels (8000 x 8000): ~190 MB as RGB, far above anything the models look at (448 px tiles, <=1024 px output).
MAX_IMAGE_PIXELS = 64_000_000
# The smallest side InternViT can see before a model is loaded (one 14 px patch of the real models); commands check
# again against the loaded model's own patch (`OpenUniPipeline.vision_patch_size`, `InternVLChat.patch_size`).
MIN_IMAGE_SIDE = 14
MAX_ASPECT_RATIO = 4.0

def load_image(
    source: str | Path | PIL.Image.Image, min_side: int = MIN_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS
) -> PIL.Image.Image:
    """A path or PIL image -> an upright RGB image (8 bits per channel), or an `OpenUniError` saying why not."""
    if isinstance(source, PIL.Image.Image):
        image, name = source, getattr(source, "filename", "") or "the image"
    elif isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise OpenUniError(f"image {path}: no such file")
        if not path.is_file():
            raise OpenUniError(f"image {path}: not a file")
        image, name = _open(path, str(path), max_pixels), str(path)
    else:
        raise OpenUniError(f"expected an image file path or a PIL image, got {type(source).__name__}")
    return _decode(image, name, min_side, max_pixels)


def load_image_bytes(data: bytes, name: str = "the uploaded image", min_side: int = MIN_IMAGE_SIDE,
                     max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
    """`load_image` for the bytes of an image file (an upload): the same checks, `name` in the messages."""
    return _decode(_open(io.BytesIO(data), name, max_pixels), name, min_side, max_pixels)


def _decode(image: PIL.Image.Image, name: str, min_side: int, max_pixels: int) -> PIL.Image.Image:
    """An opened image whose size is checked before its pixels are decoded, as upright RGB."""
    check_image_size(image.size, name, min_side, max_pixels)
    try:
        image.load()  # an opened PIL image may still hold undecoded (and damaged) pixel data
    except (OSError, SyntaxError, ValueError) as error:  # truncated or damaged pixel data
        raise OpenUniError(f"image {name} is corrupt or truncated ({error})") from None
    return to_rgb(PIL.ImageOps.exif_transpose(image), name)


def _open(file: Path | io.BytesIO, name: str, max_pixels: int) -> PIL.Image.Image:
    """Read the header only: format and size, no pixels yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            return PIL.Image.open(file)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise OpenUniError(
            f"image {name} is too large to read safely (over {max_pixels // 1_000_000} megapixels); downscale it first"
        ) from None
    except PIL.UnidentifiedImageError:
        raise OpenUniError(
            f"image {name}: not an image format this program can read (use PNG, JPEG, WebP, BMP, GIF or TIFF), "
            "or the file is corrupt"
        ) from None
    except OSError as error:
        raise OpenUniError(f"image {name} is corrupt or truncated ({error})") from None


def check_image_size(size: tuple[int, int], name: str, min_side: int = MIN_IMAGE_SIDE,
                     max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    width, height = size
    if width * height > max_pixels:
        raise OpenUniError(
            f"{name} is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.0f}; downscale it first"
        )
    if min(width, height) < min_side:
        raise OpenUniError(
            f"{name} is {width}x{height}: smaller than one {min_side}-pixel patch of the vision encoder; "
            f"use an image at least {min_side} pixels on each side"
        )


def to_rgb(image: PIL.Image.Image, name: str = "the image") -> PIL.Image.Image:
    """Any PIL mode -> 8-bit RGB: transparency composited on white, 16-bit and float scaled down to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _high_depth_to_rgb(image)
    if image.mode == "P":
        # Palette images may carry transparency in their `info`; RGBA keeps it for the compositing below.
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise OpenUniError(f"{name}: cannot convert its {image.mode} pixels to RGB ({error})") from None


def _high_depth_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """16/32-bit integer or float greyscale -> 8 bits, keeping the relative brightness."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        # Float images come as [0, 1] or [0, 255]; anything else is stretched to its own range.
        peak = 1.0 if values.max(initial=0) <= 1.0 else 255.0 if values.max(initial=0) <= 255 else values.max()
        values = values / peak * 255.0
    else:
        values = values / 257.0  # 65535 -> 255
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(grey, mode="L").convert("RGB")


def size_like(source_size: tuple[int, int], resolution: int, multiple: int) -> tuple[int, int]:
    """(height, width) with the source's aspect ratio and about `resolution`^2 pixels, both multiples of `multiple`.

    The ratio is limited to 4:1 either way: the diffusion models were trained on squares and degrade far from them.
    """
    width, height = source_size
    aspect = min(max(width / height, 1 / MAX_ASPECT_RATIO), MAX_ASPECT_RATIO)
    target_width = resolution * math.sqrt(aspect)
    target_height = resolution / math.sqrt(aspect)
    return (max(multiple, round(target_height / multiple) * multiple),
            max(multiple, round(target_width / multiple) * multiple))


def image_grid(images: list[PIL.Image.Image], columns: int | None = None) -> PIL.Image.Image:
    """Tile same-sized images row by row; `columns` defaults to the smallest square that holds them all."""
    if not images:
        raise ValueError("no images to tile")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = PIL.Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid
