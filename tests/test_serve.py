"""`openuni serve` on the tiny model: real uvicorn servers on the loopback interface, called with the official
`openai` client (and raw HTTP where the wire format itself is the point). Every route, cross-request batching
against single-request twins, backpressure, bad requests, the API key, readiness and deadlines."""

from __future__ import annotations

import json
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the serving tests need the 'test' extra (openai)")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="openuni serve needs the 'serve' extra")

from openuni.chat import Conversation, InternVLChat  # noqa: E402
from openuni.cli import main  # noqa: E402
from openuni.serving.config import ServerConfig  # noqa: E402
from openuni.serving.service import OpenUniService  # noqa: E402

from conftest import tiny_cli_args  # noqa: E402
from serving_helpers import (data_url, decoded, decoded_png, free_port, metric,  # noqa: E402
                             random_png, running_server)
from tolerances import assert_images_close  # noqa: E402

MODEL = "openuni-tiny"
FAST = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def server(tiny_pipe):
    config = ServerConfig(model_name=MODEL, max_wait_ms=300, max_batch_images=16, max_queue=64,
                          max_upload_bytes=2**20, max_image_pixels=1_000_000)
    service = OpenUniService(config, pipe=tiny_pipe)
    with running_server(service) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_model(tiny_pipe):
    return InternVLChat(tiny_pipe.mllm, tiny_pipe.tokenizer)


# -- each route through the official client ------------------------------------------------------------------

def test_generate_gives_the_pipelines_images_with_their_seeds(client, tiny_pipe):
    response = client.images.generate(model=MODEL, prompt="a red cube", n=2, size="96x64",
                                      extra_body={"seed": 7, "guidance_scale": 3.0, **FAST})
    assert [image.seed for image in response.data] == [7, 8]
    images = [decoded(image.b64_json) for image in response.data]
    alone = tiny_pipe("a red cube", num_images_per_prompt=2, height=64, width=96, guidance_scale=3.0,
                      seed=7, **FAST).images
    for served, expected in zip(images, alone):  # the same batch composition: the same bytes
        np.testing.assert_array_equal(np.asarray(served), np.asarray(expected))


def test_generate_defaults_are_those_of_openuni_generate(client, tiny_pipe):
    response = client.images.generate(prompt="a green dog")  # no model, size, n or extensions
    assert len(response.data) == 1 and response.data[0].seed == 42
    expected = tiny_pipe("a green dog", seed=42, num_inference_steps=20, guidance_scale=4.5).images[0]
    np.testing.assert_array_equal(np.asarray(decoded(response.data[0].b64_json)), np.asarray(expected))


def test_negative_prompt_reaches_the_unconditional_branch(client, tiny_pipe):
    response = client.images.generate(prompt="a red cube", extra_body={"negative_prompt": "blurry", **FAST})
    expected = tiny_pipe("a red cube", negative_prompt="blurry", seed=42, **FAST).images[0]
    np.testing.assert_array_equal(np.asarray(decoded(response.data[0].b64_json)), np.asarray(expected))
    default = tiny_pipe("a red cube", seed=42, **FAST).images[0]
    assert not np.array_equal(np.asarray(expected), np.asarray(default))


def test_edit_follows_the_pipelines_editing_path(client, tiny_pipe):
    source = random_png(0, (128, 64))
    response = client.images.edit(model=MODEL, image=("source.png", source, "image/png"), prompt="make it blue",
                                  n=2, extra_body={"seed": 3, **FAST})
    assert [image.seed for image in response.data] == [3, 4]
    expected = tiny_pipe.edit(decoded_png(source), "make it blue", num_images_per_prompt=2, seed=3, **FAST).images
    for served, alone in zip(response.data, expected):
        np.testing.assert_array_equal(np.asarray(decoded(served.b64_json)), np.asarray(alone))
    assert expected[0].size == (96, 32)  # the source's 2:1 aspect ratio at about the model's 64x64 pixels


def test_chat_answers_as_the_chat_does(client, chat_model):
    picture = random_png(1)
    completion = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": data_url(picture)}}]}])
    expected = chat_model.ask("What is in this picture?", [decoded_png(picture)], max_new_tokens=8)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason in ("stop", "length")
    prompt = chat_model.request("What is in this picture?", [decoded_png(picture)], None, 8, False, 1.0, 1.0)
    assert completion.usage.prompt_tokens == prompt["inputs"]["input_ids"].shape[1]  # the image's tokens included
    assert 1 <= completion.usage.completion_tokens <= 8


def test_chat_keeps_the_earlier_turns_and_their_images(client, chat_model):
    picture = random_png(2)
    conversation = Conversation()
    first = chat_model.ask("Describe it.", [decoded_png(picture)], conversation, max_new_tokens=6)
    expected = chat_model.ask("And the colours?", [], conversation, max_new_tokens=6)
    completion = client.chat.completions.create(model=MODEL, max_tokens=6, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Describe it."},
                                     {"type": "image_url", "image_url": {"url": data_url(picture)}}]},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And the colours?"}])
    assert completion.choices[0].message.content == expected


def test_chat_streams_chunks_as_openai_does(client, server, chat_model):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hello there"}]
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == chat_model.ask("hello there", [], Conversation(system_prompt="Answer briefly."),
                                  max_new_tokens=12)
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 12
    # On the wire: only `data: ` events, each one JSON chunk, and the stream ends with `data: [DONE]`.
    with httpx.stream("POST", f"{server}/v1/chat/completions", json={"messages": messages, "max_tokens": 4,
                                                                       "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    assert all(json.loads(line[6:])["object"] == "chat.completion.chunk" for line in events[:-1])


def test_models_health_and_metrics(client, server):
    assert [model.id for model in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server}/health").status_code == 200
    metrics = httpx.get(f"{server}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert metric(metrics.text, "openuni_pipeline_calls_total", task="generate") >= 1
    assert "openuni_stage_seconds_bucket" in metrics.text and "openuni_queue_depth" in metrics.text


# -- cross-request batching --------------------------------------------------------------------------------

def test_concurrent_requests_share_pipeline_calls_and_keep_their_images(client, server, tiny_pipe):
    prompts = ["a red cube", "a blue sphere", "two green dogs", "a bowl of fruit"]
    requests = [(prompts[i % 4], 100 + 10 * i, 2 if i % 5 == 0 else 1) for i in range(16)]  # mixed n too
    before = httpx.get(f"{server}/metrics").text
    start = threading.Barrier(len(requests))

    def ask(request):
        prompt, seed, n = request
        start.wait()
        return client.images.generate(model=MODEL, prompt=prompt, n=n, extra_body={"seed": seed, **FAST})

    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(ask, requests))
    after = httpx.get(f"{server}/metrics").text
    calls = (metric(after, "openuni_pipeline_calls_total", task="generate")
             - metric(before, "openuni_pipeline_calls_total", task="generate"))
    assert 1 <= calls < len(requests)
    for (prompt, seed, n), response in zip(requests, responses):
        assert [image.seed for image in response.data] == [seed + k for k in range(n)]
        alone = tiny_pipe(prompt, num_images_per_prompt=n, seed=seed, **FAST).images
        for served, expected in zip(response.data, alone):
            assert_images_close(decoded(served.b64_json), expected)


def test_requests_with_other_settings_are_not_mixed(client, tiny_pipe):
    with ThreadPoolExecutor(2) as pool:
        small, wide = pool.map(lambda size: client.images.generate(prompt="a red cube", size=size, extra_body=FAST),
                               ["64x64", "128x64"])
    assert decoded(small.data[0].b64_json).size == (64, 64) and decoded(wide.data[0].b64_json).size == (128, 64)
    expected = tiny_pipe("a red cube", width=128, height=64, seed=42, **FAST).images[0]
    np.testing.assert_array_equal(np.asarray(decoded(wide.data[0].b64_json)), np.asarray(expected))


# -- backpressure, disconnects, deadlines ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_server(tiny_pipe):
    """One image per call, two waiting at most: easy to fill."""
    service = OpenUniService(ServerConfig(max_wait_ms=0, max_batch_images=1, max_queue=2), pipe=tiny_pipe)
    with running_server(service) as url:
        yield url


SLOW = {"prompt": "a red cube", "num_inference_steps": 100}  # about a second on the tiny model


def test_overload_gives_429_with_retry_after(small_server):
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{small_server}/v1/images/generations", json=SLOW,
                                                     timeout=120), range(6)))
    statuses = sorted(answer.status_code for answer in answers)
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    client = openai.OpenAI(base_url=f"{small_server}/v1", api_key="unused", max_retries=0)
    assert len(client.images.generate(prompt="a cube", extra_body=FAST).data) == 1  # still serving


def test_work_of_a_client_that_left_is_dropped(small_server):
    before = metric(httpx.get(f"{small_server}/metrics").text, "openuni_dropped_requests_total",
                    reason="disconnected")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"{small_server}/v1/images/generations", json=SLOW, timeout=120)
        time.sleep(0.3)  # the worker is busy with it
        with pytest.raises(httpx.TimeoutException):  # this client gives up while its request waits
            httpx.post(f"{small_server}/v1/images/generations", json=SLOW, timeout=0.3)
        assert running.result().status_code == 200
    deadline = time.monotonic() + 10
    while metric(httpx.get(f"{small_server}/metrics").text, "openuni_dropped_requests_total",
                 reason="disconnected") <= before:
        assert time.monotonic() < deadline, "the abandoned request was not dropped"
        time.sleep(0.1)


def test_a_chat_waits_behind_at_most_the_running_image_batch(small_server):
    finished = {}

    def timed(name, path, body):
        answer = httpx.post(f"{small_server}{path}", json=body, timeout=120)
        finished[name] = time.monotonic()
        return answer.status_code

    def queued_images() -> float:
        return metric(httpx.get(f"{small_server}/metrics").text, "openuni_queue_depth", lane="images")

    def wait_for(condition, what):
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, f"never saw {what}"
            time.sleep(0.02)

    # One image runs, two wait: sent one after another (sent at once, they arrived staggered on a fast machine and the
    # first had finished before the third came), each slow enough that the state holds while the chat is sent.
    slower = dict(SLOW, size="192x192")
    with ThreadPoolExecutor(4) as pool:
        images = [pool.submit(timed, "image 0", "/v1/images/generations", slower)]
        wait_for(lambda: metric(httpx.get(f"{small_server}/metrics").text, "openuni_running_images") >= 1,
                 "the first image running")
        images += [pool.submit(timed, f"image {k}", "/v1/images/generations", slower) for k in (1, 2)]
        wait_for(lambda: queued_images() >= 2, "two images queued")
        asked = time.monotonic()
        chat = pool.submit(timed, "chat", "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert [future.result() for future in (*images, chat)] == [200] * 4
    ahead = [name for name, at in finished.items() if name != "chat" and asked < at < finished["chat"]]
    assert len(ahead) <= 1, f"the chat waited behind {ahead}"


def test_a_request_past_its_deadline_gets_504_and_is_dropped(tiny_pipe):
    service = OpenUniService(ServerConfig(request_timeout=0.3), pipe=tiny_pipe)
    with running_server(service) as url:
        answer = httpx.post(f"{url}/v1/images/generations", json=SLOW, timeout=60)
        assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"
        deadline = time.monotonic() + 10
        while metric(service.metrics.render().decode(), "openuni_dropped_requests_total", reason="deadline") < 1:
            assert time.monotonic() < deadline, "the batch of the late request was not stopped"
            time.sleep(0.05)


# -- bad requests ---------------------------------------------------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: a decompression bomb before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def generation(**fields):
    return dict(path="/v1/images/generations", json={"prompt": "a red cube", **FAST, **fields})


def edit(image: bytes | None = b"png", data: dict | None = None, **extra):
    """A multipart edit request (fields as parts without a file name, as the openai client sends them)."""
    fields = {"prompt": "make it blue", **(data or {})}
    files = {name: (None, value) for name, value in fields.items()}
    if image:
        files["image"] = ("source.png", random_png(0) if image == b"png" else image, "image/png")
    return dict(path="/v1/images/edits", files={**files, **extra})


def chat(*messages, **fields):
    return dict(path="/v1/chat/completions", json={"messages": list(messages) or [{"role": "user", "content": "hi"}],
                                                   "max_tokens": 4, **fields})


def user_image(url: str):
    return {"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                        {"type": "image_url", "image_url": {"url": url}}]}


BAD_REQUESTS = {
    "no prompt": (dict(path="/v1/images/generations", json={"n": 1}), 400, "prompt"),
    "empty prompt": (generation(prompt="   "), 400, "prompt"),
    "prompt past the MLLM window": (generation(prompt="a " * 40000), 400, "prompt"),
    "n of 0": (generation(n=0), 400, "n"),
    "n over max-batch-images": (generation(n=17), 400, "n"),
    "size not a multiple of 32": (generation(size="100x100"), 400, "size"),
    "size without x": (generation(size="512"), 400, "size"),
    "size over max-side": (generation(size="4096x4096"), 400, "size"),
    "no steps": (generation(num_inference_steps=0), 400, "num_inference_steps"),
    "too many steps": (generation(num_inference_steps=1000), 400, "num_inference_steps"),
    "negative guidance": (generation(guidance_scale=-1), 400, "guidance_scale"),
    "negative seed": (generation(seed=-1), 400, "seed"),
    "steps as text": (generation(num_inference_steps="many"), 400, "num_inference_steps"),
    "misspelt extension": (generation(num_inference_step=4), 400, "num_inference_step"),
    "url response format": (generation(response_format="url"), 400, "response_format"),
    "unknown model": (generation(model="dall-e-3"), 404, "model"),
    "not JSON": (dict(path="/v1/images/generations", content=b"{prompt", headers={"content-type":
                                                                                  "application/json"}), 400, None),
    "edit without image": (edit(image=None), 400, "image"),
    "edit of a text file": (edit(image=b"not a picture"), 400, "image"),
    "edit of a tiny image": (edit(image=random_png(0, (8, 8))), 400, "image"),
    "edit of a pixel bomb": (edit(image=png_header_only(4000, 4000)), 400, "image"),
    "edit with a mask": (edit(mask=("mask.png", random_png(1), "image/png")), 400, "mask"),
    "edit with bad steps": (edit(data={"num_inference_steps": "0"}), 400, "num_inference_steps"),
    "edit as JSON": (dict(path="/v1/images/edits", json={"prompt": "make it blue"}), 400, None),
    "no messages": (chat(messages=[]), 400, "messages"),
    "last message from the assistant": (chat({"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}), 400, "messages"),
    "remote image URL": (chat(user_image("https://example.com/cat.png")), 400, "messages.0.content"),
    "data URL not base64": (chat(user_image("data:image/png;base64,@@@")), 400, "messages.0.content"),
    "data URL not an image": (chat(user_image(data_url(b"hello"))), 400, "messages.0.content"),
    "image marker in text": (chat({"role": "user", "content": "what is <image>?"}), 400, "messages.0.content"),
    "image-only question": (chat({"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": data_url(random_png(0))}}]}), 400, "messages.0.content"),
    "max_tokens 0": (chat(max_tokens=0), 400, "max_tokens"),
    "temperature 5": (chat(temperature=5), 400, "temperature"),
    "two answers": (chat(n=2), 400, "n"),
    "tools": (chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    "unknown role": (chat({"role": "wizard", "content": "hi"}), 400, "messages.0.role"),
    "no such route": (dict(path="/v1/embeddings", json={"input": "hi"}), 404, None),
}


@pytest.mark.parametrize("request_, status, param", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, client, request_, status, param):
    request_ = dict(request_)
    answer = httpx.post(server + request_.pop("path"), timeout=60, **request_)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert client.models.list().data[0].id == MODEL


def test_remote_images_are_fetched_only_where_the_server_allows_it(tiny_pipe, chat_model):
    import http.server

    picture = random_png(4)

    class OnePicture(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(picture)))
            self.end_headers()
            self.wfile.write(picture)

        def log_message(self, *args):
            pass

    pictures = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OnePicture)
    threading.Thread(target=pictures.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{pictures.server_address[1]}/picture.png"
    body = {"messages": [user_image(url)], "max_tokens": 4}
    try:
        with running_server(OpenUniService(ServerConfig(allow_remote_images=True), pipe=tiny_pipe)) as server:
            answer = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            expected = chat_model.ask("What is it?", [decoded_png(picture)], max_new_tokens=4)
            assert answer.json()["choices"][0]["message"]["content"] == expected
            missing = dict(body, messages=[user_image(url.replace("127.0.0.1", "127.0.0.1:1"))])
            assert httpx.post(f"{server}/v1/chat/completions", json=missing, timeout=60).status_code == 400
    finally:
        pictures.shutdown()


def test_bodies_over_the_limit_get_413_with_or_without_a_length(server):
    big = b"x" * (2 * 2**20)
    declared = httpx.post(f"{server}/v1/images/edits", content=big, headers={"content-type": "multipart/form-data"})
    streamed = httpx.post(f"{server}/v1/chat/completions", content=iter([big[:2**20], big[2**20:]]),
                          headers={"content-type": "application/json"})  # chunked: no Content-Length
    for answer in (declared, streamed):
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
    assert httpx.get(f"{server}/health").status_code == 200


def test_the_openai_client_sees_its_own_error_types(client):
    with pytest.raises(openai.BadRequestError, match="multiples of 32"):
        client.images.generate(prompt="a cube", size="100x100")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


# -- API key, readiness, the command -----------------------------------------------------------------------

def test_api_key_and_readiness(tiny_pipe):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return tiny_pipe

    service = OpenUniService(ServerConfig(api_key="s3cret"), load=slow_load)
    with running_server(service) as url:
        loading = httpx.get(f"{url}/health")  # no key needed here
        assert loading.status_code == 503 and loading.json()["error"]["code"] == "model_loading"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for path in ("/v1/models", "/metrics"):
                refused = httpx.get(url + path, headers=headers)
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="still loading"):
            client.images.generate(prompt="a cube", extra_body=FAST)
        release.set()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(client.images.generate(prompt="a cube", extra_body=FAST).data) == 1


def test_openuni_serve_command_serves_the_tiny_model(tiny, tmp_path):
    import subprocess

    port = free_port()
    command = [sys.executable, "-m", "openuni.cli", "serve", "--port", str(port), *tiny_cli_args(tiny)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert [model.id for model in client.models.list()] == ["openuni-b-512"]  # the variant's name
        assert decoded(client.images.generate(prompt="a cube", extra_body=FAST).data[0].b64_json).size == (64, 64)
    finally:
        process.terminate()
        process.wait(30)


def test_a_model_that_fails_to_load_ends_the_command_with_one_line(tiny, tmp_path, capsys):
    args = tiny_cli_args(tiny)
    args[args.index("--vae") + 1] = str(tmp_path / "no-vae-here")
    assert main(["serve", "--port", str(free_port()), *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("openuni serve: error:") and "no-vae-here" in error


@pytest.mark.parametrize("flags, message", [
    (["--max-batch-images", "0"], "--max-batch-images must be at least 1"),
    (["--max-queue", "2", "--max-batch-images", "4"], "must hold at least one full batch"),
    (["--max-wait-ms", "-1"], "--max-wait-ms must be"),
    (["--port", "70000"], "--port must be between"),
    (["--api-key", " "], "is empty"),
])
def test_bad_server_flags_fail_before_the_model_loads(tiny, flags, message, capsys):
    assert main(["serve", *flags, *tiny_cli_args(tiny)]) == 2
    assert message in capsys.readouterr().err


def test_rewrite_answers_the_mllms_prompt_as_revised_prompt(client, tiny_pipe):
    from openuni.rewriting import rewrite_prompts

    assert client.images.generate(prompt="a red cube", extra_body=FAST).data[0].revised_prompt is None  # off
    service = OpenUniService(ServerConfig(model_name=MODEL, rewrite=True), pipe=tiny_pipe)
    with running_server(service) as url:
        rewriting = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        response = rewriting.images.generate(prompt="a red cube", size="64x64", extra_body={"seed": 7, **FAST})
    (expected,) = rewrite_prompts(tiny_pipe, ["a red cube"])
    assert response.data[0].revised_prompt == expected != "a red cube"
    alone = tiny_pipe(expected, height=64, width=64, seed=7, **FAST).images[0]
    np.testing.assert_array_equal(np.asarray(decoded(response.data[0].b64_json)), np.asarray(alone))
