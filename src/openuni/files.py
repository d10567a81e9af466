"""Writing outputs so that an interruption or a failure never leaves a half-written file under the final name.

Everything is written to a hidden `.<name>.partial` beside the target and renamed over it (atomic on one file
system); a failed write removes its partial file and leaves an existing target as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(partial_path)` then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_bytes_atomically(path: Path, data: bytes) -> None:
    write_atomically(path, lambda partial: partial.write_bytes(data))


def save_image_atomically(image, path: Path) -> None:
    """A PIL image, in the format its suffix names (PNG when it has none)."""
    image_format = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    write_atomically(path, lambda partial: image.save(partial, format=image_format))
