"""The HTTP API: OpenAI's image and chat routes on one `OpenUniService`, as a FastAPI app.

`create_app(service)` is all a server needs: `openuni serve` runs it with uvicorn, the Ray Serve deployment in
each replica. Every error is OpenAI's error JSON with its status; the server keeps serving after any of them. The
API key (when set) and the body size limit are checked by `Guard` before a body is read.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import time
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..errors import OpenUniError
from .batching import Job, QueueFull, WorkDropped
from .protocol import (ApiError, ChatCompletionRequest, ImageRequest, bad_request, chat_chunk, chat_completion,
                       completion_id, usage, validation_error)
from .service import OpenUniService

logger = logging.getLogger(__name__)

ROUTES = ("/health", "/metrics", "/v1/models", "/v1/images/generations", "/v1/images/edits", "/v1/chat/completions")
OPEN_ROUTES = ("/health",)
FORM_SLACK = 64 * 1024  # the form fields and multipart framing around an upload


class BodyTooLarge(HTTPException):
    def __init__(self):
        super().__init__(413, "the request body is over the server's limit")


class Guard:
    """ASGI middleware: the API key and the body size limit, both before the body is read, and the request count
    by route and status."""

    def __init__(self, app, service: OpenUniService):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self.refusal(scope)
            if refusal is not None:
                return await error_response(self.service, refusal)(scope, receive, sending)
            await self.app(scope, self.limited(receive), sending)
        finally:
            self.service.metrics.requests.labels(route, str(status[0])).inc()

    def refusal(self, scope) -> ApiError | None:
        headers = dict(scope["headers"])
        key = self.service.config.api_key
        if key is not None and scope["path"] not in OPEN_ROUTES:
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                return ApiError(401, "missing or incorrect API key: send the header 'Authorization: Bearer KEY'",
                                code="invalid_api_key")
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.limit:
            return too_large(self.service)
        return None

    @property
    def limit(self) -> int:
        return self.service.config.max_upload_bytes + FORM_SLACK

    def limited(self, receive):
        """`receive` that fails with 413 once the body passes the limit (whatever Content-Length said)."""
        received = 0

        async def receiving():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge()
            return message
        return receiving


def too_large(service: OpenUniService) -> ApiError:
    return ApiError(413, f"the request body is over the server's limit of "
                         f"{service.config.max_upload_bytes / 2**20:g} MiB", code="request_too_large")


def error_response(service: OpenUniService, error: ApiError) -> JSONResponse:
    service.metrics.errors.labels(error.type, error.code or "none").inc()
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


STATUS_MESSAGES = {404: "no such route", 405: "method not allowed on this route"}


def add_error_handlers(app: FastAPI, service: OpenUniService) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return error_response(service, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, error: RequestValidationError):
        return error_response(service, validation_error(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        if error.status_code == 413:
            return error_response(service, too_large(service))
        message = STATUS_MESSAGES.get(error.status_code, str(error.detail))
        return error_response(service, ApiError(error.status_code, f"{message}: {request.method} {request.url.path}"
                                                if error.status_code in STATUS_MESSAGES else message))

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        logger.exception("unexpected error on %s", request.url.path)
        return error_response(service, ApiError(500, "internal server error (see the server's log)",
                                                type="server_error", code="internal_error"))


def create_app(service: OpenUniService, on_load_failure=None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        service.start(on_load_failure)
        yield
        service.close()

    # No /docs or /openapi.json: every route but /health sits behind the API key.
    app = FastAPI(title="OpenUni", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, service=service)
    add_error_handlers(app, service)
    add_routes(app, service)
    return app


def add_routes(app: FastAPI, service: OpenUniService) -> None:
    config, created = service.config, int(time.time())

    def require_ready() -> None:
        if service.load_error is not None:
            raise ApiError(503, f"the model failed to load: {service.load_error}", type="server_error",
                           code="model_load_failed")
        if not service.ready:
            raise ApiError(503, "the model is still loading", type="server_error", code="model_loading",
                           headers={"Retry-After": "5"})

    @app.get("/health")
    async def health():
        require_ready()
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(config.model_name, created)]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        service.check_model(model)
        return model_card(model, created)

    @app.post("/v1/images/generations")
    async def generations(body: ImageRequest, request: Request):
        require_ready()
        job = await run_in_threadpool(service.image_job, "generate", body)
        images = await finished(service, job, request)
        return await run_in_threadpool(images_response, service, job, images)

    @app.post("/v1/images/edits")
    async def edits(request: Request):
        require_ready()
        fields, upload = await edit_form(request)
        try:
            body = ImageRequest.model_validate(fields)
        except ValidationError as error:
            raise validation_error(error.errors()) from None
        job = await run_in_threadpool(service.image_job, "edit", body, upload)
        images = await finished(service, job, request)
        return await run_in_threadpool(images_response, service, job, images)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        require_ready()
        job = await run_in_threadpool(service.chat_job, body)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            pieces = start_streaming(service, job)  # queued now, so that a full queue is still a 429
            return StreamingResponse(streamed_answer(service, job, pieces, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        result = await finished(service, job, request)
        return chat_completion(completion_id(), config.model_name, result.text, result.finish_reason,
                               usage(result.prompt_tokens, result.completion_tokens))


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "openuni"}


async def edit_form(request: Request) -> tuple[dict, bytes]:
    """The multipart fields of an edit (last value of each) and the bytes of its one image."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("send the edit as multipart/form-data with the image as the file field 'image'")
    form = await request.form(max_files=4, max_fields=64)
    files = [value for key in ("image", "image[]") for value in form.getlist(key)]
    if "mask" in form:
        raise bad_request("masks are not supported: the instruction says what to change", param="mask")
    if len(files) != 1 or not isinstance(files[0], UploadFile):
        raise bad_request(f"send exactly one image to edit as the file field 'image' (got {len(files)})",
                          param="image")
    fields = {key: value for key, value in form.multi_items() if key not in ("image", "image[]")}
    if any(isinstance(value, UploadFile) for value in fields.values()):
        raise bad_request("only the field 'image' may be a file")
    return fields, await files[0].read()


def submit(service: OpenUniService, job: Job) -> None:
    try:
        service.batcher.submit(job)
    except QueueFull as full:
        raise ApiError(429, f"the server is busy (its {full.lane} queue is full); retry in {full.retry_after} s",
                       type="rate_limit_error", code="rate_limit_exceeded",
                       headers={"Retry-After": str(full.retry_after)}) from None


async def finished(service: OpenUniService, job: Job, request: Request):
    """Queue `job` and wait for its result, dropping it when the client disconnects or its deadline passes."""
    submit(service, job)
    waiting = asyncio.wrap_future(job.future)
    watching = asyncio.ensure_future(disconnected(request.receive))
    timeout = max(0.0, job.enqueued + service.config.request_timeout - time.monotonic())
    try:
        done, _ = await asyncio.wait({waiting, watching}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
    if waiting in done:
        return job_result(waiting)
    reason = "disconnected" if watching in done else "deadline"
    service.batcher.cancel(job, reason)
    waiting.cancel()
    if reason == "deadline":
        raise deadline_passed(service)
    raise ApiError(499, "the client closed the request", code="client_closed_request")


async def disconnected(receive) -> None:
    """Returns once the client has gone (the body is read by then, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def deadline_passed(service: OpenUniService) -> ApiError:
    return ApiError(504, f"the request did not finish within the server's {service.config.request_timeout:g} s "
                         "deadline; its work was dropped", type="server_error", code="timeout")


def job_result(future):
    """A finished job's result, its failure as the API error it stands for."""
    try:
        return future.result()
    except OpenUniError as error:
        raise bad_request(str(error)) from None
    except torch.OutOfMemoryError:
        raise ApiError(503, "the server ran out of memory on this request: ask for fewer images or a smaller size",
                       type="server_error", code="out_of_memory", headers={"Retry-After": "10"}) from None
    except WorkDropped as dropped:
        raise ApiError(503, f"the request was dropped ({dropped})", type="server_error",
                       code="dropped") from None


def images_response(service: OpenUniService, job, images) -> dict:
    start = time.monotonic()
    data = [{"b64_json": png_base64(image), "revised_prompt": job.revised_prompt, "seed": job.options.seed + k}
            for k, image in enumerate(images)]
    service.metrics.stage_seconds.labels("encode").observe(time.monotonic() - start)
    service.metrics.images.labels(job.task).inc(len(images))
    return {"created": int(time.time()), "data": data, "output_format": "png",
            "size": f"{job.options.width}x{job.options.height}"}


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def sse(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def start_streaming(service: OpenUniService, job) -> asyncio.Queue:
    """Queue a chat job whose answer pieces arrive in the returned queue, then None."""
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()

    def deliver(piece) -> None:  # from the worker thread
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)
        except RuntimeError:  # the event loop is gone: nobody listens any more
            pass

    job.emit = deliver
    submit(service, job)
    job.future.add_done_callback(lambda _: deliver(None))
    return pieces


async def streamed_answer(service: OpenUniService, job, pieces: asyncio.Queue, include_usage: bool):
    """The answer as OpenAI streams it: a role chunk, content chunks, a finish chunk, (usage,) `data: [DONE]`."""
    completion, created, name = completion_id(), int(time.time()), service.config.model_name
    deadline = job.enqueued + service.config.request_timeout

    def chunk(delta, finish_reason=None, **extra) -> str:
        return sse(chat_chunk(completion, created, name, delta, finish_reason, with_usage=include_usage, **extra))

    try:
        yield chunk({"role": "assistant", "content": ""})
        started = False
        while (piece := await asyncio.wait_for(pieces.get(), max(0.0, deadline - time.monotonic()))) is not None:
            piece = piece if started else piece.lstrip()
            if piece:
                started = True
                yield chunk({"content": piece})
        result = job_result(job.future)
        yield chunk({}, result.finish_reason)
        if include_usage:
            yield chunk(None, usage=usage(result.prompt_tokens, result.completion_tokens))
        yield "data: [DONE]\n\n"
    except TimeoutError:
        service.batcher.cancel(job, "deadline")
        yield sse(deadline_passed(service).body())
    except ApiError as error:
        yield sse(error.body())
    finally:
        if not job.future.done():  # the client went away mid-answer: stop generating
            service.batcher.cancel(job, "disconnected")
