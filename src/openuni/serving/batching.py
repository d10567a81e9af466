"""Cross-request batching: one worker thread owns the model and runs, in turn, chat answers and image batches.

Image requests wait in one bounded queue. The worker takes the oldest request and every later one that shares
what a batch must share (task, size, steps, guidance, negative prompt: `ImageJob.group_key`), up to
`max_batch_images` images, and runs them as ONE pipeline call with one seed per prompt. The pipeline gives image k
of a prompt the noise of seed + k whatever else is in its batch, so each request gets its own images (within float
rounding, see `pipeline_arguments`). The oldest request waits at most `max_wait` for company, and not at all once
its batch is full or the worker was busy long enough for others to arrive.

Chat requests have their own lane, served before the next image batch: a chat waits behind at most the one image
batch already running. Work whose client went away or whose deadline passed is dropped from the queue; a running
batch stops at its next denoising step once none of its requests is still wanted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace

import PIL.Image

from ..sampling import SamplingOptions
from .metrics import ServerMetrics

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    def __init__(self, lane: str, retry_after: int):
        super().__init__(f"the {lane} queue is full")
        self.lane, self.retry_after = lane, retry_after


class WorkDropped(Exception):
    """The job was dropped before it finished (its client left, or its deadline passed)."""


@dataclass(eq=False, kw_only=True)
class Job:
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)  # set: nobody waits for this work any more
    drop_reason: str | None = None

    def finish(self, result=None, error: BaseException | None = None) -> None:
        try:
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)
        except InvalidStateError:  # the waiting side cancelled its future already
            pass


@dataclass(eq=False, kw_only=True)
class ImageJob(Job):
    task: str  # "generate" or "edit"
    prompt: str
    options: SamplingOptions  # checked, with height and width resolved
    source: PIL.Image.Image | None = None  # the image to edit
    revised_prompt: str | None = None  # the MLLM's rewrite of `prompt` (server started with --rewrite)

    @property
    def conditioning_prompt(self) -> str:
        """What the image is generated from: the rewrite where there is one."""
        return self.revised_prompt or self.prompt

    @property
    def images(self) -> int:
        return self.options.num_images

    @property
    def group_key(self) -> tuple:
        """What every request of one pipeline call must share: all settings but the seed and the image count."""
        return self.task, replace(self.options, seed=0, num_images=1)


@dataclass(eq=False, kw_only=True)
class ChatJob(Job):
    request: dict  # `InternVLChat.request(...)`: checked model inputs and generation settings
    seed: int | None = None
    emit: Callable[[str], None] = lambda piece: None  # receives the answer piece by piece (from the worker thread)


def pipeline_arguments(jobs: list[ImageJob]) -> dict:
    """The one translation of a group's request settings into `OpenUniPipeline.__call__` arguments.

    Requests asking for the same number of images keep it as `num_images_per_prompt` (one MLLM pass per prompt);
    otherwise request r's image k becomes a prompt of its own with seed s_r + k, which starts from the same noise.
    """
    counts = {job.images for job in jobs}
    if len(counts) == 1:
        prompts, seeds, sources, per_prompt = ([job.conditioning_prompt for job in jobs],
                                               [job.options.seed for job in jobs],
                                               [job.source for job in jobs], counts.pop())
    else:
        expanded = [(job, k) for job in jobs for k in range(job.images)]
        prompts, seeds, sources, per_prompt = ([job.conditioning_prompt for job, _ in expanded],
                                               [job.options.seed + k for job, k in expanded],
                                               [job.source for job, _ in expanded], 1)
    kwargs = dict(jobs[0].options.pipeline_kwargs(), prompt=prompts, seed=seeds, num_images_per_prompt=per_prompt)
    if jobs[0].task == "edit":
        kwargs["image"] = sources
    return kwargs


class Batcher:
    """The queues and the worker thread. `run_batch(jobs, should_stop)` returns each job's images;
    `run_chat(job)` returns the job's result. Both run on the worker thread only."""

    def __init__(self, run_batch: Callable, run_chat: Callable, metrics: ServerMetrics, max_wait_ms: float,
                 max_batch_images: int, max_queue: int):
        self.run_batch, self.run_chat, self.metrics = run_batch, run_chat, metrics
        self.max_wait = max_wait_ms / 1000
        self.max_batch_images, self.max_queue = max_batch_images, max_queue
        self._images: deque[ImageJob] = deque()
        self._chats: deque[ChatJob] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._seconds_per_image = 1.0  # a running estimate, for Retry-After
        self._seconds_per_chat = 1.0
        self._thread = threading.Thread(target=self._work, name="openuni-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Finish the running batch, fail what still waits, stop the worker."""
        with self._wake:
            self._closed = True
            waiting = [*self._images, *self._chats]
            self._images.clear()
            self._chats.clear()
            self._wake.notify_all()
        for job in waiting:
            job.finish(error=WorkDropped("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join()

    # -- the request side (any thread) ------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise `QueueFull` with a Retry-After estimate in seconds."""
        with self._wake:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            job.enqueued = time.monotonic()  # the deadline and the batching window count from here
            if isinstance(job, ChatJob):
                if len(self._chats) >= self.max_queue:
                    raise QueueFull("chat", self._retry_after(len(self._chats) * self._seconds_per_chat))
                self._chats.append(job)
            else:
                if self._queued_images() + job.images > self.max_queue:
                    raise QueueFull("image", self._retry_after(self._queued_images() * self._seconds_per_image))
                self._images.append(job)
            self._update_gauges()
            self._wake.notify_all()

    def cancel(self, job: Job, reason: str) -> None:
        """Nobody waits for `job` any more: drop it if it is queued, stop its batch if all of that batch left."""
        with self._wake:
            if job.drop_reason is None:
                job.drop_reason = reason
            job.stop.set()
            self._wake.notify_all()

    @staticmethod
    def _retry_after(seconds: float) -> int:
        return max(1, min(600, math.ceil(seconds)))

    def _queued_images(self) -> int:
        return sum(job.images for job in self._images)

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.labels("images").set(len(self._images))
        self.metrics.queue_depth.labels("chat").set(len(self._chats))
        self.metrics.queued_images.set(self._queued_images())

    # -- the worker thread ------------------------------------------------------------------------------------

    def _work(self) -> None:
        while (work := self._next()) is not None:
            if isinstance(work, ChatJob):
                self._serve_chat(work)
            else:
                self._serve_batch(work)

    def _next(self) -> ChatJob | list[ImageJob] | None:
        """The next chat, else the oldest request's batch once it is full or its window has passed."""
        with self._wake:
            while True:
                self._drop_abandoned()
                if self._closed:
                    return None
                if self._chats:
                    return self._chats.popleft()
                if not self._images:
                    self._wake.wait()
                    continue
                oldest = self._images[0]
                same = [job for job in self._images if job.group_key == oldest.group_key]
                waited = time.monotonic() - oldest.enqueued
                if sum(job.images for job in same) >= self.max_batch_images or waited >= self.max_wait:
                    return self._take(same)
                self._wake.wait(self.max_wait - waited)

    def _take(self, candidates: list[ImageJob]) -> list[ImageJob]:
        """The oldest requests among `candidates` that fit one batch, removed from the queue."""
        group, images = [], 0
        for job in candidates:
            if images + job.images <= self.max_batch_images:
                group.append(job)
                images += job.images
        for job in group:
            self._images.remove(job)
        self._update_gauges()
        return group

    def _drop_abandoned(self) -> None:
        for lane in (self._images, self._chats):
            for job in [job for job in lane if job.stop.is_set()]:
                lane.remove(job)
                self._dropped(job)
        self._update_gauges()

    def _dropped(self, job: Job) -> None:
        self.metrics.dropped.labels(job.drop_reason or "disconnected").inc()
        job.finish(error=WorkDropped(job.drop_reason or "disconnected"))

    def _serve_batch(self, group: list[ImageJob]) -> None:
        start = time.monotonic()
        for job in group:
            self.metrics.stage_seconds.labels("queue").observe(start - job.enqueued)
        try:
            images = self.run_batch(group, lambda: all(job.stop.is_set() for job in group))
        except WorkDropped:
            for job in group:
                self._dropped(job)
            return
        except Exception as error:
            if len(group) == 1:
                group[0].finish(error=error)
                return
            # One request must not fail the others: each runs alone, and only the faulty one fails.
            logger.warning("a batch of %d requests failed (%s); running them one by one", len(group), error)
            for job in group:
                self._serve_batch([job])
            return
        total = sum(job.images for job in group)
        self._seconds_per_image = 0.7 * self._seconds_per_image + 0.3 * (time.monotonic() - start) / total
        for job, own in zip(group, images):
            job.finish(own)

    def _serve_chat(self, job: ChatJob) -> None:
        start = time.monotonic()
        self.metrics.stage_seconds.labels("queue").observe(start - job.enqueued)
        try:
            result = self.run_chat(job)
        except Exception as error:
            job.finish(error=error)
            return
        self._seconds_per_chat = 0.7 * self._seconds_per_chat + 0.3 * (time.monotonic() - start)
        job.finish(result)
