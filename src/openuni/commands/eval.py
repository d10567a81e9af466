"""`openuni eval`: generate a benchmark's images in its official layout, and score them.

    openuni eval geneval|dpg|wise|shapes --output DIR [--prompts PATH] [--score] [sampling and model flags]
    openuni eval score geneval|dpg|wise|shapes DIR [scorer flags]

Runs on one device or, under `accelerate launch`, on all processes; scoring runs on the main process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OpenUniError
from ..evaluation.benchmarks import BENCHMARKS, ScorerOptions
from .options import (SAMPLING_FLAGS, add_device_arguments, add_model_arguments, add_rewrite_argument,
                      add_sampling_arguments, model_description, pipeline_from_args, sampling_from_args)

SCORER_HELP = {
    "detector": "GenEval: Mask2Former COCO instance checkpoint",
    "clip": "GenEval: CLIP for colours",
    "object_names": "GenEval: object_names.txt",
    "questions": "DPG-Bench: dpg_bench.csv",
    "judge": "DPG-Bench/WISE: VLM judge, a proxy for the official one",
}
FILE_DEFAULTS = {"object_names": "built in", "questions": "fetched at a pinned commit"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="benchmarks: GenEval, DPG-Bench, WISE, synthetic shapes",
                                   description="Generate benchmark images in the official layouts and score them.")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, benchmark in BENCHMARKS.items():
        sub = benchmarks.add_parser(name, help=f"generate {benchmark.title} images (and score them with --score)")
        sub.add_argument("--output", "-o", type=Path, required=True, help="output folder (resumed when it exists)")
        sub.add_argument("--prompts", type=Path, help=benchmark.prompts_help)
        sub.add_argument("--score", action="store_true", help="score the images once they are all written")
        sub.add_argument("--limit", type=int, metavar="N",
                         help="a smoke run: only the first N prompts of each task/category (DPG-Bench: of the list); "
                              "recorded as such in the run file and the report, never comparable with full scores")
        add_rewrite_argument(sub)
        add_sampling_arguments(sub, batch_size=16, images_per_prompt=False)
        add_model_arguments(sub)
        _add_scorer_arguments(sub, (name,))
        sub.set_defaults(func=run_generate)
    score = benchmarks.add_parser("score", help="score a folder written by `openuni eval BENCHMARK`")
    score.add_argument("score_benchmark", choices=list(BENCHMARKS), metavar="BENCHMARK", help=", ".join(BENCHMARKS))
    score.add_argument("folder", type=Path, help="the output folder")
    score.add_argument("--prompts", type=Path, help="the prompt files, where the scorer reads them (WISE: "
                                                   "explanations; default: fetched)")
    add_device_arguments(score, dtype=False)
    _add_scorer_arguments(score, tuple(BENCHMARKS))
    score.set_defaults(func=run_score)


def _add_scorer_arguments(parser: argparse.ArgumentParser, benchmarks: tuple[str, ...]) -> None:
    defaults = ScorerOptions()
    settings = {name for benchmark in benchmarks for name in BENCHMARKS[benchmark].scorer_settings}
    group = parser.add_argument_group("scoring")
    for name, what in SCORER_HELP.items():
        if name in settings:
            default = getattr(defaults, name)
            group.add_argument(f"--{name.replace('_', '-')}", default=default, type=Path if default is None else str,
                               help=f"{what} (default: {default or FILE_DEFAULTS[name]})")


def scorer_options(args: argparse.Namespace) -> ScorerOptions:
    return ScorerOptions(**{name: getattr(args, name) for name in SCORER_HELP if hasattr(args, name)})


def process_device(requested: str | None, launcher_device) -> str:
    """Where this process runs. A device without an index ("cuda") means this process's own one from the launcher
    (cuda:<local rank>), not device 0 for every process; an explicit index is taken as given."""
    import torch

    if requested is None:
        return str(launcher_device)
    device = torch.device(requested)
    if device.index is None and device.type == torch.device(launcher_device).type:
        return str(launcher_device)
    return requested


def run_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from accelerate import PartialState

    from ..devices import cpu_only, resolve_device
    from ..evaluation.generate import generate_benchmark
    from ..files import check_writable

    # The benchmark fixes the images per prompt, and seed + k must hold for each of them.
    sampling = replace(sampling_from_args(args), num_images=BENCHMARKS[args.benchmark].images_per_prompt).check(
        names=SAMPLING_FLAGS)
    if args.device is not None:
        resolve_device(args.device)  # a device this machine lacks is refused before anything is read or loaded
    check_writable(args.output, "--output", folder=True)
    if args.limit is not None and args.limit < 1:
        raise OpenUniError(f"--limit must be at least 1, got {args.limit}")
    prompts = BENCHMARKS[args.benchmark].load_prompts(args.prompts)
    smoke_run = None
    if args.limit is not None:
        from ..evaluation.prompts import first_of_each_task

        smoke_run = {"prompts_per_task": args.limit, "of_prompts": len(prompts)}
        prompts = first_of_each_task(prompts, args.limit)
    # On CPU, accelerate joins the processes of a launcher (torchrun, accelerate launch) only when told so.
    state = PartialState(cpu=(args.device or "cuda").startswith("cpu") or cpu_only())
    args.device = process_device(args.device, state.device)
    pipe = pipeline_from_args(args)
    pipe.set_progress_bar_config(disable=True)
    resolution = pipe.default_resolution
    sampling = replace(sampling, height=args.height or resolution, width=args.width or resolution)
    record = generate_benchmark(pipe, args.benchmark, prompts, args.output, sampling, batch_size=args.batch_size,
                                model=model_description(args), smoke_run=smoke_run, rewrite=args.rewrite)
    if state.is_main_process:
        part = f" (smoke run: {len(prompts)} of {smoke_run['of_prompts']} prompts)" if smoke_run else ""
        print(f"{args.benchmark}: {len(prompts)} prompts in {args.output}{part} "
              f"({record['generated_here']} generated by this process, the rest already there or by others)")
    if args.score and state.is_main_process:
        del pipe
        score(args.benchmark, args.output, args, prompts)
    return 0


def run_score(args: argparse.Namespace) -> int:
    prompts = BENCHMARKS[args.score_benchmark].load_prompts(args.prompts) if args.prompts else None
    score(args.score_benchmark, args.folder, args, prompts)
    return 0


def score(benchmark: str, folder: Path, args: argparse.Namespace, prompts=None) -> None:
    """Check the folder and the question/prompt files first, then load the (large) scoring models."""
    from ..devices import resolve_device
    from ..evaluation.scoring import score_benchmark

    spec = BENCHMARKS[benchmark]
    from ..evaluation.scoring import generation_record

    scores = score_benchmark(spec, folder, scorer_options(args), prompts, str(resolve_device(args.device)))
    overall = scores["overall"]
    smoke = ((generation_record(folder) or {}).get("generation") or {}).get("smoke_run")
    print(f"{benchmark} overall: {'n/a' if overall is None else f'{overall:.4f}'}"
          f"{' (proxy judge)' if spec.proxy else ''}"
          f"{' (SMOKE RUN: --limit ' + str(smoke['prompts_per_task']) + ', not a full score)' if smoke else ''}"
          f"; summary in {folder}/{benchmark}_summary.md")
