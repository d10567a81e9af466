"""Start-up stays light: `import openuni`, `openuni --help` and a command refusing bad input import no torch,
diffusers, transformers, peft or scipy (their import is most of a command's start-up; benchmarks/startup.py times it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "peft", "scipy")
PROBE = """
import json, sys
from openuni.cli import main
try:
    code = main({argv!r})
except SystemExit as done:
    code = done.code
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["generate", "--help"], 0),
    (["generate", ""], 2),  # empty prompt: refused before any model library is imported
    (["edit", "--help"], 0),
])
def test_command_line_starts_without_heavy_libraries(argv, code):
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)], capture_output=True,
                          text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"code": code, "heavy": []}, done.stderr


def test_import_openuni_is_light():
    done = subprocess.run([sys.executable, "-c", f"import sys, openuni; print([m for m in {HEAVY!r} if m in sys.modules])"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
