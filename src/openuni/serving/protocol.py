"""The OpenAI API as this server speaks it: request bodies, the error JSON, chat completion objects and chunks.

Request bodies refuse fields they do not know (OpenAI's own API does the same), so a misspelt extension such as
`num_inference_step` is a 400 naming it rather than a silently ignored setting. OpenAI fields that change nothing
here (`user`, `quality`, `style`, ...) are accepted and ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An answer in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def validation_error(errors: list[dict]) -> ApiError:
    """pydantic's first complaint about a body, as one line naming the field."""
    if not errors:
        return bad_request("the request body is not valid")
    error = errors[0]
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if error.get("type") == "json_invalid":
        return bad_request("the request body is not valid JSON")
    if error.get("type") == "extra_forbidden":
        return bad_request(f"{param} is not supported by this server", param=param, code="unsupported_parameter")
    if error.get("type") == "missing":
        return bad_request(f"missing required parameter: {param}", param=param, code="missing_required_parameter")
    return bad_request(f"{param}: {error.get('msg', 'invalid value')}" if param else error.get("msg", "invalid body"),
                       param=param, code="invalid_value")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageRequest(Body):
    """What `/v1/images/generations` and `/v1/images/edits` share (the edit's image comes as a file part)."""

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None  # "WxH" or "auto"
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png"] | None = None
    # OpenAI fields without an effect here.
    user: str | None = None
    safety_identifier: str | None = None
    moderation: str | None = None
    quality: str | None = None
    style: str | None = None
    # Extensions (the openai client sends them with `extra_body=`); None: `openuni generate`'s defaults.
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None


class TextPart(Body):
    type: Literal["text"]
    text: str


class ImageURL(Body):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Body):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(Body):
    include_usage: bool = False


class ChatCompletionRequest(Body):
    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None  # None or 0: greedy decoding
    top_p: float | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    safety_identifier: str | None = None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_completion(completion: str, model: str, text: str, finish_reason: str, usage: dict) -> dict:
    return {
        "id": completion, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


def chat_chunk(completion: str, created: int, model: str, delta: dict | None, finish_reason: str | None = None,
               usage: dict | None = None, with_usage: bool = False) -> dict:
    """One streamed chunk; `delta=None` makes the usage-only chunk that ends a stream with `include_usage`."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}]
    chunk: dict[str, Any] = {"id": completion, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": choices}
    if with_usage:
        chunk["usage"] = usage
    return chunk


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
