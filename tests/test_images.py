"""Reading user images: every kind of bad or unusual file ends as RGB or as one clear OpenUniError."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import PIL.Image
import pytest

from openuni.errors import OpenUniError
from openuni.images import load_image, size_like


def png_with_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims `width` x `height`: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def test_missing_file(tmp_path):
    with pytest.raises(OpenUniError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(OpenUniError, match="not a file"):
        load_image(tmp_path)


def test_unsupported_format(tmp_path):
    path = tmp_path / "drawing.svg"
    path.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    with pytest.raises(OpenUniError, match="not an image format"):
        load_image(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.jpg"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(OpenUniError, match="corrupt or truncated"):
        load_image(path)


def test_grayscale_becomes_rgb_with_same_values(tmp_path):
    path = tmp_path / "grey.png"
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    PIL.Image.fromarray(grey, mode="L").save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert (np.asarray(image) == grey[..., None]).all()


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "palette.png"
    palette_image = PIL.Image.new("P", (20, 20), 0)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.paste(1, (0, 0, 10, 20))
    palette_image.info["transparency"] = 0  # colour 0 (red) is transparent
    palette_image.save(path, transparency=0)
    pixels = np.asarray(load_image(path))
    assert (pixels[:, :10] == [0, 0, 255]).all()  # opaque blue kept
    assert (pixels[:, 10:] == [255, 255, 255]).all()  # transparent red became white


def test_rgba_is_composited_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :8, 3] = 255  # left half opaque, right half fully transparent
    rgba[:, 8:, 3] = 0
    PIL.Image.fromarray(rgba, mode="RGBA").save(path)
    pixels = np.asarray(load_image(path))
    assert (pixels[:, :8] == [200, 0, 0]).all()
    assert (pixels[:, 8:] == [255, 255, 255]).all()


def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    path = tmp_path / "deep.png"
    deep = np.linspace(0, 65535, 32 * 32).astype(np.uint16).reshape(32, 32)
    PIL.Image.fromarray(deep).save(path)
    assert PIL.Image.open(path).mode.startswith("I")
    pixels = np.asarray(load_image(path))
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    assert abs(int(pixels[..., 0].max()) - 255) <= 1 and pixels[..., 0].min() == 0
    assert np.abs(pixels[..., 0].astype(float) - deep / 257.0).max() <= 0.5 + 1e-9


def test_too_many_pixels_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    png_with_header_only(path, 9000, 8000)
    with pytest.raises(OpenUniError, match="megapixels"):
        load_image(path)


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    png_with_header_only(path, 30000, 30000)  # past PIL's own bomb guard
    with pytest.raises(OpenUniError, match="too large"):
        load_image(path)


def test_smaller_than_one_patch(tmp_path):
    path = tmp_path / "tiny.png"
    PIL.Image.new("RGB", (200, 8)).save(path)
    with pytest.raises(OpenUniError, match="smaller than one 14-pixel patch"):
        load_image(path)
    with pytest.raises(OpenUniError, match="smaller than one 16-pixel patch"):
        load_image(PIL.Image.new("RGB", (15, 40)), min_side=16)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    wide = PIL.Image.new("RGB", (40, 20), (0, 0, 0))
    wide.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    wide.save(path, exif=exif, quality=100)
    upright = load_image(path)
    assert upright.size == (20, 40)
    pixels = np.asarray(upright).mean(axis=2)
    assert pixels[:20].mean() > 200 and pixels[20:].mean() < 50  # the white half is now on top


def test_size_like_keeps_aspect_in_multiples():
    assert size_like((512, 512), 512, 32) == (512, 512)
    height, width = size_like((4000, 3000), 512, 32)
    assert height % 32 == 0 and width % 32 == 0
    assert abs(width / height - 4 / 3) < 0.1 and abs(width * height - 512 * 512) / 512**2 < 0.1
    assert size_like((10000, 10), 64, 32) == (32, 128)  # the ratio is capped at 4:1
    assert size_like((10, 10000), 32, 32) == (64, 32)  # and never below one multiple


def test_opened_but_truncated_pil_image(tmp_path):
    """A PIL image handed over by a caller may still hold undecoded, damaged pixel data."""
    path = tmp_path / "cut.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OpenUniError, match="corrupt or truncated"):
        load_image(PIL.Image.open(path))
