"""Benchmark generation: official layouts, resume, and images independent of process count and batch size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import tiny_cli_args
from openuni.cli import main
from openuni.errors import OpenUniError
from openuni.evaluation.generate import generate_benchmark
from openuni.sampling import SamplingOptions
from openuni.evaluation.prompts import load_dpg, load_geneval, load_wise
from tolerances import assert_images_close

SRC = Path(__file__).resolve().parents[1] / "src"
SETTINGS = SamplingOptions(seed=42, steps=2, height=64, width=64)
GENEVAL_LINES = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
     "prompt": "a photo of two clocks"},
    {"tag": "position", "include": [{"class": "kite", "count": 1}, {"class": "dog", "count": 1,
                                                                    "position": ["above", 0]}],
     "prompt": "a photo of a dog above a kite"},
]


def geneval_file(folder: Path) -> Path:
    path = folder / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in GENEVAL_LINES))
    return path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_geneval_layout(tiny_pipe, tmp_path):
    prompts = load_geneval(geneval_file(tmp_path))
    out = tmp_path / "out"
    generate_benchmark(tiny_pipe, "geneval", prompts, out, SETTINGS, batch_size=8, show_progress=False)
    expected = {f"{i:05d}/metadata.jsonl" for i in range(3)} | {f"{i:05d}/samples/{k:04d}.png"
                                                               for i in range(3) for k in range(4)}
    assert files_under(out) == expected | {"openuni_run.json"}
    for i, line in enumerate(GENEVAL_LINES):
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == line
    direct = tiny_pipe(GENEVAL_LINES[1]["prompt"], height=64, width=64, num_inference_steps=2,
                       num_images_per_prompt=4, seed=42, output_type="np").images
    for k in range(4):  # the run batched 2 prompts, this call 1: equal within the promise
        assert_images_close(pixels(out / "00001" / "samples" / f"{k:04d}.png"), direct[k])


def test_dpg_layout_is_a_row_major_grid(tiny_pipe, tmp_path):
    (tmp_path / "prompts").mkdir()
    for item_id, text in (("12", "a red cube"), ("partiprompts7", "a blue sphere")):
        (tmp_path / "prompts" / f"{item_id}.txt").write_text(text + "\n")
    out = tmp_path / "out"
    generate_benchmark(tiny_pipe, "dpg", load_dpg(tmp_path), out, SETTINGS, batch_size=4, show_progress=False)
    assert files_under(out) == {"12.png", "partiprompts7.png", "openuni_run.json"}
    grid = pixels(out / "12.png")
    assert grid.shape == (128, 128, 3)
    direct = tiny_pipe("a red cube", height=64, width=64, num_inference_steps=2, num_images_per_prompt=4, seed=42,
                       output_type="np").images
    tiles = [grid[:64, :64], grid[:64, 64:], grid[64:, :64], grid[64:, 64:]]
    for tile, image in zip(tiles, direct):
        assert np.array_equal(tile, image)


def test_wise_layout(tiny_pipe, tmp_path):
    records = [{"prompt_id": 401, "Prompt": "the tallest building in 2020", "Category": "Time"},
               {"prompt_id": 402, "Prompt": "a frozen lake", "Category": "Time"}]
    (tmp_path / "spatio.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    generate_benchmark(tiny_pipe, "wise", load_wise(tmp_path / "spatio.json"), out, SETTINGS, show_progress=False)
    assert files_under(out) == {"401.png", "402.png", "openuni_run.json"}
    assert PIL.Image.open(out / "401.png").size == (64, 64)


def test_resume_skips_finished_and_redoes_truncated(tiny_pipe, tmp_path):
    prompts = load_geneval(geneval_file(tmp_path))
    out = tmp_path / "out"
    generate_benchmark(tiny_pipe, "geneval", prompts, out, SETTINGS, batch_size=4, show_progress=False)
    originals = {p: p.read_bytes() for p in out.rglob("*.png")}
    truncated, deleted = out / "00001" / "samples" / "0002.png", out / "00002" / "samples" / "0000.png"
    truncated.write_bytes(originals[truncated][: len(originals[truncated]) // 2])
    deleted.unlink()
    (out / "00002" / "samples" / ".0000.png.partial").write_bytes(b"half")  # an interrupted write
    untouched = {p: p.stat().st_mtime_ns for p in originals if p.parent.parent.name == "00000"}

    record = generate_benchmark(tiny_pipe, "geneval", prompts, out, SETTINGS, batch_size=4, show_progress=False)
    assert record["generated_here"] == 2  # prompts 1 and 2; prompt 0 was complete
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == originals
    assert not (out / "00002" / "samples" / ".0000.png.partial").exists()

    with pytest.raises(OpenUniError, match="other settings"):
        generate_benchmark(tiny_pipe, "geneval", prompts, out, SamplingOptions(seed=7, steps=2, height=64, width=64),
                           show_progress=False)
    assert json.loads((out / "openuni_run.json").read_text())["finished"] is True


def test_resume_inside_a_batch_reproduces_the_uninterrupted_bytes(tiny_pipe, tmp_path):
    """Prompts 0 and 1 share a batch; redoing prompt 1 alone would round differently, so the batch is redone whole."""
    prompts = load_geneval(geneval_file(tmp_path))
    out = tmp_path / "out"
    generate_benchmark(tiny_pipe, "geneval", prompts, out, SETTINGS, batch_size=8, show_progress=False)
    originals = {p: p.read_bytes() for p in out.rglob("*.png")}
    for sample in (out / "00001" / "samples").glob("*.png"):
        sample.unlink()
    kept = {p: p.stat().st_mtime_ns for p in originals if p.parent.parent.name == "00000"}
    calls = []

    def recording_pipe(batch, **kwargs):
        calls.append(list(batch))
        return tiny_pipe(batch, **kwargs)

    record = generate_benchmark(recording_pipe, "geneval", prompts, out, SETTINGS, batch_size=8, show_progress=False)
    assert record["generated_here"] == 1
    assert calls == [[prompts[0].text, prompts[1].text]]  # the batch as first planned, not prompt 1 alone
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == originals
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished images are not rewritten


def test_an_interrupted_run_keeps_its_settings(tiny_pipe, tmp_path):
    prompts = load_geneval(geneval_file(tmp_path))
    out = tmp_path / "out"

    class Interrupted(Exception):
        pass

    def interrupting_pipe(*args, **kwargs):
        raise Interrupted  # the first batch never finishes

    with pytest.raises(Interrupted):
        generate_benchmark(interrupting_pipe, "geneval", prompts, out, SETTINGS, show_progress=False)
    assert json.loads((out / "openuni_run.json").read_text())["finished"] is False
    with pytest.raises(OpenUniError, match="steps: 2 -> 3"):
        generate_benchmark(tiny_pipe, "geneval", prompts, out, SamplingOptions(steps=3, height=64, width=64),
                           show_progress=False)


def test_batch_size_does_not_change_images(tiny_pipe, tmp_path):
    prompts = load_geneval(geneval_file(tmp_path))
    for batch_size in (1, 12):
        generate_benchmark(tiny_pipe, "geneval", prompts, tmp_path / str(batch_size), SETTINGS,
                           batch_size=batch_size, show_progress=False)
    for path in (tmp_path / "1").rglob("*.png"):
        other = tmp_path / "12" / path.relative_to(tmp_path / "1")
        # Same noise and conditioning; only the batched kernels' float rounding may move a pixel by one level.
        assert np.abs(pixels(path) - pixels(other)).max() <= 1


def test_two_processes_write_the_same_bytes_as_one(tiny, tmp_path):
    metadata = geneval_file(tmp_path)
    two = tmp_path / "two"
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    with socket.socket() as probe:  # a free port: other test runs may share this machine
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               "-m", "openuni.cli", "eval", "geneval", "--output", str(two), "--prompts", str(metadata),
               "--steps", "2", "--height", "64", "--width", "64", "--batch-size", "4", *tiny_cli_args(tiny)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((two / "openuni_run.json").read_text())["num_processes"] == 2

    from conftest import load_tiny_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process runs: float sums then round alike
    try:
        pipe = load_tiny_pipeline(tiny)
        pipe.set_progress_bar_config(disable=True)
        one = tmp_path / "one"
        generate_benchmark(pipe, "geneval", load_geneval(metadata), one, SETTINGS, batch_size=4, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    images = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(images) == 12 and images == sorted(p.relative_to(two) for p in two.rglob("*.png"))
    for relative in images:
        assert (one / relative).read_bytes() == (two / relative).read_bytes(), relative


def test_cli_generates_and_reports_bad_input(tiny, tmp_path, capsys):
    records = [{"prompt_id": 1, "Prompt": "a lantern festival", "Category": "Cultural"}]
    (tmp_path / "cultural.json").write_text(json.dumps(records))
    out = tmp_path / "wise"
    base = ["eval", "wise", "--output", str(out), "--prompts", str(tmp_path / "cultural.json"), "--height", "64",
            "--width", "64", *tiny_cli_args(tiny)]
    assert main([*base, "--steps", "1"]) == 0
    assert files_under(out) == {"1.png", "openuni_run.json"}
    assert main([*base, "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert main([*base, "--steps", "2"]) == 2  # other settings than the images already there
    assert "other settings" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["eval", "geneval", "--output", str(tmp_path / "file"), *tiny_cli_args(tiny)]) == 2
    # Scoring checks its inputs before loading any judge or detector.
    assert main(["eval", "score", "dpg", str(tmp_path / "nowhere")]) == 2
    assert main(["eval", "score", "dpg", str(out), "--questions", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: no such file" in capsys.readouterr().err
    assert main(["eval", "score", "geneval", str(out)]) == 2
    assert "no GenEval samples" in capsys.readouterr().err


def test_each_launched_process_takes_its_own_device():
    from openuni.commands.eval import process_device

    rank_3 = torch.device("cuda", 3)  # what accelerate gives the process of local rank 3
    assert process_device(None, rank_3) == "cuda:3"
    assert process_device("cuda", rank_3) == "cuda:3"  # not cuda:0 for all eight processes
    assert process_device("cuda:1", rank_3) == "cuda:1"  # an explicit index is the user's choice
    assert process_device("cpu", torch.device("cpu")) == "cpu"


def test_rewrite_is_recorded_and_never_mixed_with_plain_images(tiny_pipe, tmp_path):
    from openuni.rewriting import rewrite_prompts

    path = tmp_path / "cultural.json"
    path.write_text(json.dumps([{"prompt_id": 1, "Prompt": "a lantern festival", "Category": "Cultural"}]))
    prompts = load_wise(path)
    out = tmp_path / "wise"
    generate_benchmark(tiny_pipe, "wise", prompts, out, SETTINGS, show_progress=False, rewrite=True)
    with PIL.Image.open(out / "1.png") as image:
        record = json.loads(image.info["openuni"])
    assert record["settings"]["rewrite"] is True
    assert record["rewritten_prompt"] == rewrite_prompts(tiny_pipe, ["a lantern festival"])[0]
    with pytest.raises(OpenUniError, match="other settings"):
        generate_benchmark(tiny_pipe, "wise", prompts, out, SETTINGS, show_progress=False)
    # Resumed with --rewrite again, the image is recognised as this run's.
    assert generate_benchmark(tiny_pipe, "wise", prompts, out, SETTINGS, show_progress=False,
                              rewrite=True)["generated_here"] == 0
