"""Reading back the images a benchmark run wrote: finished ones decode completely, damaged ones say what to do, and
each says what it was made from (its provenance: the prompt's hash and the run's settings, in a PNG text chunk)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import PIL.Image

from ..errors import OpenUniError
from ..records import RECORD_KEY, UNREADABLE, read_record, record_text

PROVENANCE_KEY = RECORD_KEY
read_provenance = read_record  # (an image's header only; None without a record, UNREADABLE when torn)


def provenance(prompt_text: str, settings: dict, rewritten_prompt: str | None = None) -> str:
    """The record an output image carries: which prompt (its SHA-256) and which settings made it, and with
    `--rewrite` the prompt the MLLM made of it (what conditioned the image)."""
    digest = hashlib.sha256(prompt_text.encode("utf-8")).hexdigest()
    record = {"prompt_sha256": digest, "settings": settings}
    if rewritten_prompt is not None:
        record["rewritten_prompt"] = rewritten_prompt
    return record_text(record)


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
