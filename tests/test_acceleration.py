"""The speed and memory options give the plain path's images; the benchmark script runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from openuni.acceleration import compile_pipeline, enable_vae_memory_savers

from conftest import load_tiny_pipeline

FAST = dict(num_inference_steps=3, height=64, width=64, seed=5, output_type="pt")
REPO = Path(__file__).resolve().parents[1]


def test_compiled_pipeline_gives_the_plain_images(tiny):
    pipe = load_tiny_pipeline(tiny)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(["a red cube", "a dog"], **FAST).images
    compile_pipeline(pipe)
    compiled = pipe(["a red cube", "a dog"], **FAST).images
    assert (compiled - plain).abs().max() < 1e-4


def test_vae_slicing_is_exact_and_tiling_keeps_sizes(tiny_pipe):
    latents = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(0))  # 1024 px, as L-1024
    plain = tiny_pipe.decode(latents, "pt")
    try:
        enable_vae_memory_savers(tiny_pipe, tiling=False, slicing=True)
        assert (tiny_pipe.decode(latents, "pt") - plain).abs().max() < 1e-4
        # Tiled decode (512 px tiles, overlaps blended) is approximate by design: DC-AE's attention is global.
        enable_vae_memory_savers(tiny_pipe, tiling=True, slicing=True)
        tiled = tiny_pipe.decode(latents, "pt")
        assert tiled.shape == plain.shape and torch.isfinite(tiled).all()
        assert not torch.equal(tiled, plain)
        small = latents[:, :, :16, :16]  # 512 px: one tile, so decoded exactly as without tiling
        assert (tiny_pipe.decode(small, "pt") - pipe_plain_decode(tiny_pipe, small)).abs().max() < 1e-4
    finally:
        tiny_pipe.vae.disable_tiling()
        tiny_pipe.vae.disable_slicing()


def pipe_plain_decode(pipe, latents):
    tiling, slicing = pipe.vae.use_tiling, pipe.vae.use_slicing
    pipe.vae.use_tiling = pipe.vae.use_slicing = False
    try:
        return pipe.decode(latents, "pt")
    finally:
        pipe.vae.use_tiling, pipe.vae.use_slicing = tiling, slicing


def test_benchmark_script_runs_on_the_tiny_model(tmp_path):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    command = [sys.executable, str(REPO / "benchmarks" / "generate.py"), "--geometry", "tiny", "--device", "cpu",
               "--batch-sizes", "1", "2", "--rounds", "1", "--steps", "3", "--arms", "sana", "guidance-interval",
               "conv-matmul", "--json", str(out_json), "--markdown", str(out_md)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(out_json.read_text())
    rows = {(row["arm"], row["batch"]): row for row in result["rows"]}
    assert set(rows) == {(arm, batch) for arm in ("sana", "guidance-interval", "conv-matmul") for batch in (1, 2)}
    assert all(row["ratio"] > 0 and row["cpu_ratio"] > 0 and len(row["ratios"]) == 1 for row in rows.values())
    # SanaPipeline on the same components gives our images; 1x1 convolutions as matmuls are exact.
    assert all(rows["sana", b]["drift"]["max_levels"] <= 2 for b in (1, 2))
    assert all(rows["conv-matmul", b]["exact_within_5e-5"] for b in (1, 2))
    assert rows["guidance-interval", 1]["drift"]["max_levels"] > 0  # not the same path
    assert abs(sum(result["split_of_plain_runs"].values()) - 1) < 1e-6
    table = out_md.read_text()
    assert "| conv-matmul, convs_replaced 5 | 2 |" in table  # 2 blocks x 2 GLUMBConv + the patch embedding
    assert "<!-- benchmark:tiny-cpu-float32-sana-guidance-interval-conv-matmul -->" in table


def test_benchmark_tables_replace_their_own_section(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "benchmarks" / "generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    doc = tmp_path / "benchmarks.md"
    bench.write_section(doc, "a", "first A\n")
    bench.write_section(doc, "b", "only B\n")
    bench.write_section(doc, "a", "second A\n")
    text = doc.read_text()
    assert text.count("<!-- benchmark:a -->") == 1 and "second A" in text and "first A" not in text
    assert text.index("second A") < text.index("only B")


def test_offload_stages_each_component_and_keeps_the_images(tiny, tiny_pipe):
    pipe = load_tiny_pipeline(tiny)
    pipe.set_progress_bar_config(disable=True)
    plain = tiny_pipe(["a red cube", "a dog"], **FAST).images
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = next(module.parameters()).device
        return hook

    for name, module in (("mllm", pipe.mllm.model.language_model), ("connector", pipe.connector),
                         ("transformer", pipe.transformer), ("vae", pipe.vae.decoder)):
        module.register_forward_pre_hook(record(name))
    pipe.enable_model_cpu_offload(device="cpu")  # the staging logic is the same for a GPU
    assert pipe._execution_device == torch.device("cpu")
    offloaded = pipe(["a red cube", "a dog"], **FAST).images
    assert torch.equal(offloaded, plain)
    assert set(seen) == {"mllm", "connector", "transformer", "vae"}
    assert all(device.type == "cpu" for device in seen.values())
    assert all(next(getattr(pipe, n).parameters()).device.type == "cpu" for n in ("mllm", "transformer", "vae"))


def test_dtype_auto_is_bf16_exactly_where_the_cpu_has_bf16_instructions(tiny, tmp_path, capsys):
    from openuni.cli import main
    from openuni.devices import choose_dtype, cpu_bf16_instructions

    from conftest import tiny_cli_args

    instructions = cpu_bf16_instructions()
    assert (instructions is not None) == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    dtype, why = choose_dtype("auto", "cpu")
    assert dtype == (torch.bfloat16 if instructions else torch.float32)
    assert choose_dtype("float32", "cpu") == (torch.float32, "as asked")
    args = tiny_cli_args(tiny)
    args[args.index("--dtype") + 1] = "auto"
    out = tmp_path / "auto.png"
    assert main(["generate", "a cat", "-o", str(out), "--steps", "2", "--height", "64", "--width", "64", *args]) == 0
    said = capsys.readouterr().err
    assert f"openuni: {str(dtype).removeprefix('torch.')} on cpu ({why})" in said.splitlines()
    assert out.is_file()


def dit_batches(pipe):
    """The batch size of every call of the DiT's last block (it runs once per uncached step)."""
    seen = []
    handle = pipe.transformer.transformer_blocks[-1].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    return seen, handle


def test_guidance_interval_guides_only_its_steps_and_the_full_interval_is_the_plain_path(tiny_pipe):
    steps = dict(FAST, num_inference_steps=8)
    seen, handle = dit_batches(tiny_pipe)
    try:
        plain = tiny_pipe("a red cube", **steps).images
        assert seen == [2] * 8
        seen.clear()
        assert torch.equal(tiny_pipe("a red cube", guidance_interval=(0.0, 1.0), **steps).images, plain)
        seen.clear()
        interval = tiny_pipe("a red cube", guidance_interval=(0.25, 0.75), **steps).images
        assert seen == [1, 1, 2, 2, 2, 2, 1, 1]  # guidance on steps 2..5 of 8, the conditional branch alone elsewhere
        assert torch.isfinite(interval).all() and not torch.equal(interval, plain)
    finally:
        handle.remove()


def test_step_cache_skips_dit_blocks_and_off_again_gives_the_plain_images(tiny):
    pipe = load_tiny_pipeline(tiny)
    pipe.set_progress_bar_config(disable=True)
    steps = dict(FAST, num_inference_steps=20)
    plain = pipe("a red cube", **steps).images
    seen, handle = dit_batches(pipe)
    try:
        cached = pipe("a red cube", step_cache=1.0, **steps).images  # threshold 1: every step after warm-up cached
        assert 0 < len(seen) < 20 and torch.isfinite(cached).all()
        seen.clear()
        assert torch.equal(pipe("a red cube", **steps).images, plain) and len(seen) == 20
    finally:
        handle.remove()


def test_fast_sampling_flags_reach_every_generation_command(tiny, tmp_path, capsys):
    from openuni.cli import build_parser, main
    from openuni.commands.options import fast_sampling_from_args, sampling_from_args

    from conftest import tiny_cli_args

    parser = build_parser()
    assert sampling_from_args(parser.parse_args(["generate", "x", "--preset", "fast"])).steps == 10
    assert sampling_from_args(parser.parse_args(["generate", "x", "--preset", "fast", "--steps", "7"])).steps == 7
    assert sampling_from_args(parser.parse_args(["generate", "x"])).steps == 20
    for command in (["serve"], ["demo"], ["edit", "a.png", "x"], ["generate", "x"]):
        fast = fast_sampling_from_args(parser.parse_args([*command, "--guidance-interval", "0.1", "0.9"]))
        assert fast.guidance_interval == (0.1, 0.9)
        assert fast_sampling_from_args(parser.parse_args([*command, "--step-cache"])).step_cache == 0.08
    for bad, message in ((["--guidance-interval", "0.8", "0.2"], "0 <= START < END <= 1"),
                         (["--step-cache", "0"], "residual threshold"),
                         (["--step-cache", "--guidance-interval", "0.2", "0.8"], "cannot be combined")):
        assert main(["generate", "x", "-o", str(tmp_path / "x.png"), *bad, *tiny_cli_args(tiny)]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0]
    out = tmp_path / "fast.png"
    assert main(["generate", "a cat", "-o", str(out), "--preset", "faster", "--guidance-interval", "0", "0.5",
                 "--height", "64", "--width", "64", *tiny_cli_args(tiny)]) == 0
    assert out.is_file()


def test_int8_weight_only_quantization_runs_on_the_cpu_close_to_float(tiny, tiny_pipe, tmp_path, capsys):
    from torchao.quantization import Int8Tensor

    from openuni.acceleration import quantize_pipeline
    from openuni.cli import main

    from conftest import tiny_cli_args

    pipe = load_tiny_pipeline(tiny)
    pipe.set_progress_bar_config(disable=True)
    quantize_pipeline(pipe, "int8", "cpu")
    assert isinstance(pipe.transformer.transformer_blocks[0].attn1.to_q.weight, Int8Tensor)
    assert isinstance(pipe.connector.projector.weight, Int8Tensor)
    assert isinstance(pipe.mllm.model.language_model.layers[0].mlp.up_proj.weight, Int8Tensor)
    assert not any(isinstance(p, Int8Tensor) for p in pipe.vae.parameters())
    plain, quantized = tiny_pipe("a red cube", **FAST).images, pipe("a red cube", **FAST).images
    drift = (plain - quantized).abs()
    assert 0 < drift.max() < 0.5 and drift.mean() < 0.05  # per-channel int8 weights: close, not equal
    out = tmp_path / "int8.png"
    assert main(["generate", "a cat", "-o", str(out), "--quantize", "int8", "--steps", "2", "--height", "64",
                 "--width", "64", *tiny_cli_args(tiny)]) == 0 and out.is_file()
    capsys.readouterr()
    for kind in ("nf4", "fp8"):  # CUDA-only kinds: one line before anything loads
        assert main(["generate", "a cat", "-o", str(out), "--quantize", kind, *tiny_cli_args(tiny)]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and f"--quantize {kind} needs a CUDA GPU" in error[0]


def test_a_missing_optional_library_is_one_line_naming_the_extra():
    import pytest

    from openuni.acceleration import require
    from openuni.errors import OpenUniError

    require("torch", "--anything", "fast")
    with pytest.raises(OpenUniError, match=r"^--step-cache needs no_such_library_x, which is not installed: pip "
                                           r"install -e '\.\[fast\]'$"):
        require("no_such_library_x", "--step-cache", "fast")
