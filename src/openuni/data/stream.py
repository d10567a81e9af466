"""The per-rank sample stream: which sample each process sees at each step, fixed by (seed, step) alone.

Global sample `g` of step `s` is `s * G + a * (W * B) + r * B + j` for accumulation micro-step `a`, rank `r` of
`W` and position `j` of the per-device batch `B` (G = the global batch). Everything random about a sample (its
source, its item, its crop, caption dropout, noise and timestep) is drawn from generators seeded by `(seed, g)`,
so one process with batch 2B and two processes with batch B see the same samples, and a resumed run sees exactly
what the uninterrupted one would have from its step on.

Sources of different tasks (text-to-image, image-to-image) are mixed step by step: each optimisation step draws one
task from `(seed, s)`, with probability the task's share of the ratios, and all of that step's samples come from
that task's sources. So every micro-batch holds one task, as with the reference's one-source-per-batch sampler,
whatever the batch size, accumulation or process count.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import OpenUniError
from .images import BadSample, crop_to, resize_to, to_pixels
from .sources import TEXT_TO_IMAGE, WebDatasetShards

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_BAD = 16


def sample_seed(seed: int, index: int, purpose: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{index}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sample_rng(seed: int, index: int, purpose: str) -> random.Random:
    return random.Random(sample_seed(seed, index, purpose))


def sample_generator(seed: int, index: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, index, purpose))


@dataclass(frozen=True)
class StreamLayout:
    seed: int
    per_device_batch: int
    grad_accum: int = 1
    rank: int = 0
    world_size: int = 1

    @property
    def global_batch(self) -> int:
        return self.per_device_batch * self.grad_accum * self.world_size

    def rank_indices(self, start_step: int):
        """This rank's global sample indices from `start_step` on, in the order it trains on them."""
        b, w = self.per_device_batch, self.world_size
        for step in itertools.count(start_step):
            for micro in range(self.grad_accum):
                base = step * self.global_batch + micro * w * b + self.rank * b
                yield from range(base, base + b)


def cumulative_shares(weights: list[float]) -> list[float]:
    total = float(sum(weights))
    return list(itertools.accumulate(w / total for w in weights))


def pick(edges: list[float], draw: float) -> int:
    return next((j for j, edge in enumerate(edges) if draw < edge), len(edges) - 1)


class SampleStream(IterableDataset):
    """Samples for one rank from `start_step` on; `sources` are (reader, ratio) pairs mixed by the ratios.

    Yields dicts with `index`, `task`, `caption` (text-to-image) or `instruction` and `source_pixels` or
    `source_features` (image-to-image), `pixels` [3, H, W] in [-1, 1] or `latents` (the target), and `skipped`
    (unusable samples passed over to find this one). Works with DataLoader workers (`batch_size=None`): worker k of
    K takes every K-th sample, and the loader's round-robin restores the order.
    """

    def __init__(self, sources: list, ratios: list[float], layout: StreamLayout, start_step: int = 0,
                 resolution: int = 512, buckets: list[tuple[int, int]] | None = None):
        if len(sources) != len(ratios) or not sources:
            raise OpenUniError("give at least one data source, each with a ratio")
        if any(r <= 0 for r in ratios):
            raise OpenUniError(f"data ratios must be positive, got {ratios}")
        self.sources, self.layout, self.start_step = sources, layout, start_step
        tasks = list(dict.fromkeys(getattr(s, "task", TEXT_TO_IMAGE) for s in sources))
        self.task_sources = [[j for j, s in enumerate(sources) if getattr(s, "task", TEXT_TO_IMAGE) == task]
                             for task in tasks]
        self.task_edges = cumulative_shares([sum(ratios[j] for j in members) for members in self.task_sources])
        self.source_edges = [cumulative_shares([ratios[j] for j in members]) for members in self.task_sources]
        self.resolution, self.buckets = resolution, buckets
        self._permutations: dict[int, tuple[int, np.ndarray]] = {}  # source -> (epoch, item order)
        self._known_bad: set[tuple[int, int]] = set()  # logged once, counted every time they are passed over

    def choose_task(self, index: int) -> int:
        """The task of the step sample `index` belongs to (an index into `task_sources`)."""
        if len(self.task_sources) == 1:
            return 0
        draw = sample_rng(self.layout.seed, index // self.layout.global_batch, "task").random()
        return pick(self.task_edges, draw)

    def choose_source(self, index: int) -> int:
        task = self.choose_task(index)
        members = self.task_sources[task]
        if len(members) == 1:
            return members[0]
        draw = sample_rng(self.layout.seed, index, "source").random()
        return members[pick(self.source_edges[task], draw)]

    def target_size(self, index: int) -> tuple[int, int]:
        """(height, width): square, or the aspect bucket drawn for this sample's micro-batch (all its samples share it)."""
        if not self.buckets:
            return self.resolution, self.resolution
        micro_batch = index // self.layout.per_device_batch
        return self.buckets[sample_rng(self.layout.seed, micro_batch, "bucket").randrange(len(self.buckets))]

    def finish(self, sample: dict, index: int) -> dict:
        """Images to training pixels: `pixels` (the target) and, for image-to-image, `source_pixels`."""
        sample.setdefault("task", TEXT_TO_IMAGE)
        height, width = self.target_size(index)
        crop_rng = sample_rng(self.layout.seed, index, "crop")
        if "image" in sample:  # text-to-image: a random crop, resized
            sample["pixels"] = to_pixels(crop_to(sample.pop("image"), height, width, crop_rng))
        elif "target" in sample:  # an edit pair: both resized to the training size, not cropped (ImageEditDataset)
            sample["source_pixels"] = to_pixels(resize_to(sample.pop("source"), height, width))
            sample["pixels"] = to_pixels(resize_to(sample.pop("target"), height, width))
        elif "source" in sample:  # reconstruction: one random crop is the source and the target (ReconstructDataset)
            crop = crop_to(sample.pop("source"), height, width, crop_rng)
            sample["pixels"] = sample["source_pixels"] = to_pixels(crop)
        sample["index"] = index
        return sample

    # -- random-access sources ------------------------------------------------------------------------------------

    def item_order(self, source: int, epoch: int) -> np.ndarray:
        """The shuffled item order of one source in one epoch, the current epoch of each source kept (mixed sources
        alternate sample by sample; a permutation of millions of items is too slow to redo at each switch)."""
        cached_epoch, order = self._permutations.get(source, (None, None))
        if cached_epoch != epoch:
            order = np.random.default_rng([self.layout.seed, source, epoch]).permutation(len(self.sources[source]))
            self._permutations[source] = (epoch, order)
        return order

    def read_indexed(self, source: int, index: int) -> tuple[dict, int]:
        size = len(self.sources[source])
        for attempt in range(MAX_CONSECUTIVE_BAD):
            position = index + attempt
            item = int(self.item_order(source, position // size)[position % size])
            if (source, item) in self._known_bad:
                continue
            try:
                return self.sources[source][item], attempt
            except BadSample as error:
                self._known_bad.add((source, item))
                logger.warning("skipping an unusable sample: %s", error)
        raise OpenUniError(f"{MAX_CONSECUTIVE_BAD} unusable samples in a row in data source {source}: check its paths")

    # -- streamed sources -------------------------------------------------------------------------------------------

    def open_stream(self, source: WebDatasetShards, part: int, parts: int, records_to_skip: int):
        """Endless records of this rank/worker's share of the shards, after `records_to_skip` already trained on."""
        shards = source.shards
        by_shard = len(shards) >= parts
        mine = shards[part::parts] if by_shard else shards

        def records():
            for epoch in itertools.count():
                order = list(mine)
                random.Random(sample_seed(self.layout.seed, epoch, "shards")).shuffle(order)
                found = False
                for position, record in enumerate(source.records(order)):
                    if by_shard or position % parts == part:
                        found = True
                        yield record
                if not found:  # another pass would find nothing either: stop instead of looping for ever
                    raise OpenUniError(f"no readable record for reader {part} of {parts} in the WebDataset shards "
                                       f"{order[0]}...: the shards are unreadable or hold fewer records than readers")

        stream = records()
        for _ in itertools.islice(stream, records_to_skip):  # now, so that what breaks here is not counted again
            pass
        return stream

    def read_streamed(self, stream, source: WebDatasetShards) -> tuple[dict, int]:
        """The next usable sample, and how many were passed over: bad samples and broken tar members alike."""
        skipped, broken_before = 0, source.broken_records
        for record in stream:
            try:
                return source.sample(record), skipped + source.broken_records - broken_before
            except BadSample as error:
                skipped += 1
                logger.warning("skipping an unusable sample: %s", error)
                if skipped >= MAX_CONSECUTIVE_BAD:
                    break
        raise OpenUniError(f"no usable sample in {MAX_CONSECUTIVE_BAD} records of {source.shards[0]}...: check the shards")

    # -- iteration ------------------------------------------------------------------------------------------------

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        part, parts = self.layout.rank * workers + worker, self.layout.world_size * workers

        def mine(indices):
            return (g for position, g in enumerate(indices) if position % workers == worker)

        streams = {}
        streamed = [j for j, s in enumerate(self.sources) if isinstance(s, WebDatasetShards)]
        if streamed:
            # Records this worker already consumed before `start_step` (exact unless unusable ones were skipped then).
            done = itertools.islice(mine(self.layout.rank_indices(0)), self._positions_before_start(workers, worker))
            consumed = dict.fromkeys(streamed, 0)
            for g in done:
                j = self.choose_source(g)
                if j in consumed:
                    consumed[j] += 1
            streams = {j: self.open_stream(self.sources[j], part, parts, consumed[j]) for j in streamed}

        for g in mine(self.layout.rank_indices(self.start_step)):
            j = self.choose_source(g)
            if j in streams:
                sample, skipped = self.read_streamed(streams[j], self.sources[j])
            else:
                sample, skipped = self.read_indexed(j, g)
            sample = self.finish(dict(sample), g)
            sample["skipped"] = skipped
            yield sample

    def _positions_before_start(self, workers: int, worker: int) -> int:
        per_rank = self.start_step * self.layout.per_device_batch * self.layout.grad_accum
        return len(range(worker, per_rank, workers))
