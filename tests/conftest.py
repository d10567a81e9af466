"""Shared fixtures: one tiny OpenUni written to disk per test session, and a pipeline loaded from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

PARITY_DIR = Path(__file__).resolve().parents[2] / "shared" / "parity"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from openuni.tiny import build_tiny_openuni

    return build_tiny_openuni(tmp_path_factory.mktemp("tiny-openuni"))


def load_tiny_pipeline(tiny, **overrides):
    from openuni.pipeline import load_pipeline

    kwargs = dict(
        mllm=tiny.mllm, transformer=tiny.transformer, vae=tiny.vae, scheduler=tiny.scheduler,
        checkpoint=tiny.checkpoint, connector_heads=tiny.connector_heads, device="cpu",
    )
    kwargs.update(overrides)
    return load_pipeline("openuni-b-512", **kwargs)


@pytest.fixture(scope="session")
def tiny_pipe(tiny):
    pipe = load_tiny_pipeline(tiny)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_cli_args(tiny) -> list[str]:
    # float32: the commands' outputs are compared with `tiny_pipe`'s (`--dtype auto` is bf16 on AMX/AVX512-BF16 CPUs)
    return ["--mllm", str(tiny.mllm), "--transformer", str(tiny.transformer), "--vae", str(tiny.vae),
            "--checkpoint", str(tiny.checkpoint), "--connector-heads", str(tiny.connector_heads), "--device", "cpu",
            "--dtype", "float32"]


def load_parity_pipeline():
    """The reference's tiny golden components (../shared/parity), loaded through the public API."""
    from openuni.pipeline import load_pipeline

    if not (PARITY_DIR / "expected.pt").is_file():
        pytest.skip(f"no parity fixtures at {PARITY_DIR} (they ship beside the project's CI checkout, not with it)")
    pipe = load_pipeline(
        "openuni-b-512", mllm=PARITY_DIR / "mllm", tokenizer=PARITY_DIR / "tokenizer",
        transformer=PARITY_DIR / "transformer", vae=PARITY_DIR / "vae", scheduler=PARITY_DIR / "scheduler",
        checkpoint=PARITY_DIR / "openuni_tiny.pth", connector_heads=4, device="cpu", dtype=torch.float32,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def parity_pipe():
    return load_parity_pipeline()


@pytest.fixture(scope="session")
def golden():
    """expected.pt, cases.json and the official comparison function of the parity fixtures."""
    import importlib.util
    import json

    if not (PARITY_DIR / "expected.pt").is_file():
        pytest.skip(f"no parity fixtures at {PARITY_DIR}")
    spec = importlib.util.spec_from_file_location("compare_golden", PARITY_DIR / "compare_golden.py")
    compare_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_golden)
    expected = torch.load(PARITY_DIR / "expected.pt", map_location="cpu", weights_only=True)
    cases = json.loads((PARITY_DIR / "cases.json").read_text())
    return expected, cases, compare_golden.compare


@pytest.fixture(autouse=True)
def torch_default_dtype_is_left_alone():
    """A test (or a library under it) that leaves torch's default dtype changed fails, and the dtype is restored, so
    the change cannot silently turn every later test's tensors bf16."""
    yield
    leaked = torch.get_default_dtype()
    if leaked != torch.float32:
        torch.set_default_dtype(torch.float32)
        pytest.fail(f"torch's default dtype was left at {leaked}")
