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
    from openuni.loading import load_pipeline

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
    return ["--mllm", str(tiny.mllm), "--transformer", str(tiny.transformer), "--vae", str(tiny.vae),
            "--checkpoint", str(tiny.checkpoint), "--connector-heads", str(tiny.connector_heads), "--device", "cpu"]
