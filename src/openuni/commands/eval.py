"""`openuni eval`: generate a benchmark's images in its official layout, and score them.

    openuni eval geneval|dpg|wise --output DIR [--prompts PATH] [--score] [sampling and model flags]
    openuni eval score geneval|dpg|wise DIR [scorer flags]

Runs on one device or, under `accelerate launch`, on all processes; scoring runs on the main process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import add_model_arguments, add_sampling_arguments, check_sampling_arguments, pipeline_from_args
from ..errors import OpenUniError

BENCHMARKS = ("geneval", "dpg", "wise")
PROMPTS_HELP = {
    "geneval": "evaluation_metadata.jsonl (default: fetched from djghosh13/geneval at a pinned commit)",
    "dpg": "the folder of <item_id>.txt prompts (default: fetched from TencentQQGYLab/ELLA at a pinned commit)",
    "wise": "a folder with WISE's three JSON files, or one of them (default: fetched from PKU-YuanGroup/WISE)",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="benchmarks: GenEval, DPG-Bench, WISE",
                                   description="Generate benchmark images in the official layouts and score them.")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        sub = benchmarks.add_parser(name, help=f"generate {name} images (and score them with --score)")
        sub.add_argument("--output", "-o", type=Path, required=True, help="output folder (resumed when it exists)")
        sub.add_argument("--prompts", type=Path, help=PROMPTS_HELP[name])
        sub.add_argument("--score", action="store_true", help="score the images once they are all written")
        add_sampling_arguments(sub, batch_size=16, images_per_prompt=False)
        add_model_arguments(sub)
        _add_scorer_arguments(sub, (name,))
        sub.set_defaults(func=run_generate)
    score = benchmarks.add_parser("score", help="score a folder written by `openuni eval BENCHMARK`")
    score.add_argument("score_benchmark", choices=BENCHMARKS, metavar="BENCHMARK", help=", ".join(BENCHMARKS))
    score.add_argument("folder", type=Path, help="the output folder")
    score.add_argument("--prompts", type=Path, help="WISE only: the prompt files (for explanations)")
    score.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    _add_scorer_arguments(score, BENCHMARKS)
    score.set_defaults(func=run_score)


def _add_scorer_arguments(parser: argparse.ArgumentParser, benchmarks: tuple[str, ...]) -> None:
    from ..evaluation import DEFAULT_CLIP, DEFAULT_DETECTOR, DEFAULT_JUDGE

    group = parser.add_argument_group("scoring")
    if "geneval" in benchmarks:
        group.add_argument("--detector", default=DEFAULT_DETECTOR,
                           help=f"GenEval: Mask2Former COCO instance checkpoint (default {DEFAULT_DETECTOR})")
        group.add_argument("--clip", default=DEFAULT_CLIP, help=f"GenEval: CLIP for colours (default {DEFAULT_CLIP})")
        group.add_argument("--object-names", type=Path, help="GenEval: object_names.txt (default: built in)")
    if "dpg" in benchmarks:
        group.add_argument("--questions", type=Path, help="DPG-Bench: dpg_bench.csv (default: fetched, pinned commit)")
    if "dpg" in benchmarks or "wise" in benchmarks:
        group.add_argument("--judge", default=DEFAULT_JUDGE,
                           help=f"DPG-Bench/WISE: VLM judge, a proxy for the official one (default {DEFAULT_JUDGE})")


def _model_description(args: argparse.Namespace) -> dict:
    if args.model:
        return {"model": str(args.model)}
    parts = {"variant": args.variant, "stage": args.stage}
    for name in ("mllm", "tokenizer", "transformer", "vae", "scheduler", "checkpoint"):
        if getattr(args, name):
            parts[name] = str(getattr(args, name))
    return parts


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
    import torch
    from accelerate import PartialState

    from ..evaluation.generate import SamplingSettings, generate_benchmark
    from ..evaluation.prompts import LOADERS

    check_sampling_arguments(args)
    if args.output.exists() and not args.output.is_dir():
        raise OpenUniError(f"--output {args.output} exists and is not a folder")
    prompts = LOADERS[args.benchmark](args.prompts)
    # On CPU, accelerate joins the processes of a launcher (torchrun, accelerate launch) only when told so.
    state = PartialState(cpu=(args.device or "cuda").startswith("cpu") or not torch.cuda.is_available())
    args.device = process_device(args.device, state.device)
    pipe = pipeline_from_args(args)
    pipe.set_progress_bar_config(disable=True)
    resolution = pipe.default_resolution
    settings = SamplingSettings(seed=args.seed, steps=args.steps, cfg_scale=args.cfg_scale,
                                height=args.height or resolution, width=args.width or resolution,
                                negative_prompt=args.negative_prompt)
    record = generate_benchmark(pipe, args.benchmark, prompts, args.output, settings, batch_size=args.batch_size,
                                model=_model_description(args))
    if state.is_main_process:
        print(f"{args.benchmark}: {len(prompts)} prompts in {args.output} "
              f"({record['generated_here']} generated by this process, the rest already there or by others)")
    if args.score and state.is_main_process:
        del pipe
        score(args.benchmark, args.output, args, prompts)
    return 0


def run_score(args: argparse.Namespace) -> int:
    from ..evaluation.prompts import load_wise

    prompts = load_wise(args.prompts) if args.score_benchmark == "wise" else None
    score(args.score_benchmark, args.folder, args, prompts)
    return 0


def score(benchmark: str, folder: Path, args: argparse.Namespace, prompts=None) -> None:
    """Check the folder and the question/prompt files first, then load the (large) scoring models."""
    from ..evaluation import scoring
    from ..loading import default_device

    device = str(args.device or default_device())
    if not folder.is_dir():
        raise OpenUniError(f"{folder}: no such folder")
    if benchmark == "geneval":
        from ..evaluation.geneval import sample_images
        from ..evaluation.geneval_models import ClipColorClassifier, Mask2FormerDetector, read_object_names

        sample_images(folder)
        names = read_object_names(args.object_names)
        detector = Mask2FormerDetector(args.detector, names, device=device)
        colors = ClipColorClassifier(args.clip, device=device)
        scorer = {"name": "GenEval rules", "detector": args.detector, "clip": args.clip, "proxy": False,
                  "differs": "transformers Mask2Former and CLIP instead of mmdet and open_clip"}
        scores = scoring.score_geneval(folder, detector, colors, scorer)
    else:
        from ..evaluation.judges import TransformersJudge

        if not any(folder.glob("*.png")):
            raise OpenUniError(f"{folder}: no images (<id>.png) to score")
        if benchmark == "dpg":
            from ..evaluation.dpg import read_questions
            from ..evaluation.prompts import dpg_questions_file

            questions = read_questions(dpg_questions_file(args.questions))
            scorer = {"name": "DPG-Bench aggregation", "judge": args.judge, "proxy": True,
                      "official_judge": "mPLUG-large (ModelScope)"}
            scores = scoring.score_dpg(folder, questions, TransformersJudge(args.judge, device=device), scorer)
        else:
            scorer = {"name": "WiScore", "judge": args.judge, "proxy": True, "official_judge": "gpt-4o-2024-05-13"}
            scores = scoring.score_wise(folder, prompts, TransformersJudge(args.judge, device=device), scorer)
    overall = scores["overall"]
    print(f"{benchmark} overall: {'n/a' if overall is None else f'{overall:.4f}'}"
          f"{' (proxy judge)' if benchmark != 'geneval' else ''}; summary in {folder}/{benchmark}_summary.md")
