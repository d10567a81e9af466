"""Generation speed and memory of OpenUniPipeline against the straightforward path, measured in one run.

Baseline: the same components driven by diffusers' `SanaPipeline` with precomputed caption embeddings (our MLLM +
connector pass, then SanaPipeline's own loop and decode; default settings, no compile). Ours: `OpenUniPipeline`,
plain, then with the options asked for (--compile, --offload, --vae-tiling). Warm-up runs are excluded; each figure
is the median of --repeats runs with their min-max spread. Prints ratios against the baseline and writes JSON plus a
markdown table (optionally into docs/benchmarks.md).

    python benchmarks/generate.py --geometry tiny --device cpu
    python benchmarks/generate.py --geometry openuni-b-512 --device cuda --batch-sizes 1 8 16 --compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

GEOMETRIES = ("tiny", "openuni-b-512", "openuni-l-512", "openuni-l-1024")
PROMPTS = [
    "a photo of a red cube on the left of a blue sphere",
    "two green dogs sitting next to a yellow cat under a tree",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of fruit on a wooden table, morning light",
]


def build_pipeline(geometry: str, device: torch.device, dtype: torch.dtype, workdir: Path):
    from openuni.pipeline import load_pipeline
    from openuni.tiny import build_random_pipeline, build_tiny_openuni

    tiny = build_tiny_openuni(workdir / "tiny")
    if geometry == "tiny":
        pipe = load_pipeline("openuni-b-512", mllm=tiny.mllm, transformer=tiny.transformer, vae=tiny.vae,
                             scheduler=tiny.scheduler, checkpoint=tiny.checkpoint,
                             connector_heads=tiny.connector_heads, device=device, dtype=dtype)
    else:
        pipe = build_random_pipeline(geometry, tiny.tokenizer, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def repeat(fn, device: torch.device, repeats: int, warmups: int = 1) -> list[float]:
    for _ in range(warmups):
        timed(fn, device)
    return [timed(fn, device)[0] for _ in range(repeats)]


def prompts_for(batch: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]


def ours(pipe, batch: int, args, output_type: str = "pil"):
    return pipe(prompts_for(batch), height=args.resolution, width=args.resolution, num_inference_steps=args.steps,
                guidance_scale=args.cfg_scale, seed=0, output_type=output_type).images


def baseline_pipeline(pipe):
    from diffusers import SanaPipeline

    sana = SanaPipeline(tokenizer=None, text_encoder=None, vae=pipe.vae, transformer=pipe.transformer,
                        scheduler=pipe.scheduler)
    sana.set_progress_bar_config(disable=True)
    return sana


def baseline(pipe, sana, batch: int, args):
    cond, uncond = pipe.encode_prompt(prompts_for(batch))
    uncond = uncond.expand_as(cond)
    mask = torch.ones(cond.shape[:2], dtype=torch.long, device=cond.device)
    return sana(prompt_embeds=cond, prompt_attention_mask=mask, negative_prompt_embeds=uncond,
                negative_prompt_attention_mask=mask, negative_prompt=None, height=args.resolution,
                width=args.resolution, num_inference_steps=args.steps, guidance_scale=args.cfg_scale,
                generator=torch.Generator(pipe.device).manual_seed(0), use_resolution_binning=False).images


def summarize(name: str, batch: int, seconds: list[float], peak_bytes: int | None, split: dict | None = None) -> dict:
    median = statistics.median(seconds)
    return dict(name=name, batch=batch, seconds_per_batch=median, spread=[min(seconds), max(seconds)],
                seconds_per_image=median / batch, images_per_second=batch / median,
                peak_memory_gib=None if peak_bytes is None else peak_bytes / 2**30, split=split)


def measure(name, fn, batch, device, args, split=None) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = repeat(fn, device, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    row = summarize(name, batch, seconds, peak, split)
    print(f"{name:28s} batch {batch:3d}: {row['seconds_per_image']:.4f} s/image, "
          f"{row['images_per_second']:.2f} img/s" + (f", peak {row['peak_memory_gib']:.2f} GiB" if peak else ""))
    return row


def stage_split(pipe, batch: int, device, args) -> dict:
    """Seconds per image in MLLM+connector, the denoising loop and the VAE decode (medians)."""
    prompts = prompts_for(batch)
    encode = statistics.median(repeat(lambda: pipe.encode_prompt(prompts), device, args.repeats))
    to_latents = statistics.median(repeat(lambda: ours(pipe, batch, args, "latent"), device, args.repeats))
    latents = ours(pipe, batch, args, "latent")
    decode = statistics.median(repeat(lambda: pipe.decode(latents, "pil"), device, args.repeats))
    total = to_latents + decode
    return dict(mllm_connector=encode / batch, denoise=(to_latents - encode) / batch, vae_decode=decode / batch,
                mllm_connector_share=encode / total)


def max_abs_diff(reference: torch.Tensor, other: torch.Tensor) -> float:
    return (reference.float() - other.float()).abs().max().item()


def run(args) -> dict:
    from openuni.acceleration import compile_pipeline, enable_vae_memory_savers, warm_up

    device = torch.device(args.device)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16}[args.dtype]
    with tempfile.TemporaryDirectory() as workdir:
        pipe = build_pipeline(args.geometry, device, dtype, Path(workdir))
    args.resolution = args.resolution or pipe.default_resolution
    rows, notes = [], {}
    sana = baseline_pipeline(pipe)
    plain_pixels = ours(pipe, 1, args, "pt")
    for batch in args.batch_sizes:
        if not args.skip_baseline:
            rows.append(measure("baseline (SanaPipeline)", lambda: baseline(pipe, sana, batch, args), batch, device, args))
        rows.append(measure("openuni", lambda: ours(pipe, batch, args), batch, device, args,
                            split=stage_split(pipe, batch, device, args)))

    options = [name for name, on in (("compile", args.compile), ("offload", args.offload),
                                     ("vae-tiling", args.vae_tiling)) if on]
    if options:
        if args.compile:
            compile_pipeline(pipe, mode=args.compile)
        if args.vae_tiling:
            enable_vae_memory_savers(pipe)
        if args.offload:
            pipe.enable_model_cpu_offload(device=device)
        label = "openuni + " + " + ".join(options)
        for batch in args.batch_sizes:
            warm_up(pipe, batch, args.resolution, args.resolution)
            rows.append(measure(label, lambda: ours(pipe, batch, args), batch, device, args))
        notes["max_abs_diff_vs_plain_pixels"] = max_abs_diff(plain_pixels, ours(pipe, 1, args, "pt"))

    result = dict(
        geometry=args.geometry, device=describe_device(device), dtype=str(dtype).removeprefix("torch."),
        resolution=args.resolution, steps=args.steps, cfg_scale=args.cfg_scale, repeats=args.repeats,
        versions=versions(), rows=rows, notes=notes,
    )
    print_ratios(rows)
    return result


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict:
    import diffusers
    import transformers

    return dict(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__)


def ratios(rows: list[dict]) -> list[tuple[str, int, float]]:
    """(name, batch, images/s of that row / images/s of the baseline at the same batch)."""
    base = {r["batch"]: r["images_per_second"] for r in rows if r["name"].startswith("baseline")}
    return [(r["name"], r["batch"], r["images_per_second"] / base[r["batch"]])
            for r in rows if not r["name"].startswith("baseline") and r["batch"] in base]


def print_ratios(rows: list[dict]) -> None:
    for name, batch, ratio in ratios(rows):
        print(f"ratio {name} / baseline at batch {batch}: {ratio:.2f}x")


def markdown(result: dict) -> str:
    ratio = {(n, b): r for n, b, r in ratios(result["rows"])}
    lines = [
        f"### {result['geometry']} on {result['device']}",
        "",
        f"{result['dtype']}, {result['resolution']} px, {result['steps']} steps, cfg {result['cfg_scale']}, "
        f"median of {result['repeats']} runs after a warm-up; " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        "| path | batch | s/image | img/s (min-max) | peak GiB | vs baseline | MLLM+conn. / DiT / VAE s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        low, high = (row["batch"] / s for s in reversed(row["spread"]))
        split = row["split"]
        split_text = (f"{split['mllm_connector']:.4f} / {split['denoise']:.4f} / {split['vae_decode']:.4f} "
                      f"({split['mllm_connector_share']:.1%} MLLM)" if split else "")
        peak = f"{row['peak_memory_gib']:.2f}" if row["peak_memory_gib"] is not None else "n/a"
        rel = ratio.get((row["name"], row["batch"]))
        lines.append(f"| {row['name']} | {row['batch']} | {row['seconds_per_image']:.4f} | "
                     f"{row['images_per_second']:.2f} ({low:.2f}-{high:.2f}) | {peak} | "
                     f"{f'{rel:.2f}x' if rel else '-'} | {split_text} |")
    for key, value in result["notes"].items():
        lines += ["", f"{key.replace('_', ' ')}: {value:.3g}"]
    return "\n".join(lines) + "\n"


def write_section(path: Path, key: str, text: str) -> None:
    """Replace (or append) the section between this run's markers, keeping every other run's table."""
    start, end = f"<!-- benchmark:{key} -->", f"<!-- /benchmark:{key} -->"
    document = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}{end}\n"
    if start in document:
        head, rest = document.split(start, 1)
        document = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        document = document.rstrip("\n") + "\n\n" + block
    path.write_text(document)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", choices=GEOMETRIES, default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-scale", type=float, default=4.5)
    parser.add_argument("--resolution", type=int, help="default: the geometry's")
    parser.add_argument("--compile", nargs="?", const="default", help="also measure torch.compile (mode)")
    parser.add_argument("--offload", action="store_true", help="also measure model CPU offload")
    parser.add_argument("--vae-tiling", action="store_true", help="also measure tiled/sliced VAE decode")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table into this file (e.g. docs/benchmarks.md)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    text = markdown(result)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        options = "-".join(o for o in ("compile" if args.compile else "", "offload" if args.offload else "",
                                      "tiling" if args.vae_tiling else "") if o)
        key = f"{result['geometry']}-{args.device}-{result['dtype']}" + (f"-{options}" if options else "")
        write_section(args.markdown, key, text)
    return result


if __name__ == "__main__":
    main()
