"""Serving throughput: K concurrent clients against the batching server, against the same requests one at a time.

Both servers run in this process (uvicorn on the loopback interface, in threads) on the SAME pipeline and are
called with the official `openai` client:

* one at a time (the demo's behaviour, the baseline): a server that runs one image per pipeline call with no
  batching window, sent the requests one after another by one client;
* batched: `--max-batch-images` / `--max-wait-ms`, sent the same requests by `--clients` concurrent clients.

Runs alternate A B B A (`--repeats` pairs); each reports images/s, p50/p95 request latency and the process CPU
seconds beside wall seconds. The ratio is the median batched img/s over the median one-at-a-time img/s, measured
in the same run. Geometries: the tiny test model, and a small one (random weights, 128 px) whose cost per image is
between the tiny model's and the real B-512's.

    python benchmarks/serve.py --geometry tiny small --clients 8 --markdown docs/benchmarks.md
    python benchmarks/serve.py --geometry openuni-b-512 --device cuda --clients 8 16 --max-batch-images 16
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import describe_device, versions, write_section  # noqa: E402

GEOMETRIES = ("tiny", "small", "openuni-b-512", "openuni-l-512", "openuni-l-1024")
PROMPTS = [
    "a photo of a red cube on the left of a blue sphere",
    "two green dogs sitting next to a yellow cat under a tree",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of fruit on a wooden table, morning light",
    "a white boat in a stormy sea at night",
]
# The small geometry: the structure of the real components at a fraction of their width and depth, 128 px.
SMALL_LLM = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=768, vocab_size=1024, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                 max_position_embeddings=32768, tie_word_embeddings=False)
SMALL_VISION = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                    image_size=64, patch_size=16, qkv_bias=True, qk_normalization=False, norm_type="layer_norm",
                    layer_norm_eps=1e-6, hidden_act="gelu")
SMALL_TRANSFORMER = dict(in_channels=32, out_channels=32, num_attention_heads=8, attention_head_dim=32,
                         num_layers=8, num_cross_attention_heads=8, cross_attention_head_dim=32,
                         cross_attention_dim=256, caption_channels=256, mlp_ratio=2.5, patch_size=1,
                         attention_bias=False, norm_elementwise_affine=False, norm_eps=1e-6,
                         interpolation_scale=None, qk_norm=None, sample_size=4)
SMALL_VAE = dict(in_channels=3, latent_channels=32, attention_head_dim=32,
                 encoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
                 decoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
                 encoder_block_out_channels=[16, 32, 64, 64, 128, 128],
                 decoder_block_out_channels=[16, 32, 64, 64, 128, 128],
                 encoder_layers_per_block=[1] * 6, decoder_layers_per_block=[1] * 6,
                 encoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
                 decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
                 downsample_block_type="Conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
                 decoder_act_fns="silu", scaling_factor=0.41407)
SMALL_CONNECTOR = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                       num_queries=64)


def build_pipeline(geometry: str, device: torch.device, dtype: torch.dtype, workdir: Path):
    from openuni.pipeline import load_pipeline
    from openuni.tiny import build_random_pipeline, build_tiny_openuni

    tiny = build_tiny_openuni(workdir / "tiny")
    if geometry == "tiny":
        pipe = load_pipeline("openuni-b-512", mllm=tiny.mllm, transformer=tiny.transformer, vae=tiny.vae,
                             scheduler=tiny.scheduler, checkpoint=tiny.checkpoint,
                             connector_heads=tiny.connector_heads, device=device, dtype=dtype)
    elif geometry == "small":
        pipe = build_small_pipeline(tiny.tokenizer, device, dtype)
    else:
        pipe = build_random_pipeline(geometry, tiny.tokenizer, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_small_pipeline(tokenizer_dir: Path, device, dtype):
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
    from transformers import InternVLForConditionalGeneration

    from openuni.connector import OpenUniConnector
    from openuni.internvl import config_from_geometry
    from openuni.loading import load_tokenizer
    from openuni.pipeline import OpenUniPipeline
    from openuni.prompting import IMG_CONTEXT
    from openuni.variants import SANA_SCHEDULER_CONFIG

    tokenizer = load_tokenizer(tokenizer_dir)
    geometry = dict(vision=SMALL_VISION, llm=SMALL_LLM, downsample_ratio=0.5)
    torch.manual_seed(0)
    with torch.device(device):
        mllm = InternVLForConditionalGeneration(
            config_from_geometry(geometry, tokenizer.convert_tokens_to_ids(IMG_CONTEXT))).to(dtype)
        transformer = SanaTransformer2DModel(**SMALL_TRANSFORMER).type(dtype)
        vae = AutoencoderDC(**SMALL_VAE).type(dtype)
        connector = OpenUniConnector(**SMALL_CONNECTOR, caption_channels=SMALL_TRANSFORMER["caption_channels"]
                                     ).type(dtype)
    scheduler = DPMSolverMultistepScheduler(**SANA_SCHEDULER_CONFIG)
    return OpenUniPipeline(tokenizer, mllm, connector, transformer, vae, scheduler).for_inference()


def requests_for(count: int) -> list[tuple[str, int]]:
    return [(PROMPTS[i % len(PROMPTS)], 1000 + i) for i in range(count)]


def send(client, request, steps: int):
    prompt, seed = request
    start = time.perf_counter()
    response = client.images.generate(prompt=prompt, extra_body={"seed": seed, "num_inference_steps": steps})
    return time.perf_counter() - start, response.data[0].b64_json


def run_once(url: str, requests, clients: int, steps: int) -> dict:
    """All `requests` through `clients` concurrent clients (1: one after another); wall and CPU seconds."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=3600)
    barrier = threading.Barrier(clients)
    share = [requests[k::clients] for k in range(clients)]

    def one_client(own):
        barrier.wait()
        return [send(client, request, steps) for request in own]

    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, share))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latencies = [latency for own in results for latency, _ in own]
    images = {request: image for own, requests_ in zip(results, share) for (_, image), request in zip(own, requests_)}
    return dict(seconds=wall, cpu_seconds=cpu, images_per_second=len(requests) / wall,
                p50=float(np.percentile(latencies, 50)), p95=float(np.percentile(latencies, 95)), images=images)


def max_pixel_difference(first: dict, second: dict) -> float:
    """Largest uint8 difference between the images of the same requests (batched vs one at a time)."""
    import PIL.Image

    def pixels(b64):
        return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.int16)

    return max(float(np.abs(pixels(first[key]) - pixels(second[key])).max()) for key in first)


def measure(pipe, args, geometry: str) -> dict:
    from openuni.serving.config import ServerConfig
    from openuni.serving.service import OpenUniService
    from openuni.serving.threaded import serve_in_thread

    forever = dict(max_queue=10_000, request_timeout=24 * 3600.0)
    one_at_a_time = OpenUniService(ServerConfig(max_wait_ms=0, max_batch_images=1, **forever), pipe=pipe)
    batched = OpenUniService(ServerConfig(max_wait_ms=args.max_wait_ms, max_batch_images=args.max_batch_images,
                                          **forever), pipe=pipe)
    requests = requests_for(args.requests)
    rows = []
    with serve_in_thread(one_at_a_time) as serial_url, serve_in_thread(batched) as batched_url:
        run_once(serial_url, requests[:2], 1, args.steps)  # warm-up (first calls allocate, pick kernels)
        run_once(batched_url, requests[:args.max_batch_images], args.max_batch_images, args.steps)
        for clients in args.clients:
            runs, images = {"one at a time": [], "batched": []}, {}
            for mode in ["one at a time", "batched", "batched", "one at a time"] * args.repeats:  # A B B A
                url, k = (serial_url, 1) if mode == "one at a time" else (batched_url, clients)
                result = run_once(url, requests, k, args.steps)
                images[mode] = result.pop("images")
                runs[mode].append(result)
                print(f"{geometry:8s} {mode:13s} clients {k:2d}: {result['images_per_second']:.2f} img/s, "
                      f"p50 {result['p50']:.2f} s, p95 {result['p95']:.2f} s, cpu {result['cpu_seconds']:.1f} s "
                      f"/ wall {result['seconds']:.1f} s", flush=True)
            rows.append(summarize(clients, runs, max_pixel_difference(images["batched"], images["one at a time"])))
            print(f"ratio batched / one at a time at {clients} clients: {rows[-1]['ratio']:.2f}x img/s, "
                  f"{rows[-1]['cpu_ratio']:.2f}x less CPU time", flush=True)
    return dict(geometry=geometry, resolution=pipe.default_resolution, rows=rows)


def summarize(clients: int, runs: dict, max_difference: float) -> dict:
    def median(mode, key):
        return statistics.median(run[key] for run in runs[mode])

    row = dict(clients=clients, max_pixel_difference=max_difference)
    for mode, short in (("one at a time", "serial"), ("batched", "batched")):
        for key in ("images_per_second", "p50", "p95", "seconds", "cpu_seconds"):
            row[f"{short}_{key}"] = median(mode, key)
    row["ratio"] = row["batched_images_per_second"] / row["serial_images_per_second"]
    # CPU seconds for the same work: on a shared machine the steadier measure of what batching saves.
    row["cpu_ratio"] = row["serial_cpu_seconds"] / row["batched_cpu_seconds"]
    return row


def markdown(result: dict, args) -> str:
    lines = [
        f"### serving, {result['geometry']} ({result['resolution']} px) on {result['device']}",
        "",
        f"{result['dtype']}, {args.steps} steps, {args.requests} requests of 1 image, --max-batch-images "
        f"{args.max_batch_images}, --max-wait-ms {args.max_wait_ms:g}; medians of {2 * args.repeats} runs per "
        "mode, alternated A B B A, after a warm-up; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        "| clients | one at a time img/s | p50 / p95 s | batched img/s | p50 / p95 s | ratio | CPU s / wall s (one at a "
        "time, batched) | CPU-time ratio | max pixel diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['clients']} | {row['serial_images_per_second']:.2f} | {row['serial_p50']:.2f} / "
            f"{row['serial_p95']:.2f} | {row['batched_images_per_second']:.2f} | {row['batched_p50']:.2f} / "
            f"{row['batched_p95']:.2f} | **{row['ratio']:.2f}x** | {row['serial_cpu_seconds']:.1f} / "
            f"{row['serial_seconds']:.1f}, {row['batched_cpu_seconds']:.1f} / {row['batched_seconds']:.1f} | "
            f"{row['cpu_ratio']:.2f}x | {row['max_pixel_difference']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", nargs="+", choices=GEOMETRIES, default=["tiny", "small"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--clients", type=int, nargs="+", default=[8], help="concurrent clients (batched runs)")
    parser.add_argument("--requests", type=int, default=32, help="requests per run (each one image)")
    parser.add_argument("--repeats", type=int, default=1, help="A B B A groups per client count")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-batch-images", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the tables into this file (e.g. docs/benchmarks.md)")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    from openuni.devices import resolve_dtype

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for geometry in args.geometry:
            pipe = build_pipeline(geometry, device, dtype, Path(workdir) / geometry)
            result = measure(pipe, args, geometry)
            result.update(device=describe_device(device), dtype=str(dtype).removeprefix("torch."),
                          versions=versions())
            results.append(result)
            text = markdown(result, args)
            print(text)
            if args.markdown:
                write_section(args.markdown, f"serve-{geometry}-{device.type}-{result['dtype']}", text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
