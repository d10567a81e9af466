"""The web demo on the tiny model: its handlers, bad input as page messages, one model lock, the page itself, and
one real request over HTTP to a server on the loopback interface."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import PIL.Image
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the test server
gr = pytest.importorskip("gradio", reason="the demo needs gradio (pip install -e '.[demo]'); CI's test extras "
                                          "do not install it")

from openuni.cli import main  # noqa: E402
from openuni.demo import DemoApp  # noqa: E402

from conftest import tiny_cli_args  # noqa: E402
from tolerances import assert_images_close  # noqa: E402

FAST = dict(steps=2, seed=3)


@pytest.fixture(scope="module")
def app(tiny_pipe):
    return DemoApp(tiny_pipe)


def random_image(seed: int, size=(80, 48)) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_generate_gives_the_pipelines_images_at_the_asked_size(app, tiny_pipe):
    images = app.generate("a red cube", "", width=96, height=64, num_images=2, cfg_scale=3, **FAST)
    assert [image.size for image in images] == [(96, 64), (96, 64)]
    direct = tiny_pipe("a red cube", width=96, height=64, num_images_per_prompt=2, guidance_scale=3,
                       num_inference_steps=2, seed=3).images
    for shown, expected in zip(images, direct):
        np.testing.assert_array_equal(np.asarray(shown), np.asarray(expected))
    assert app.generate("a red cube", "", width=None, height=None, **FAST)[0].size == (64, 64)  # model's default


def test_edit_gives_images_shaped_like_the_source(app, tiny_pipe, tmp_path):
    source = tmp_path / "source.png"
    random_image(0, (128, 64)).save(source)
    images = app.edit(str(source), "make it blue", "", num_images=2, **FAST)
    assert len(images) == 2
    expected = tiny_pipe.edit(str(source), "make it blue", num_inference_steps=2, seed=3).images[0]
    assert images[0].size == expected.size
    assert_images_close(images[0], expected)  # the demo edits 2 at once, this 1: float rounding apart


def test_chat_streams_and_keeps_the_conversation(app, tmp_path):
    picture = tmp_path / "picture.png"
    random_image(1).save(picture)
    updates = list(app.chat({"text": "What is this?", "files": [str(picture)]}, [], None, max_new_tokens=8))
    assert len(updates) > 1  # streamed piece by piece
    history, conversation, box = updates[-1]
    assert box == {"text": "", "files": []}
    assert [m["role"] for m in history] == ["user", "user", "assistant"]
    assert history[0]["content"] == {"path": str(picture)} and history[1]["content"] == "What is this?"
    assert history[2]["content"] == conversation.turns[0].answer  # what is shown is what was recorded
    follow_up = list(app.chat("And its colour?", history, conversation, max_new_tokens=8))
    history, conversation, _ = follow_up[-1]
    assert len(conversation.turns) == 2 and len(history) == 5
    assert history[-1]["content"] == conversation.turns[1].answer
    # The same MLLM object serves the pipeline and the chat: nothing was loaded twice.
    assert app.chat_model.model is app.pipe.mllm


def test_closing_a_chat_midway_stops_the_model_before_the_next_request(app):
    updates = app.chat("Tell me a long story.", [], None, max_new_tokens=200)
    _, conversation, _ = next(updates)
    updates.close()  # what gradio does when the page goes away
    assert len(conversation.turns) == 1  # the generation thread finished (and recorded its turn) before close returned
    assert app.lock.acquire(blocking=False)
    app.lock.release()


@pytest.mark.parametrize("call, message", [
    (lambda app: app.generate("   "), "prompt is empty"),
    (lambda app: app.generate("a cat", width=100), "multiple of 32"),
    (lambda app: app.generate("a cat", height=4096), "between 32 and 2048"),
    (lambda app: app.generate("a cat", steps=0), "number of steps must be between"),
    (lambda app: app.generate("a cat", num_images=99), "number of images must be between"),
    (lambda app: app.generate("a cat", seed="abc"), "seed must be a number"),
    (lambda app: app.generate("a cat", seed=1.5), "whole number"),
    (lambda app: app.generate("a cat", cfg_scale=float("nan")), "guidance scale"),
    (lambda app: app.edit(None, "make it blue"), "upload an image"),
    (lambda app: app.edit(random_image(0), ""), "edit instruction is empty"),
    (lambda app: app.edit(random_image(0, (8, 8)), "make it blue"), "smaller than one 16-pixel patch"),
    (lambda app: list(app.chat({"text": "", "files": []}, [], None)), "question is empty"),
    (lambda app: list(app.chat("What is <image> here?", [], None)), "leave '<image>' out"),
])
def test_bad_input_is_a_message_in_the_page(app, call, message):
    with pytest.raises(gr.Error, match=message):
        call(app)
    assert app.lock.acquire(blocking=False)  # and the model is free again
    app.lock.release()


def test_a_file_that_is_no_image_is_a_message(app, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    with pytest.raises(gr.Error, match="not an image format"):
        app.edit(str(fake), "make it blue")
    with pytest.raises(gr.Error, match="not an image format"):
        list(app.chat({"text": "What is it?", "files": [{"path": str(fake)}]}, [], None))


def test_requests_wait_for_the_one_model(app):
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (app.generate("a cube", **FAST), finished.set()))
    with app.lock:  # another request is running
        worker.start()
        assert not finished.wait(0.5)
    worker.join(60)
    assert finished.is_set()


def test_the_page_builds_with_its_three_endpoints(app):
    page = app.build()
    assert isinstance(page, gr.Blocks)
    names = {fn.api_name for fn in page.fns.values()}
    assert {"generate", "edit", "chat"} <= names


def test_a_busy_port_fails_before_the_model_loads(tiny, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        assert main(["demo", "--port", str(port), *tiny_cli_args(tiny)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert time.monotonic() - started < 5


def test_the_served_page_generates_and_chats_over_http(app, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    picture = tmp_path / "picture.png"
    random_image(2).save(picture)
    page = app.build()
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path))
        gallery = client.submit("a green ball", "", 5, 2, 4.5, 64, 96, 1, api_name="/generate").result(timeout=120)
        question = {"text": "What is it?", "files": [gradio_client.handle_file(str(picture))]}
        first = client.submit(question, 16, 0, api_name="/chat").result(timeout=120)
        second = client.submit({"text": "Why?", "files": []}, 16, 0, api_name="/chat").result(timeout=120)
        with pytest.raises(gradio_client.exceptions.AppError, match="the width must be a multiple of 32"):
            client.submit("a cat", "", 5, 2, 4.5, 100, 64, 1, api_name="/generate").result(timeout=120)
    finally:
        page.close()
    assert len(gallery) == 1
    with PIL.Image.open(gallery[0]["image"]) as image:
        assert image.size == (64, 96)
    shown, box = first
    assert [m["role"] for m in shown] == ["user", "user", "assistant"] and box == {"text": "", "files": []}
    # The session kept the conversation: the second answer comes after the first exchange.
    assert [m["role"] for m in second[0]] == ["user", "user", "assistant", "user", "assistant"]
    assert second[0][3]["content"][0]["text"] == "Why?"


def test_rewrite_generates_from_the_mllms_prompt_and_captions_it(tiny_pipe):
    from openuni.rewriting import rewrite_prompts

    (rewritten,) = rewrite_prompts(tiny_pipe, ["a cat"])
    shown = DemoApp(tiny_pipe, rewrite=True).generate("a cat", seed=5, steps=2, width=64, height=64, num_images=2)
    expected = tiny_pipe(rewritten, seed=5, num_inference_steps=2, width=64, height=64,
                         num_images_per_prompt=2).images
    assert [caption for _, caption in shown] == [f"rewritten prompt: {rewritten}"] * 2
    for (image, _), alone in zip(shown, expected):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(alone))
