"""`openuni chat` at a real terminal (a pty, through pexpect) on the tiny model: readline line editing and history,
confirmations of /image and /reset, Ctrl-C that stops an answer, Ctrl-D that leaves the shell a fresh line."""

from __future__ import annotations

import sys

import numpy as np
import PIL.Image
import pytest

pexpect = pytest.importorskip("pexpect", reason="the terminal test needs pexpect (test extra)")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")

PROMPT = "> "


@pytest.fixture
def terminal(tiny):
    child = pexpect.spawn(sys.executable, ["-m", "openuni.cli", "chat", "--mllm", str(tiny.mllm), "--device", "cpu",
                                           "--max-new-tokens", "2000"],
                          encoding="utf-8", timeout=120, dimensions=(40, 200))
    child.expect_exact("commands: /image")
    child.expect_exact(PROMPT)
    yield child
    child.close(force=True)


def test_a_session_at_the_terminal(terminal, tmp_path):
    picture = tmp_path / "picture.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(picture)

    terminal.send(f"/image {picture}\r")
    terminal.expect_exact(f"attached {picture} to the next question")
    terminal.expect_exact(PROMPT)
    terminal.send("/reset\r")
    terminal.expect_exact("new conversation")
    terminal.expect_exact(PROMPT)

    # Up recalls the last line (readline); without it the terminal would send the line "^[[A" to the chat.
    terminal.send("\x1b[A")
    terminal.expect_exact("/reset")
    terminal.send("\r")
    terminal.expect_exact("new conversation")
    terminal.expect_exact(PROMPT)
    # Left arrow moves inside the line: "/rset", three to the left, "e": "/reset".
    terminal.send("/rset\x1b[D\x1b[D\x1b[De\r")
    terminal.expect_exact("new conversation")
    terminal.expect_exact(PROMPT)
    assert "^[[" not in terminal.before and "unknown command" not in terminal.before

    # Ctrl-C in the middle of an answer stops it; the session goes on.
    # The tiny model can stream its whole answer before the Ctrl-C lands (the prompt then takes it): ask again.
    for _ in range(3):
        terminal.send("What is in this picture? Describe the colors and the objects.\r")
        terminal.expect_exact("objects.\r\n")
        terminal.expect(r"\S")  # the answer has begun
        terminal.sendintr()
        stopped = terminal.expect_exact(["answer stopped", "Ctrl-D or /exit quits"]) == 0
        terminal.expect_exact(PROMPT)
        if stopped:
            break
    assert stopped, "Ctrl-C never stopped an answer in three tries"
    assert "finished outputs" not in terminal.before
    # Ctrl-C at the prompt says how to quit; Ctrl-D quits on a fresh line.
    terminal.sendintr()
    terminal.expect_exact("Ctrl-D or /exit quits")
    terminal.expect_exact(PROMPT)
    terminal.sendeof()
    terminal.expect(pexpect.EOF)
    assert terminal.before == "\r\n"  # the shell's prompt starts on its own line
    terminal.close()
    assert terminal.exitstatus == 0
