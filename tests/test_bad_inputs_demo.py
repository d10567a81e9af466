"""The bad-input suite, web demo: what a visitor types or uploads, and what an adversary sends straight to the HTTP
API. Each gets our one-line message, naming uploads by their file names only (never the server's temporary paths),
logged on the server as one line (no traceback); a bad chat attachment leaves the page usable; uploads are deleted
when the server stops."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the demo needs gradio (pip install -e '.[demo]')")
gradio_client = pytest.importorskip("gradio_client")

from openuni.demo import MAX_TEXT_CHARS, DemoApp, gradio_upload_folder  # noqa: E402

FAST = dict(steps=1, seed=3)


@pytest.fixture(scope="module")
def app(tiny_pipe):
    return DemoApp(tiny_pipe)


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header announcing 1.6 gigapixels, followed by almost nothing: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


@pytest.fixture
def uploads(tmp_path):
    """Files as a visitor would upload them."""
    files = {"notes.png": b"not a picture", "empty.png": b"", "bomb.png": bomb_png(),
             "truncated.png": None, "photo.png": None}
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    files["photo.png"], files["truncated.png"] = buffer.getvalue(), buffer.getvalue()[:200]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


UPLOAD_ROWS = [
    ("notes.png", "image notes.png: not an image format"),
    ("empty.png", "image empty.png: not an image format"),
    ("bomb.png", "image bomb.png is too large to read safely"),
    ("truncated.png", "image truncated.png is corrupt or truncated"),
]


# -- the handlers, called as the page calls them (raw values) -------------------------------------------------------

HANDLER_ROWS = [
    (lambda app: app.generate("x" * (MAX_TEXT_CHARS + 1)), "prompt is 4001 characters long; this demo takes at most"),
    (lambda app: app.generate("a cat", "y" * 5000), "negative prompt is 5000 characters long"),
    (lambda app: app.generate(123), "the prompt must be text, got int"),
    (lambda app: app.generate(["a cat"]), "the prompt must be text, got list"),
    (lambda app: app.generate("a cat", seed=math.nan), "the seed must be between 0 and"),
    (lambda app: app.generate("a cat", seed="abc"), "the seed must be a number, got 'abc'"),
    (lambda app: app.generate("a cat", seed=2**63), "the seed must be between 0 and 9223372036854775799"),
    (lambda app: app.generate("a cat", seed=-1), "the seed must be between 0 and"),
    (lambda app: app.generate("a cat", steps="many"), "the number of steps must be a number"),
    (lambda app: app.generate("a cat", steps=math.inf), "the number of steps must be between 1 and 100"),
    (lambda app: app.generate("a cat", cfg_scale="nan"), "the guidance scale must be between 0 and 20"),
    (lambda app: app.generate("a cat", width=math.nan), "the width must be between"),
    (lambda app: app.generate("a cat", width="wide"), "the width must be a number"),
    (lambda app: app.generate("a cat", height=-64), "the height must be between 32 and 2048"),
    (lambda app: app.generate("a cat", num_images=math.nan), "the number of images must be between 1 and 8"),
    (lambda app: app.generate("a cat", width=1024, height=64), "width 1024 is over this model's limit of 256"),
    (lambda app: app.edit(12, "make it blue"), "expected an uploaded image, got int"),
    (lambda app: app.edit({"path": None, "url": "data:image/png;base64,AAAA"}, "make it blue"),
     "send the image as an uploaded file"),
    (lambda app: app.edit(PIL.Image.new("RGB", (64, 64)), "z" * 4001), "edit instruction is 4001 characters"),
    (lambda app: list(app.chat(123, [], None)), "the question must be text, got int"),
    (lambda app: list(app.chat({"text": "q" * 4001, "files": []}, [], None)), "question is 4001 characters"),
    (lambda app: list(app.chat({"text": "What?", "files": [PIL.Image.new("RGB", (64, 64))] * 5}, [], None)),
     "5 images attached; this demo takes at most 4 per message"),
    (lambda app: list(app.chat("What?", [], None, max_new_tokens="lots")), "the answer length must be a number"),
    (lambda app: list(app.chat("What?", [], None, temperature=math.nan)), "the temperature must be between"),
]


@pytest.mark.parametrize("call, message", HANDLER_ROWS)
def test_bad_values_are_messages(app, call, message):
    with pytest.raises(gr.Error, match=message.replace("(", r"\(")):
        call(app)
    assert app.lock.acquire(blocking=False)
    app.lock.release()


@pytest.mark.parametrize("name, message", UPLOAD_ROWS)
def test_bad_uploads_are_messages(app, uploads, name, message):
    for given in (str(uploads / name), {"path": str(uploads / name), "orig_name": name}):
        with pytest.raises(gr.Error, match=message):
            app.edit(given, "make it blue", **FAST)
        with pytest.raises(gr.Error, match=message):
            list(app.chat({"text": "What is it?", "files": [given]}, [], None))


def test_an_upload_as_gradio_hands_it_over_is_edited(app, uploads):
    images = app.edit({"path": str(uploads / "photo.png"), "orig_name": "photo.png"}, "make it blue", **FAST)
    assert len(images) == 1


def test_messages_name_uploads_without_the_servers_folders(app, uploads):
    folder = Path(gradio_upload_folder()) / "0123abcd-openuni-test"
    folder.mkdir(parents=True, exist_ok=True)
    upload = folder / "notes.png"
    upload.write_bytes(b"not a picture")
    try:
        with pytest.raises(gr.Error) as raised:
            app.edit(str(upload), "make it blue")
    finally:
        upload.unlink()
        folder.rmdir()
    assert "image notes.png: not an image format" in raised.value.message
    assert str(folder) not in raised.value.message and gradio_upload_folder() not in raised.value.message


def test_user_errors_are_logged_as_one_line(app, caplog, capfd):
    with caplog.at_level(logging.WARNING, logger="openuni.demo"):
        with pytest.raises(gr.Error) as raised:
            app.generate("   ")
    assert raised.value.print_exception is False  # gradio would print a traceback otherwise
    logged = [record.getMessage() for record in caplog.records if record.name == "openuni.demo"]
    assert logged == ["demo generate: the prompt is empty"]
    assert "Traceback" not in capfd.readouterr().err


def test_a_bad_chat_attachment_leaves_the_page_usable(app, uploads):
    """Before: the error covered the chat and the message box, and Enter sent the bad file again."""
    good = [*app.chat_event({"text": "Hello?", "files": []}, [], None, 8, 0)][-1]
    shown, _, conversation, _ = good
    bad = {"text": "And this?", "files": [{"path": str(uploads / "notes.png")}]}
    with pytest.warns(UserWarning, match="image notes.png: not an image format"):
        updates = list(app.chat_event(bad, shown, conversation, 8, 0))
    assert updates == [(shown, shown, conversation, {"text": "And this?", "files": []})]  # the file dropped
    assert len(conversation.turns) == 1
    again = list(app.chat_event({"text": "And this?", "files": []}, shown, conversation, 8, 0))[-1]
    assert len(again[2].turns) == 2 and again[1][-1]["role"] == "assistant"


# -- the page over HTTP: what reaches the server when nothing in the browser stands in the way ------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(app, tmp_path_factory):
    """The page on the loopback interface, its uploads in a folder of this test module."""
    temp = tmp_path_factory.mktemp("gradio-temp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(temp))
        page = app.build()
        port = free_port()
        page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield f"http://127.0.0.1:{port}", page, temp
        finally:
            page.close()


def raw_call(url: str, api: str, body: str) -> tuple[str, dict | list | None]:
    """POST a request body as typed (JSON with NaN, text where numbers go) and read the event it ends with."""
    import httpx

    response = httpx.post(f"{url}/gradio_api/call/{api}", content=body, headers={"content-type": "application/json"},
                          timeout=60)
    response.raise_for_status()
    event_id = response.json()["event_id"]
    with httpx.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}", timeout=120) as stream:
        text = "".join(stream.iter_text())
    event = text.split("event: ")[-1].split("\n", 1)
    return event[0].strip(), json.loads(event[1].split("data: ", 1)[1])


RAW_ROWS = [
    ('["a cat", "", NaN, 1, 4.5, 64, 64, 1]', "the seed must be between 0 and"),
    ('["a cat", "", "abc", 1, 4.5, 64, 64, 1]', "the seed must be a number, got 'abc'"),
    ('["a cat", "", 3, "two", 4.5, 64, 64, 1]', "the number of steps must be a number"),
    ('["a cat", "", 3, 1, NaN, 64, 64, 1]', "the guidance scale must be between 0 and 20"),
    ('["a cat", "", 3, 1, Infinity, 64, 64, 1]', "the guidance scale must be between 0 and 20"),
    ('["a cat", "", 3, 1, 4.5, "wide", 64, 1]', "the width must be a number"),
    ('["a cat", "", 3, 1, 4.5, 64, 64, -1]', "the number of images must be between 1 and 8"),
    ('["a cat", "", 3, 1, 4.5, 100000, 64, 1]', "the width must be between 32 and 2048"),
    ('["a cat", "", 1e400, 1, 4.5, 64, 64, 1]', "the seed must be between"),
    (json.dumps(["w" * 20_000, "", 3, 1, 4.5, 64, 64, 1]), "prompt is 20000 characters long"),
    ('[42, "", 3, 1, 4.5, 64, 64, 1]', "the prompt must be text"),
]


@pytest.mark.parametrize("data, message", RAW_ROWS)
def test_raw_api_values_get_our_message(served, data, message):
    """Before: gradio's own number parsing failed first ("cannot convert float NaN to integer"), and the visitor
    saw an error without any message."""
    kind, payload = raw_call(served[0], "generate", f'{{"data": {data}}}')
    assert kind == "error" and payload is not None and message in payload["error"], payload


def test_a_good_raw_request_still_generates(served):
    kind, payload = raw_call(served[0], "generate", '{"data": ["a cat", "", 3, 1, 4.5, 64, 64, 1]}')
    assert kind == "complete" and len(payload[0]) == 1


@pytest.mark.parametrize("name, message", UPLOAD_ROWS)
def test_uploads_that_are_no_images_get_our_message(served, uploads, capfd, name, message):
    """Before: gradio opened the upload itself and failed before our handler, with no explanation."""
    client = gradio_client.Client(served[0] + "/", verbose=False)
    with pytest.raises(gradio_client.exceptions.AppError) as raised:
        client.submit(gradio_client.handle_file(str(uploads / name)), "make it blue", "", 1, 1, 4.5, 1,
                      api_name="/edit").result(timeout=120)
    assert message in str(raised.value) and str(served[2]) not in str(raised.value)
    assert "Traceback" not in capfd.readouterr().err


def test_a_bad_attachment_over_http_keeps_the_chat_going(served, uploads):
    client = gradio_client.Client(served[0] + "/", verbose=False)
    bad = {"text": "What is it?", "files": [gradio_client.handle_file(str(uploads / "notes.png"))]}
    shown, box = client.submit(bad, 8, 0, api_name="/chat").result(timeout=120)
    assert shown == [] and box == {"text": "What is it?", "files": []}
    shown, box = client.submit({"text": "Hello?", "files": []}, 8, 0, api_name="/chat").result(timeout=120)
    assert [m["role"] for m in shown] == ["user", "assistant"]


def test_uploads_are_deleted_when_the_server_stops(app, uploads, tmp_path, monkeypatch):
    temp = tmp_path / "gradio-temp"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(temp))
    page = app.build()
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        client.submit(gradio_client.handle_file(str(uploads / "photo.png")), "make it blue", "", 1, 1, 4.5, 1,
                      api_name="/edit").result(timeout=120)
        assert [p for p in temp.rglob("*") if p.is_file()]  # the upload and the result, while serving
    finally:
        page.close()
    assert not [p for p in temp.rglob("*") if p.is_file()]
