"""Writing latent shards: each one complete or absent, so an interrupted extraction resumes where it stopped.

Shard `i` covers items `[i * S, (i + 1) * S)` of a JSON-indexed dataset, or input tar `i` of a WebDataset; process
`r` of `W` writes the shards `i = r (mod W)`. A shard is written as `.shard-XXXXXX.safetensors.partial` and renamed into place,
and a present shard is never redone: no duplicates, no torn files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import OpenUniError
from ..files import write_atomically, write_text_atomically
from .images import BadSample, crop_to, to_pixels
from .sources import JsonImageFolder, WebDatasetShards

logger = logging.getLogger(__name__)


SETTINGS_FILE = "extraction.json"


def check_settings(output: Path, settings: dict, record: bool) -> None:
    """The shards of one folder must come from one plan: resuming with another shard size, resolution or data set
    would duplicate samples or mix latent sizes. The first run records its settings; later runs must match them."""
    path = Path(output) / SETTINGS_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise OpenUniError(f"{path} is unreadable ({error}): delete it only if every shard there is from this run")
        differing = [f"{key} {recorded.get(key)} (now {value})" for key, value in settings.items() if recorded.get(key) != value]
        if differing:
            raise OpenUniError(f"{output} holds shards extracted with other settings: {', '.join(differing)}; "
                               "rerun with those settings or use another --output")
    elif record:
        write_text_atomically(path, json.dumps(settings, indent=1))


def shard_path(output: Path, shard: int) -> Path:
    return output / f"shard-{shard:06d}.safetensors"


def write_shard(path: Path, latents: list[torch.Tensor], captions: list[str], keys: list[str], skipped: int) -> None:
    tensors = {f"latents.{i}": l.contiguous() for i, l in enumerate(latents)}
    metadata = {"captions": json.dumps(captions), "keys": json.dumps(keys), "skipped": str(skipped)}
    write_atomically(path, lambda partial: save_file(tensors, partial, metadata=metadata))


def shard_plan(source, shard_size: int) -> list:
    """What each shard reads: item ranges of an indexed dataset, one input tar each for WebDataset."""
    if isinstance(source, WebDatasetShards):
        return [[url] for url in source.shards]
    return [range(start, min(start + shard_size, len(source))) for start in range(0, len(source), shard_size)]


def shard_samples(source, part):
    """(sample or BadSample) for each item of one shard's part."""
    if isinstance(source, JsonImageFolder):
        for index in part:
            try:
                yield source[index]
            except BadSample as error:
                yield error
    else:
        for record in source.records(part):
            try:
                yield source.sample(record)
            except BadSample as error:
                yield error


class LatentExtractor:
    def __init__(self, source, output: Path, encode, resolution: int, batch_size: int, shard_size: int,
                 rank: int = 0, world_size: int = 1):
        self.source, self.output, self.encode = source, Path(output), encode
        self.resolution, self.batch_size = resolution, batch_size
        self.plan = shard_plan(source, shard_size)
        self.mine = [i for i in range(len(self.plan)) if i % world_size == rank]
        self.skipped = 0

    def pending(self) -> list[int]:
        return [i for i in self.mine if not shard_path(self.output, i).exists()]

    def encode_batch(self, images) -> list[torch.Tensor]:
        pixels = torch.stack([to_pixels(crop_to(image, self.resolution, self.resolution)) for image in images])
        with torch.no_grad():
            return list(self.encode(pixels).float().cpu())

    def extract_shard(self, shard: int, on_sample=lambda: None) -> int:
        latents, captions, keys, pending, skipped = [], [], [], [], 0

        def encode_pending():
            latents.extend(self.encode_batch([s["image"] for s in pending]))
            captions.extend(s["caption"] for s in pending)
            keys.extend(s["key"] for s in pending)
            pending.clear()

        for sample in shard_samples(self.source, self.plan[shard]):
            on_sample()
            if isinstance(sample, BadSample):
                skipped += 1
                logger.warning("skipping an unusable sample: %s", sample)
                continue
            pending.append(sample)
            if len(pending) == self.batch_size:
                encode_pending()
        if pending:
            encode_pending()
        self.output.mkdir(parents=True, exist_ok=True)
        write_shard(shard_path(self.output, shard), latents, captions, keys, skipped)
        self.skipped += skipped
        return len(latents)
