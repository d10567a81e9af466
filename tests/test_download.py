"""`openuni download` and the Hub parts of a variant: what is fetched from where, one error naming every missing
part (offline, or a Hub that does not answer), and a pipeline directory assembled from the cache."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from openuni.cli import main
from openuni.errors import OpenUniError
from openuni.hub import variant_parts
from openuni.variants import RELEASE_REPO, VARIANTS

from conftest import load_tiny_pipeline

COMMIT = "0" * 40


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_plan_names_every_part_of_each_variant(name):
    spec = VARIANTS[name]
    for stage, suffix in (("finetune", "blip3o60k"), ("pretrain", "text2image23m")):
        parts = variant_parts(name, stage)
        assert {p: parts[p].repo for p in parts} == {
            "mllm": spec.mllm_repo, "transformer": spec.transformer_repo, "vae": spec.vae_repo,
            "checkpoint": RELEASE_REPO}
        assert parts["checkpoint"].filename == f"{spec.checkpoint_stem}_{suffix}.pth"
        # The SANA repo is fetched with its scheduler, the MLLM with its tokenizer, never pickled weights.
        assert set(parts["transformer"].patterns) == {"transformer/*", "scheduler/*"}
        assert "*.model" in parts["mllm"].patterns and not any(".bin" in p for p in parts["mllm"].patterns)


def offline(monkeypatch, cache):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def assert_lists_every_part(message: str, variant: str, stage_flag: str = "") -> None:
    for part in variant_parts(variant, "pretrain" if stage_flag else "finetune").values():
        assert part.repo in message and part.flag in message
    assert f"`openuni download {variant}{stage_flag}`" in message


def test_offline_the_one_error_lists_every_missing_part(tiny, tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path / "empty-cache")
    with pytest.raises(OpenUniError) as caught:
        load_tiny_pipeline(tiny, mllm=None, transformer=None, vae=None, checkpoint=None)
    assert_lists_every_part(str(caught.value), "openuni-b-512")
    # Parts given locally are not listed as missing.
    with pytest.raises(OpenUniError) as caught:
        load_tiny_pipeline(tiny, transformer=None)
    assert "Efficient-Large-Model/Sana_600M_512px_diffusers" in str(caught.value)
    assert "1 part(s)" in str(caught.value) and "InternVL3-1B" not in str(caught.value)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_an_unreachable_hub_gives_the_same_single_error(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_CACHE": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-m", "openuni.cli", "generate", "a cat", "--variant", "openuni-l-1024",
                           "--stage", "pretrain", "--device", "cpu"], env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0]
    assert_lists_every_part(lines[0], "openuni-l-1024", " --stage pretrain")


def fill_cache(cache, tiny) -> None:
    """The tiny model's parts in the Hub cache's layout, under the real repos' names."""
    parts = variant_parts("openuni-b-512", "finetune")

    def snapshot(repo):
        folder = cache / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(COMMIT)
        return folder / "snapshots" / COMMIT

    shutil.copytree(tiny.mllm, snapshot(parts["mllm"].repo))
    sana = snapshot(parts["transformer"].repo)
    shutil.copytree(tiny.transformer, sana / "transformer")
    shutil.copytree(tiny.scheduler, sana / "scheduler")
    shutil.copytree(tiny.vae, snapshot(parts["vae"].repo))
    release = snapshot(RELEASE_REPO)
    release.mkdir(parents=True)
    shutil.copy(tiny.checkpoint, release / parts["checkpoint"].filename)


def test_a_directory_written_from_the_cache_loads_with_model(tiny, tiny_pipe, tmp_path, monkeypatch, capsys):
    from openuni.commands.download import save_variant
    from openuni.pipeline import OpenUniPipeline

    fill_cache(tmp_path / "cache", tiny)
    offline(monkeypatch, tmp_path / "cache")
    # Everything is cached: the command finds every part without the Hub.
    assert main(["download", "openuni-b-512"]) == 0
    assert "--variant openuni-b-512" in capsys.readouterr().out
    save_variant("openuni-b-512", "finetune", tmp_path / "model", connector_heads=tiny.connector_heads)
    loaded = OpenUniPipeline.from_pretrained(tmp_path / "model")
    for name in ("connector", "transformer", "vae"):
        before, after = getattr(tiny_pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    assert main(["generate", "a red cube", "--model", str(tmp_path / "model"), "--steps", "2", "--height", "64",
                 "--width", "64", "--device", "cpu", "-o", str(tmp_path / "cube.png")]) == 0
    assert (tmp_path / "cube.png").is_file()


def test_download_keeps_the_hubs_progress_bars_and_refuses_a_dtype_without_dir(tmp_path):
    """Downloading is the command's job, so its progress bars stay on (every other command hides them); --dtype
    only means something for the folder --dir writes. (Fresh processes: the CLI quiets the libraries through their
    environment settings before it imports them.)"""
    import os
    import subprocess
    import sys

    probe = ("import os, sys; from openuni.cli import main; code = main(sys.argv[1:]); "
             "print('bars-hidden' if os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS') == '1' else 'bars-shown'); "
             "sys.exit(code)")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}

    def run(*argv):
        return subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env,
                              timeout=120)

    download = run("download", "openuni-b-512", "--dtype", "bfloat16")
    assert download.returncode == 2 and "give --dir with it" in download.stderr
    assert download.stdout.strip() == "bars-shown"
    generate = run("generate", "")
    assert generate.returncode == 2 and generate.stdout.strip() == "bars-hidden"
