"""What an output image was made from, written into the image itself (a PNG text chunk under `RECORD_KEY`) and into
the run's index: one writer and one reader for `generate`, `edit` and the benchmark runs.

A generation record holds everything that fixes the image (README "Reproducibility"): the prompt (and the rewritten
one, where `--rewrite` made it), the negative prompt, the seed, steps, guidance, size, the model's identity and the
package version. `openuni generate --from-image` reads it back to make the image again.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

RECORD_KEY = "openuni"
UNREADABLE = "unreadable"
# The fields that fix a generated image; a record holding them all can be generated again.
GENERATION_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "height", "width", "model")


@functools.cache
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openuni")
    except PackageNotFoundError:  # (run from a source tree that was never installed)
        return "unknown"


def record_text(record: dict) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def record_chunks(record: dict) -> dict[str, str]:
    """The PNG text chunks that carry `record` (see `files.save_image_atomically`)."""
    return {RECORD_KEY: record_text(record)}


def read_record(path: Path) -> dict | str | None:
    """The image's record; None when it has none, `UNREADABLE` when not even its header reads (a torn write). Only
    the header is read."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            text = image.info.get(RECORD_KEY)
    except (OSError, SyntaxError, ValueError):
        return UNREADABLE
    try:
        record = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def generation_record(prompt: str, sampling, height: int, width: int, model: dict, **extra) -> dict:
    """The record of one image made with `sampling` (`SamplingOptions`; its seed is this image's own)."""
    record = {"prompt": prompt, "negative_prompt": sampling.negative_prompt, "seed": sampling.seed,
              "steps": sampling.steps, "cfg_scale": sampling.cfg_scale, "height": height, "width": width,
              "model": model, "openuni_version": package_version(), **extra}
    # The opt-in fast sampling changes the image too; recorded only when used (plain records stay as they were).
    if sampling.guidance_interval is not None:
        record["guidance_interval"] = list(sampling.guidance_interval)
    if sampling.step_cache is not None:
        record["step_cache"] = sampling.step_cache
    return record
