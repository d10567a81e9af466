"""The web demo as a visitor sees it: `openuni demo` on the tiny model, driven in a real headless chromium.

Generate (a wide image, shown whole), a bad input (a one-line message in the page), Edit (an uploaded image) and
Chat (an answer appears), and the start-up banner. Needs Debian's chromium (`apt-get install chromium`; .ci/run
installs it) and the `playwright` package (test extra); skips with the reason otherwise.
"""

from __future__ import annotations

import io
import os
import queue
import shutil
import subprocess
import sys
import threading

import numpy as np
import PIL.Image
import pytest

from conftest import tiny_cli_args

pytest.importorskip("gradio", reason="the demo needs gradio (pip install -e '.[demo]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (test extra)")

CHROMIUM = next((path for path in (os.environ.get("OPENUNI_TEST_CHROMIUM"), shutil.which("chromium"),
                                   shutil.which("chromium-browser")) if path), None)
# Headless and quiet: no GPU, no sandbox (CI runs as root), nothing fetched from the network by the browser itself.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
WAIT_MS = 120_000  # a tiny-model request takes seconds; a loaded CI machine gets room


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo_server(tiny):
    """`openuni demo` in its own process, as a user starts it; yields (url, what it printed before serving)."""
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "-m", "openuni.cli", "demo", "--port", str(port), *tiny_cli_args(tiny)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    printed = []
    try:
        while not any("running on" in line for line in printed[:-1]):  # the banner is two lines
            try:
                printed.append(lines.get(timeout=180))
            except queue.Empty:
                pytest.fail(f"the demo did not start: {''.join(printed)}")
            if server.poll() is not None and lines.empty():
                pytest.fail(f"the demo exited: {''.join(printed)}")
        yield f"http://127.0.0.1:{port}/", "".join(printed)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, demo_server):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(demo_server[0])
    yield page
    page.close()


def shown_content_box(element) -> tuple[int, int]:
    """(width, height) of the picture as drawn in a screenshot of `element`: the number of rows and columns that are
    not nearly flat (the letterbox around a contained picture is flat; the gallery's label on it nearly so)."""
    shot = np.asarray(PIL.Image.open(io.BytesIO(element.screenshot())).convert("L")).astype(float)
    rows, columns = int((shot.std(axis=1) > 25).sum()), int((shot.std(axis=0) > 25).sum())
    assert rows and columns, "the image is blank"
    return columns, rows


def picture_pixels(element) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(element.screenshot())).convert("RGB"))


def test_the_banner_names_our_flags(demo_server):
    url, printed = demo_server
    assert f"OpenUni demo running on {url}" in printed
    assert "--share" in printed and "share=True" not in printed and "launch()" not in printed


def test_generate_shows_a_wide_image_whole_and_a_bad_input_as_one_line(page):
    page.get_by_label("Prompt", exact=True).fill("a red cube")
    page.get_by_label("Width").fill("128")
    page.get_by_label("number input for Steps").first.fill("4")
    page.get_by_role("button", name="Generate", exact=True).click()
    picture = page.locator("button.thumbnail-item img").first
    picture.wait_for()
    assert picture.evaluate("e => [e.naturalWidth, e.naturalHeight]") == [128, 64]
    pixels = picture_pixels(picture)
    assert pixels.std() > 10, "the generated image is blank"
    # Drawn whole at its own aspect ratio, not cropped to the square thumbnail box.
    width, height = shown_content_box(picture)
    assert width / height == pytest.approx(2.0, rel=0.1), (width, height)

    page.get_by_label("Prompt", exact=True).fill("")
    page.get_by_role("button", name="Generate", exact=True).click()
    toast = page.locator("[data-testid='toast-body']").first
    toast.wait_for()
    message = toast.inner_text().splitlines()[-1]
    assert message == "the prompt is empty", toast.inner_text()


def test_edit_shows_the_edited_upload(page, tmp_path):
    source = tmp_path / "source.png"
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(source)
    page.get_by_role("tab", name="Edit").click()
    panel = page.get_by_role("tabpanel")
    panel.locator("input[type=file]").set_input_files(str(source))
    panel.locator("img").first.wait_for()  # the upload is shown before the request goes
    panel.get_by_label("Instruction").fill("make it blue")
    panel.get_by_label("number input for Steps").fill("4")
    panel.get_by_role("button", name="Edit", exact=True).click()
    edited = panel.locator("button.thumbnail-item img").first
    edited.wait_for()
    width, height = edited.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert width > height  # the source's landscape shape
    assert picture_pixels(edited).std() > 10, "the edited image is blank"


def test_chat_answers_and_the_box_has_no_raw_label(page):
    page.get_by_role("tab", name="Chat").click()
    panel = page.get_by_role("tabpanel")
    assert "MultimodalTextbox" not in page.locator("body").inner_text()
    box = panel.get_by_placeholder("Ask about images")
    box.fill("What is in this picture?")
    box.press("Enter")
    answer = panel.locator("[data-testid='bot']").first
    answer.wait_for()
    page.wait_for_function("() => !document.querySelector('.generating, .pending')", timeout=WAIT_MS)
    assert panel.locator("[data-testid='user']").first.inner_text().strip() == "What is in this picture?"
    assert answer.inner_text().strip(), "the answer is empty"
