"""Reading back the images a benchmark run wrote: finished ones decode completely, damaged ones say what to do."""

from __future__ import annotations

from pathlib import Path

import PIL.Image

from ..errors import OpenUniError


def is_complete_image(path: Path) -> bool:
    try:
        with PIL.Image.open(path) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):  # missing, truncated or not an image at all
        return False


def read_output_image(path: Path) -> PIL.Image.Image:
    """An output image as RGB for scoring; a damaged one (an interrupted run) is an error that says what to do."""
    from ..images import load_image

    try:
        return load_image(path, min_side=1)
    except OpenUniError as error:
        raise OpenUniError(f"{error}: run the same `openuni eval` generation again (it redoes damaged images), "
                           "then score") from None
