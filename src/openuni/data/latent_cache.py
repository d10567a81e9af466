"""Writing latent shards: each one complete or absent, so an interrupted extraction resumes where it stopped.

Shard `i` covers items `[i * S, (i + 1) * S)` of a JSON-indexed dataset, or input tar `i` of a WebDataset; process
`r` of `W` writes the shards `i = r (mod W)`. A shard is written as `.shard-XXXXXX.safetensors.partial` and renamed
into place, and an intact shard is never redone: no duplicates. A shard that is torn all the same (a copy cut
short, a crash before the disk had it) is found by its header (`shard_problem`) and redone on resume, and refused
when training starts. A shard whose input gave no usable sample is not written at all: an empty shard would count
as done on a corrected rerun. Each shard records the resolution its latents were made at.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import OpenUniError
from ..files import write_atomically, write_text_atomically
from .images import BadSample, crop_to, to_pixels
from .sources import JsonImageFolder, WebDatasetShards, check_shard, shard_problem

logger = logging.getLogger(__name__)


SETTINGS_FILE = "extraction.json"


def check_settings(output: Path, settings: dict) -> None:
    """The shards of one folder must come from one plan: resuming with another shard size, resolution or data set
    would duplicate samples or mix latent sizes. Later runs must match what the first one recorded."""
    path = Path(output) / SETTINGS_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise OpenUniError(f"{path} is unreadable ({error}): delete it only if every shard there is from this run")
        recorded = recorded if isinstance(recorded, dict) else {}
        differing = [f"{key} {recorded.get(key)} (now {value})" for key, value in settings.items() if recorded.get(key) != value]
        if differing:
            raise OpenUniError(f"{output} holds shards extracted with other settings: {', '.join(differing)}; "
                               "rerun with those settings or use another --output")


def record_settings(output: Path, settings: dict) -> None:
    """Written once the work starts (the VAE loaded): a run that failed before must not lock the folder."""
    path = Path(output) / SETTINGS_FILE
    if not path.is_file():
        write_text_atomically(path, json.dumps(settings, indent=1))


def shard_resolution(path: Path) -> int | None:
    with safe_open(path, framework="pt") as reader:
        value = (reader.metadata() or {}).get("resolution")
    return int(value) if value and value.isdigit() else None


def check_latent_folder(folder: Path, resolution: int) -> None:
    """Before training: every shard whole, and made at the run's resolution (per shard, or as `extraction.json`
    records it for shards written before shards recorded it)."""
    settings_file = folder / SETTINGS_FILE
    recorded = None
    if settings_file.is_file():
        try:
            recorded = json.loads(settings_file.read_text(encoding="utf-8")).get("resolution")
        except (OSError, ValueError, AttributeError):
            recorded = None
    for shard in sorted(folder.glob("shard-*.safetensors")):
        check_shard(shard)
        made_at = shard_resolution(shard) or recorded
        if made_at is not None and made_at != resolution:
            raise OpenUniError(f"{shard} holds latents of {made_at} px images, this run trains at resolution "
                               f"{resolution}: extract latents at {resolution} (or set resolution={made_at})")


def shard_path(output: Path, shard: int) -> Path:
    return output / f"shard-{shard:06d}.safetensors"


def write_shard(path: Path, latents: list[torch.Tensor], captions: list[str], keys: list[str], skipped: int,
                resolution: int | None = None) -> None:
    tensors = {f"latents.{i}": l.contiguous() for i, l in enumerate(latents)}
    metadata = {"captions": json.dumps(captions), "keys": json.dumps(keys), "skipped": str(skipped)}
    if resolution is not None:
        metadata["resolution"] = str(resolution)
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
        self.empty: list[str] = []  # why each shard without a usable sample was not written

    def pending(self) -> list[int]:
        """This process's shards still to write: absent ones, and present ones that are torn (they are redone)."""
        todo = []
        for shard in self.mine:
            path = shard_path(self.output, shard)
            problem = shard_problem(path) if path.exists() else "absent"
            if problem and problem != "absent":
                logger.warning("latent shard %s is damaged (%s): extracting it again", path, problem)
            if problem:
                todo.append(shard)
        return todo

    def encode_samples(self, samples: list[dict]) -> list[tuple]:
        """(latents, caption, key) of each sample of a batch."""
        pixels = torch.stack([to_pixels(crop_to(s["image"], self.resolution, self.resolution)) for s in samples])
        with torch.no_grad():
            latents = self.encode(pixels).float().cpu()
        return [(l, s["caption"], s["key"]) for l, s in zip(latents, samples)]

    def write(self, path: Path, encoded: list[tuple], skipped: int) -> None:
        latents, captions, keys = zip(*encoded)
        write_shard(path, list(latents), list(captions), list(keys), skipped, self.resolution)

    def extract_shard(self, shard: int, on_sample=lambda: None) -> int:
        """Encode one shard's usable samples `batch_size` at a time and write it whole; returns its sample count.
        Only the encoded tensors and texts are held until the write, never the images."""
        encoded, pending, skipped = [], [], 0
        for sample in shard_samples(self.source, self.plan[shard]):
            on_sample()
            if isinstance(sample, BadSample):
                skipped += 1
                logger.warning("skipping an unusable sample: %s", sample)
                continue
            pending.append(sample)
            if len(pending) == self.batch_size:
                encoded.extend(self.encode_samples(pending))
                pending = []
        if pending:
            encoded.extend(self.encode_samples(pending))
        self.skipped += skipped
        if not encoded:  # an empty shard file would count as done on a corrected rerun
            self.empty.append(self.why_empty(shard, skipped))
            return 0
        self.output.mkdir(parents=True, exist_ok=True)
        self.write(shard_path(self.output, shard), encoded, skipped)
        return len(encoded)

    def why_empty(self, shard: int, skipped: int) -> str:
        part = self.plan[shard]
        what = part[0] if isinstance(self.source, WebDatasetShards) else f"items {part.start}-{part.stop - 1}"
        if skipped:
            return f"shard {shard} ({what}): all {skipped} samples unusable"
        return f"shard {shard} ({what}): no samples read (is it a WebDataset .tar of images with captions?)"
