"""Training throughput of `openuni train`, per process, by engine, process count and data source, in one run.

Every figure comes from the CLI exactly as a user runs it: `accelerate launch --config_file configs/accelerate/
<engine>.yaml --num_processes P -m openuni.cli train CONFIG ...` (one process: plain `python -m openuni.cli
train`). Start-up, model loading, the final checkpoint and the export cost the same in a run of W steps and one of
W + N steps, so their difference is the cost of N training steps: the CPU seconds of all processes (user + system)
are measured so. Wall time, which the start-up's noise on a busy machine would swamp, is read off the long run's
own progress bar instead (the trainer's cumulative images/s at steps W and W + N give the time between them).
Configurations are measured in alternated order (A B ... B A) and each figure is the median over the repeats; the
ratios are against the 1-process run of the same geometry and data, measured in the same run.

    python benchmarks/train.py --geometries tiny small --engines ddp fsdp deepspeed --processes 1 2
    python benchmarks/train.py --geometries small --data latents --markdown docs/benchmarks.md

Geometries: `tiny` (openuni.tiny, 64 px) and `small` (the tiny MLLM and DC-AE with a 6-block, 128-wide SANA at
128 px, random weights). Data: `images` (PNG files, DC-AE encoding in the loop) or `latents` (cached by `openuni
extract-latents`). On GPUs the same command measures what the accelerate configs launch there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "deepspeed": "deepspeed_zero2.yaml"}
SMALL_TRANSFORMER = dict(num_layers=6, num_attention_heads=4, attention_head_dim=32, num_cross_attention_heads=4,
                         cross_attention_head_dim=32, cross_attention_dim=128, caption_channels=128)
RESOLUTION = {"tiny": 64, "small": 128}


def write_geometry(name: str, root: Path) -> dict:
    """Model paths for the training config: the tiny OpenUni, or its MLLM/VAE with a larger random SANA."""
    import torch
    from diffusers import SanaTransformer2DModel

    from openuni.connector import OpenUniConnector
    from openuni.tiny import TINY_CONNECTOR, TINY_TRANSFORMER, build_tiny_openuni

    tiny = build_tiny_openuni(root / "tiny")
    paths = dict(mllm=str(tiny.mllm), transformer=str(tiny.transformer), vae=str(tiny.vae),
                 scheduler=str(tiny.scheduler), init_checkpoint=str(tiny.checkpoint), connector_heads=tiny.connector_heads)
    if name == "small":
        torch.manual_seed(0)
        geometry = dict(TINY_TRANSFORMER, **SMALL_TRANSFORMER, sample_size=RESOLUTION["small"] // 32)
        SanaTransformer2DModel(**geometry).save_pretrained(root / "small-transformer")
        connector = OpenUniConnector(**TINY_CONNECTOR, caption_channels=geometry["caption_channels"])
        torch.save(connector.state_dict(), root / "small.pth")  # a pretraining-stage release: no SANA keys
        paths.update(transformer=str(root / "small-transformer"), init_checkpoint=str(root / "small.pth"))
    return paths


def write_images(root: Path, count: int, size: int) -> Path:
    """The reference's JSON layout: index.json, PNGs, one caption file each."""
    import numpy as np
    import PIL.Image

    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(root / f"{i:05d}.png")
        (root / f"{i:05d}.txt").write_text(f"a random picture number {i}")
        entries.append({"image": f"{i:05d}.png", "annotation": f"{i:05d}.txt"})
    (root / "index.json").write_text(json.dumps(entries))
    return root / "index.json"


def data_source(kind: str, index: Path, vae: str, size: int, root: Path) -> dict:
    if kind == "images":
        return dict(kind="json", path=str(index))
    cache = root / f"latents-{size}"
    if not cache.exists():
        run_command([sys.executable, "-m", "openuni.cli", "extract-latents", "json", str(index), "--output",
                     str(cache), "--resolution", str(size), "--vae", vae, "--device", "cpu"]).check()
    return dict(kind="latents", path=str(cache))


class Finished(subprocess.CompletedProcess):
    def check(self):
        if self.returncode:
            raise SystemExit(f"failed ({self.returncode}): {' '.join(self.args)}\n{self.stdout[-3000:]}")
        return self


def run_command(command: list[str]) -> Finished:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return Finished(done.args, done.returncode, done.stdout)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant: launcher and workers
    return usage.ru_utime + usage.ru_stime


def progress_seconds(output: str, images_per_step: int) -> dict[int, float]:
    """Seconds since the loop started at each step, from the progress bar's `N/M [...img_s=R...]` (R = images
    trained since the start / seconds since the start, as the trainer prints it)."""
    import re

    found = re.findall(r"(\d+)/\d+ \[[^]]*?img_s=([\d.]+)", output)
    return {int(step): images_per_step * int(step) / float(rate) for step, rate in found if float(rate) > 0}


def timed_run(engine: str, processes: int, config_file: Path, steps: int, output_dir: Path,
              images_per_step: int) -> tuple[float, dict[int, float]]:
    """CPU seconds of one `openuni train` run of `steps` steps from scratch, and its progress times."""
    train = ["-m", "openuni.cli", "train", str(config_file), f"max_steps={steps}", f"output_dir={output_dir}",
             "resume=none"]
    if processes == 1:
        command = [sys.executable, *train]
    else:
        from socket import socket

        with socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs" / "accelerate" / CONFIGS[engine]), "--num_processes", str(processes),
                   "--main_process_port", str(port), *train]
    cpu = children_cpu_seconds()
    output = run_command(command).check().stdout
    return children_cpu_seconds() - cpu, progress_seconds(output, images_per_step)


def measure(configurations, args, config_files: dict, workdir: Path) -> list[dict]:
    """Alternated order A B .. B A; each repeat measures W and W + N steps of every configuration."""
    samples = {c: [] for c in configurations}
    order = []
    for repeat in range(args.repeats):
        order += configurations if repeat % 2 == 0 else list(reversed(configurations))
    for i, (geometry, data, engine, processes) in enumerate(order):
        config_file = config_files[geometry, data]
        out = workdir / f"run-{i}"
        images_per_step = args.batch_size * processes
        short_cpu, _ = timed_run(engine, processes, config_file, args.warmup_steps, out / "short", images_per_step)
        long_cpu, times = timed_run(engine, processes, config_file, args.warmup_steps + args.steps, out / "long",
                                    images_per_step)
        wall = times[args.warmup_steps + args.steps] - times[args.warmup_steps]
        cpu = long_cpu - short_cpu
        samples[geometry, data, engine, processes].append((wall, cpu))
        print(f"{geometry:5s} {data:7s} {engine:9s} x{processes}: {args.steps} steps in {wall:.2f}s wall, "
              f"{cpu:.2f}s CPU", flush=True)
    rows = []
    for (geometry, data, engine, processes), runs in samples.items():
        wall = statistics.median(w for w, _ in runs)
        rows.append(dict(geometry=geometry, data=data, engine=engine if processes > 1 else "single",
                         processes=processes, batch=args.batch_size, steps=args.steps, wall_per_step=wall / args.steps,
                         cpu_per_step=statistics.median(c for _, c in runs) / args.steps,
                         images_per_second_per_process=args.batch_size * args.steps / wall,
                         spread=[min(w for w, _ in runs), max(w for w, _ in runs)]))
    for row in rows:
        base = next(r for r in rows if (r["geometry"], r["data"], r["processes"]) == (row["geometry"], row["data"], 1))
        row["vs_one_process"] = row["images_per_second_per_process"] / base["images_per_second_per_process"]
    return rows


def trainer_engages_engines() -> bool:
    """Whether `openuni train` builds its Accelerator through openuni.training.engines (issue 11): before that, the
    FSDP and DeepSpeed configs run as plain DDP on CPU machines, and their rows say so."""
    import inspect

    from openuni.training import trainer

    return "engine_accelerator" in inspect.getsource(trainer)


def markdown(rows: list[dict], args) -> str:
    lines = [f"### training throughput, {args.device_label}", "",
             f"batch {args.batch_size} per process, {args.steps} steps measured after {args.warmup_steps} (wall: the "
             f"trainer's progress; CPU: all processes, difference of two runs), median of {args.repeats} alternated "
             "runs; per-process images/s and its ratio to 1 process", "",
             "| geometry | data | engine | processes | img/s per process | wall s/step | CPU s/step | vs 1 process |",
             "|---|---|---|---|---|---|---|---|"]
    downgraded = not trainer_engages_engines() and "CPU" in args.device_label
    for r in rows:
        if downgraded and r["engine"] in ("fsdp", "deepspeed"):
            r["engine"] += " (ran as DDP: this trainer does not engage it on CPU)"
        lines.append(f"| {r['geometry']} | {r['data']} | {r['engine']} | {r['processes']} | "
                     f"{r['images_per_second_per_process']:.2f} | {r['wall_per_step']:.3f} | {r['cpu_per_step']:.3f} | "
                     f"{r['vs_one_process']:.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometries", nargs="+", choices=list(RESOLUTION), default=["tiny", "small"])
    parser.add_argument("--data", nargs="+", choices=["images", "latents"], default=["latents", "images"])
    parser.add_argument("--engines", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=2, help="per process")
    parser.add_argument("--steps", type=int, default=20,
                        help="measured steps; the CPU column needs enough that their CPU time dwarfs the start-up's "
                             "run-to-run variation (about 0.5 s here)")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32, help="images in the synthetic data set")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path, help="write the table into this file (docs/benchmarks.md)")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    import platform

    import torch
    import yaml

    args = parse_args(argv)
    args.device_label = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    configurations = [(g, d, e, p) for g in args.geometries for d in args.data for p in args.processes
                      for e in (args.engines if p > 1 else ["ddp"])]
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        config_files = {}
        for geometry in args.geometries:
            size = RESOLUTION[geometry]
            paths = write_geometry(geometry, workdir / geometry)
            index = write_images(workdir / f"images-{size}", args.samples, size)
            for data in args.data:
                values = dict(paths, data=[data_source(data, index, paths["vae"], size, workdir)], resolution=size,
                              batch_size=args.batch_size, num_workers=0, lr=1e-4, mixed_precision=args.mixed_precision,
                              log_with="none", sample_every=0, checkpoint_every=10**6, keep_checkpoints=1, seed=0)
                config_files[geometry, data] = workdir / f"{geometry}-{data}.yaml"
                config_files[geometry, data].write_text(yaml.safe_dump(values))
        rows = measure(configurations, args, config_files, workdir)
    text = markdown(rows, args)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(rows=rows, args={k: str(v) for k, v in vars(args).items()}), indent=2))
    if args.markdown:
        sys.path.insert(0, str(Path(__file__).parent))
        from generate import write_section

        write_section(args.markdown, f"train-{args.device_label.split()[0].lower()}-{args.mixed_precision}", text)
    return rows


if __name__ == "__main__":
    main()
