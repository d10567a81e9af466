"""The reader of one configured data source, by what it trains (`task`) and how it is laid out (`kind`)."""

from __future__ import annotations

from ..errors import OpenUniError
from . import edit_sources
from .sources import CachedLatents, JsonImageFolder, WebDatasetShards

READERS = {
    "text2image": dict(json=JsonImageFolder, latents=CachedLatents, webdataset=WebDatasetShards),
    **edit_sources.READERS,
}


def open_source(kind: str, path: str, task: str = "text2image", **options):
    """The reader for one configured data source: `kind` is its layout (json, webdataset, latents), `task` what it
    trains (text2image, edit pairs, or reconstruction of its images)."""
    if task not in READERS:
        raise OpenUniError(f"unknown task {task!r}; use text2image, edit or reconstruct")
    if kind not in READERS[task]:
        raise OpenUniError(f"unknown data source kind {kind!r}; use json, webdataset or latents")
    return READERS[task][kind](path, **options)
