"""One loaded model behind the API: requests checked into jobs (before any model work), jobs run by the batcher.

Every bound of `ServerConfig` is checked here, on the request's own thread, so the worker thread only ever sees
work it can do; what slips through anyway (a pipeline `OpenUniError`) fails that one request with a 400.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import PIL.Image
import torch
from transformers import StoppingCriteriaList, TextStreamer

from ..chat import InternVLChat, StopWhenSet
from ..errors import OpenUniError
from ..images import load_image_bytes
from ..prompting import IMG_CONTEXT, IMG_END, IMG_START, edit_prompt, generation_prompt
from ..sampling import SamplingOptions
from .batching import Batcher, ChatJob, ImageJob, WorkDropped, pipeline_arguments
from .chat_messages import conversation_from_messages
from .config import ServerConfig
from .metrics import ServerMetrics
from .protocol import ApiError, ChatCompletionRequest, ImageRequest, bad_request

logger = logging.getLogger(__name__)

DEFAULT_CHAT_TOKENS = 512
MAX_GUIDANCE = 20.0
SEED_LIMIT = 2**63 - 1


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class OpenUniService:
    """`pipe` ready, or `load()` called on a thread of its own at `start()` (the server answers /health with 503
    meanwhile). `on_load_failure(error)` is told when loading fails."""

    def __init__(self, config: ServerConfig, pipe=None, load: Callable | None = None):
        self.config = config.check()
        self.metrics = ServerMetrics()
        self.pipe, self.chat = None, None
        self._load = load
        self.load_error: BaseException | None = None
        self.batcher = Batcher(self._run_batch, self._run_chat, self.metrics, config.max_wait_ms,
                               config.max_batch_images, config.max_queue)
        if pipe is not None:
            self._use(pipe)

    def start(self, on_load_failure: Callable[[BaseException], None] | None = None) -> None:
        self.batcher.start()
        if self.pipe is None and self._load is not None:
            threading.Thread(target=self._load_now, args=(on_load_failure,), name="openuni-load", daemon=True).start()

    def close(self) -> None:
        self.batcher.close()

    @property
    def ready(self) -> bool:
        return self.pipe is not None

    def _load_now(self, on_load_failure) -> None:
        try:
            self._use(self._load())
        except BaseException as error:  # reported to the command, which ends the server with one line
            self.load_error = error
            logger.error("loading the model failed: %s", error)
            if on_load_failure is not None:
                on_load_failure(error)

    def _use(self, pipe) -> None:
        pipe.set_progress_bar_config(disable=True)
        self.chat = InternVLChat(pipe.mllm, pipe.tokenizer)  # the worker thread's
        # A fast tokenizer is not safe across threads: every call sets (or clears) padding on the one Rust object,
        # so the pipeline's padded batch on the worker and an unpadded count on a request thread corrupt each
        # other. Request threads get a copy of their own that only ever tokenizes unpadded.
        tokenizer = copy.deepcopy(pipe.tokenizer)
        tokenizer("", add_special_tokens=False)  # clears any padding state the copy inherited, before threads share it
        self.request_chat = InternVLChat(pipe.mllm, tokenizer)
        self.pipe = pipe  # last: from here on the service is ready

    # -- requests -> jobs (request threads) -------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.model_name:
            raise ApiError(404, f"the model {model!r} does not exist on this server; it serves "
                                f"{self.config.model_name!r}", param="model", code="model_not_found")

    def image_job(self, task: str, body: ImageRequest, upload: bytes | None = None) -> ImageJob:
        self.check_model(body.model)
        if body.response_format == "url":
            raise bad_request("response_format 'url' is not supported: this server returns images inline; use "
                              "'b64_json'", param="response_format")
        source = self.read_upload(upload) if task == "edit" else None
        prompt = self.checked_prompt(body.prompt, "prompt", task)
        negative = None  # empty: the pipeline's default unconditional prompt
        if body.negative_prompt is not None and body.negative_prompt.strip():
            negative = self.checked_prompt(body.negative_prompt, "negative_prompt", task)
        height, width = self.image_size(body.size, source)
        return ImageJob(task=task, prompt=prompt, options=self.sampling_options(body, negative, height, width),
                        source=source)

    def checked_prompt(self, text: str, param: str, task: str) -> str:
        if not text.strip():
            raise bad_request(f"{param} is empty", param=param)
        if task == "edit" and any(marker in text for marker in (IMG_START, IMG_END, IMG_CONTEXT)):
            raise bad_request(f"{param} cannot contain {IMG_START}, {IMG_END} or {IMG_CONTEXT}", param=param)
        window = self.pipe.mllm.config.text_config.max_position_embeddings
        limit = window - self.pipe.connector.config.num_queries
        if len(text) > 8 * window:  # far over the limit whatever the tokenizer; spare it the work
            raise bad_request(f"{param} is {len(text)} characters, far over the model's {limit} tokens", param=param)
        templated = (edit_prompt(text, self.pipe.model.num_image_tokens) if task == "edit"
                     else generation_prompt(text))
        tokens = len(self.request_chat.tokenizer(templated, add_special_tokens=False).input_ids)
        if tokens > limit:
            raise bad_request(f"{param} is {tokens} tokens with its template; the model reads at most {limit}",
                              param=param, code="context_length_exceeded")
        return text

    def read_upload(self, data: bytes | None) -> PIL.Image.Image:
        if not data:
            raise bad_request("no image to edit: send it as the multipart file field 'image'", param="image")
        if len(data) > self.config.max_upload_bytes:
            raise ApiError(413, f"the image is over the server's limit of "
                                f"{self.config.max_upload_bytes / 2**20:g} MiB", param="image")
        try:
            return load_image_bytes(data, name="the image", min_side=self.request_chat.patch_size,
                                    max_pixels=self.config.max_image_pixels)
        except OpenUniError as error:
            raise bad_request(str(error), param="image", code="invalid_image") from None

    def image_size(self, size: str | None, source: PIL.Image.Image | None) -> tuple[int, int]:
        """(height, width): "WxH" as asked, else the model's resolution (edits: at the source's aspect ratio)."""
        if size is None or size == "auto":
            if source is None:
                return self.pipe.default_resolution, self.pipe.default_resolution
            return self.pipe.edit_output_size([source.size], None, None)
        match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size)
        if not match:
            raise bad_request(f"size must be 'WIDTHxHEIGHT' (e.g. 512x512) or 'auto', got {size!r}", param="size")
        width, height = int(match[1]), int(match[2])
        multiple = self.pipe.size_multiple
        for side in (width, height):
            if side < multiple or side > self.config.max_side or side % multiple:
                raise bad_request(f"size {size}: width and height must be multiples of {multiple} between "
                                  f"{multiple} and {self.config.max_side}", param="size")
        return height, width

    def sampling_options(self, body: ImageRequest, negative: str | None, height: int, width: int) -> SamplingOptions:
        """The request's settings; what it leaves out takes `openuni generate`'s defaults."""
        defaults = SamplingOptions()
        n = defaults.num_images if body.n is None else body.n
        in_range(n, "n", 1, self.config.max_batch_images)
        steps = defaults.steps if body.num_inference_steps is None else body.num_inference_steps
        in_range(steps, "num_inference_steps", 1, self.config.max_steps)
        guidance = defaults.cfg_scale if body.guidance_scale is None else body.guidance_scale
        in_range(guidance, "guidance_scale", 0, MAX_GUIDANCE)
        seed = defaults.seed if body.seed is None else body.seed
        in_range(seed, "seed", 0, SEED_LIMIT - n)  # image k uses seed + k
        return SamplingOptions(seed=seed, steps=steps, cfg_scale=guidance, negative_prompt=negative,
                               height=height, width=width, num_images=n).check(self.pipe.size_multiple)

    def chat_job(self, body: ChatCompletionRequest) -> ChatJob:
        self.check_model(body.model)
        if body.n not in (None, 1):
            raise bad_request("n must be 1: this server gives one answer per request", param="n")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = min(DEFAULT_CHAT_TOKENS, self.config.max_chat_tokens) if max_tokens is None else max_tokens
        in_range(max_tokens, "max_tokens", 1, self.config.max_chat_tokens)
        temperature = body.temperature or 0.0
        in_range(temperature, "temperature", 0, 2)
        top_p = 1.0 if body.top_p is None else body.top_p
        if not 0 < top_p <= 1:
            raise bad_request(f"top_p must be in (0, 1], got {top_p}", param="top_p")
        if body.seed is not None:
            in_range(body.seed, "seed", 0, SEED_LIMIT)
        question, images, conversation = conversation_from_messages(self.request_chat, body.messages, self.config)
        try:
            request = self.request_chat.request(question, images, conversation, max_tokens, temperature > 0,
                                        temperature or 1.0, top_p)
        except OpenUniError as error:
            raise bad_request(str(error), param="messages", code="context_length_exceeded"
                              if "exceeds" in str(error) else None) from None
        return ChatJob(request=request, seed=body.seed if temperature > 0 else None)

    # -- jobs -> model (the batcher's worker thread) ----------------------------------------------------------

    def _run_batch(self, jobs: list[ImageJob], should_stop: Callable[[], bool]) -> list[list[PIL.Image.Image]]:
        if should_stop():
            raise WorkDropped("nobody waits for this batch")
        last_step = [time.monotonic()]

        def on_step(pipe, step, timestep, tensors):
            if should_stop():
                raise WorkDropped("nobody waits for this batch")
            last_step[0] = time.monotonic()

        start = time.monotonic()
        if self.config.rewrite and jobs[0].task == "generate":
            self.rewrite(jobs)
        self.metrics.running_images.set(sum(job.images for job in jobs))
        try:
            images = self.pipe(**pipeline_arguments(jobs), callback_on_step_end=on_step).images
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # so that the batcher's retry, one request at a time, can fit
            raise
        finally:
            self.metrics.running_images.set(0)
        end = time.monotonic()
        task = jobs[0].task
        self.metrics.pipeline_calls.labels(task).inc()
        self.metrics.batch_images.observe(len(images))
        self.metrics.batch_requests.observe(len(jobs))
        self.metrics.stage_seconds.labels("pipeline").observe(end - start)
        self.metrics.stage_seconds.labels("decode").observe(end - last_step[0])
        per_job, offset = [], 0
        for job in jobs:
            per_job.append(images[offset:offset + job.images])
            offset += job.images
        return per_job

    def rewrite(self, jobs: list[ImageJob]) -> None:
        """Each job's prompt as the MLLM expands it (once: a retried job keeps its rewrite)."""
        from ..rewriting import rewrite_prompts

        todo = [job for job in jobs if job.revised_prompt is None]
        for job, revised in zip(todo, rewrite_prompts(self.pipe, [job.prompt for job in todo])):
            job.revised_prompt = revised

    def _run_chat(self, job: ChatJob) -> ChatResult:
        request = job.request
        streamer = PieceStreamer(self.pipe.tokenizer, job.emit)
        settings = dict(request["settings"], stopping_criteria=StoppingCriteriaList([StopWhenSet(job.stop)]))
        if job.seed is not None:
            torch.manual_seed(job.seed)  # only this thread runs the model, so the global generator is ours
        start = time.monotonic()
        with self.pipe.stage(self.pipe.mllm):
            text = self.chat.answer(dict(request, settings=settings), None, streamer)
        self.metrics.stage_seconds.labels("chat").observe(time.monotonic() - start)
        if streamer.first_piece_at is not None:
            self.metrics.stage_seconds.labels("chat_first_token").observe(streamer.first_piece_at - start)
        self.metrics.chat_tokens.inc(len(streamer.tokens))
        ended = streamer.tokens[-1:] == [self.chat.end_of_turn_id]
        length = not ended and len(streamer.tokens) >= settings["max_new_tokens"]
        return ChatResult(text, request["inputs"]["input_ids"].shape[1], len(streamer.tokens),
                          "length" if length else "stop")


class PieceStreamer(TextStreamer):
    """transformers' word-by-word text streamer, handing each piece to `emit` and counting the new tokens."""

    def __init__(self, tokenizer, emit: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.emit, self.tokens, self.first_piece_at = emit, [], None

    def put(self, value) -> None:
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.tokens.extend(value.reshape(-1).tolist())
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            if self.first_piece_at is None:
                self.first_piece_at = time.monotonic()
            self.emit(text)


def in_range(value, param: str, low, high) -> None:
    if not low <= value <= high:  # also refuses NaN
        raise bad_request(f"{param} must be between {low:g} and {high:g}, got {value}", param=param)

