"""Proof that the whole system learns, offline: synthetic shapes made, trained on and scored end to end on CPU.

Every step is the command a user runs (`python -m openuni.cli ...`):

1. `openuni shapes make DATA`: 64 px images of 1-3 coloured circles/squares/triangles with captions (reference JSON
   layout) and held-out prompts whose colour-shape pairs no training caption names;
2. `openuni shapes model MODEL`: the small frozen MLLM (word-level BPE, 1-layer LLM), a 4-block SANA and the
   lossless pixel DC-AE (f8);
3. `openuni extract-latents json ...`: the cached latents;
4. `openuni train shapes-tiny ...`: queries + connector + projector + SANA from scratch;
5. `openuni eval shapes --model RUN/final/pipeline --prompts DATA/heldout --score`: the held-out prompts, 4 images
   each, in GenEval's layout (resumable), scored by rules (`openuni.evaluation.shapes`); the same on the first
   prompts of `DATA/seen` (`--limit`), prompts naming only training pairs, to tell composing from drawing.

The same generation and scoring run on the untrained model (the preset's components exported before any step) as
the baseline, and the scorer is checked on the rendered ground truth (must be ~1) and on shuffled captions (chance).
The report (`REPORT.md`) has the per-task table and a sample grid (`grid.png`: each held-out prompt beside its
images).

    python benchmarks/shapes.py                 # full run on a 2-core CPU (all its cores): 24 min (Intel Xeon)
    python benchmarks/shapes.py --smoke         # ~2 min: tiny data, 20 training steps, 4 sampling steps (CI's test)
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

# sample_steps: the denoising steps of generation; the full run keeps the protocol's 20, the smoke run (which checks
# the scorer and the plumbing, not the images) takes 4.
FULL = dict(train_size=6000, heldout_per_task=20, max_steps=6000, batch_size=16, sample_steps=20)
SMOKE = dict(train_size=240, heldout_per_task=2, max_steps=20, batch_size=8, sample_steps=4)
SEEN_LIMIT = ["--limit", "10"]  # prompts per task of training pairs: a diagnostic, half the held-out count


def cli(*args: str, log: Path) -> float:
    """Run `openuni ARGS` as a user would; returns its wall time. Output goes to `log`."""
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ openuni {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([sys.executable, "-m", "openuni.cli", *args], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"openuni {args[0]} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - started


def model_overrides(model: Path, data: Path, work: Path, settings: dict) -> list[str]:
    return [f"mllm={model / 'mllm'}", f"transformer={model / 'transformer'}", f"vae={model / 'vae'}",
            f"scheduler={model / 'scheduler'}", f"data.0.path={work / 'latents'}", f"output_dir={work / 'run'}",
            f"max_steps={settings['max_steps']}", f"batch_size={settings['batch_size']}",
            f"checkpoint_every={settings['max_steps']}"]


def export_untrained(overrides: list[str], directory: Path) -> None:
    """The preset's model before any training step, exported as training would export it."""
    from openuni.training.config import build_config
    from openuni.training.trainer import Trainer

    config = build_config("shapes-tiny", [*overrides, f"output_dir={directory}"])
    Trainer(config).export(directory / "final")


def scorer_checks(truth: Path) -> dict:
    """The scorer on the rendered ground truth, and on the same images judged against another prompt of their task
    (shuffled captions: chance level)."""
    from openuni.data.shapes import TASKS
    from openuni.evaluation.shapes import read_folder, score_images

    items = read_folder(truth)
    rng = random.Random(0)
    shuffled = []
    for tag in TASKS:
        mine = [i for i, (record, _) in enumerate(items) if record["tag"] == tag]
        others = mine[:]
        rng.shuffle(others)
        shuffled += [(items[a][0], items[b][1]) for a, b in zip(mine, others)]
    return {"ground_truth": score_images(items)[1], "shuffled": score_images(shuffled)[1]}


def prompt_colour_rate(folder: Path) -> float:
    """A diagnostic beside the rules (not a task): the fraction of images whose most frequent palette colour is one
    the prompt names. It shows whether the prompt reaches the image even where no shape passes the scorer."""
    import numpy as np

    from openuni.data.shapes import PALETTE
    from openuni.evaluation.shapes import color_labels, read_folder

    names, hits, items = list(PALETTE), 0, read_folder(folder)
    for record, image in items:
        labels = color_labels(np.asarray(image))
        counts = [(labels == index).sum() for index in range(len(names))]
        hits += max(counts) > 0 and names[int(np.argmax(counts))] in {c["color"] for c in record["include"]}
    return hits / len(items)


def write_grid(folder: Path, truth: Path, path: Path, per_task: int = 2) -> list[str]:
    """Rows of: the prompt, its 4 generated images (2x), one rendered ground truth. Returns the prompts shown."""
    import PIL.Image
    import PIL.ImageDraw

    records = []
    for prompt_dir in sorted(p for p in folder.iterdir() if (p / "metadata.jsonl").is_file()):
        records.append((prompt_dir.name, json.loads((prompt_dir / "metadata.jsonl").read_text().splitlines()[0])))
    chosen, seen = [], {}
    for key, record in records:
        if seen.get(record["tag"], 0) < per_task:
            seen[record["tag"]] = seen.get(record["tag"], 0) + 1
            chosen.append((key, record))
    cell, text_width = 128, 300
    grid = PIL.Image.new("RGB", (text_width + 5 * (cell + 4), len(chosen) * (cell + 4)), "white")
    pen = PIL.ImageDraw.Draw(grid)
    for row, (key, record) in enumerate(chosen):
        top = row * (cell + 4)
        pen.text((4, top + cell // 2 - 12), f"[{record['tag']}]", fill="gray")
        pen.text((4, top + cell // 2 + 2), record["prompt"], fill="black")
        images = [folder / key / "samples" / f"{k:04d}.png" for k in range(4)] + [truth / key / "samples" / "0000.png"]
        for column, image_path in enumerate(images):
            with PIL.Image.open(image_path) as image:
                tile = image.convert("RGB").resize((cell, cell), PIL.Image.NEAREST)
            grid.paste(tile, (text_width + column * (cell + 4), top))
    grid.save(path)
    return [record["prompt"] for _, record in chosen]


def table(columns: dict[str, dict]) -> str:
    from openuni.data.shapes import TASKS

    lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for task in (*TASKS, "overall"):
        values = [summary["overall"] if task == "overall" else summary["tasks"].get(task) for summary in columns.values()]
        cells = ["-" if value is None else f"{value:.3f}" for value in values]
        lines.append(f"| {'**overall**' if task == 'overall' else task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/shapes-benchmark"), help="working folder")
    parser.add_argument("--smoke", action="store_true", help="tiny data, 20 training and 4 sampling steps (~2 minutes)")
    parser.add_argument("--max-steps", type=int, help=f"training steps (default: {FULL['max_steps']}; smoke: {SMOKE['max_steps']})")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--train-seed", type=int, default=0, help="training seed (the preset's `seed`; default 0)")
    args = parser.parse_args()
    if args.train_seed < 0:
        parser.error(f"--train-seed must be 0 or more, got {args.train_seed}")
    settings = dict(SMOKE if args.smoke else FULL)
    if args.max_steps:
        settings["max_steps"] = args.max_steps
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    data, model = work / "data", work / "model"
    times = {}
    times["make data"] = cli("shapes", "make", str(data), "--train-size", str(settings["train_size"]),
                             "--heldout-per-task", str(settings["heldout_per_task"]), "--seed", str(args.seed), log=log)
    times["build model"] = cli("shapes", "model", str(model), log=log)
    times["cache latents"] = cli("extract-latents", "json", str(data / "train" / "annotations.json"), "--output",
                                 str(work / "latents"), "--vae", str(model / "vae"), "--resolution", "64",
                                 "--device", "cpu", log=log)
    overrides = [*model_overrides(model, data, work, settings), f"seed={args.train_seed}"]
    started = time.perf_counter()
    export_untrained(overrides, work / "untrained")
    times["export untrained"] = time.perf_counter() - started
    times["train"] = cli("train", "shapes-tiny", *overrides, log=log)
    scores = {}
    for name, pipeline, split, limit in (("untrained", work / "untrained" / "final" / "pipeline", "heldout", []),
                                         ("trained", work / "run" / "final" / "pipeline", "heldout", []),
                                         ("trained_seen", work / "run" / "final" / "pipeline", "seen", SEEN_LIMIT)):
        output = work / f"eval-{name}"
        times[f"generate + score ({name})"] = cli("eval", "shapes", "--model", str(pipeline), "--prompts",
                                                  str(data / split), "--output", str(output), "--device", "cpu",
                                                  "--steps", str(settings["sample_steps"]), "--score", *limit, log=log)
        scores[name] = json.loads((output / "shapes_summary.json").read_text())["scores"]
        scores[name]["prompt_colour_rate"] = prompt_colour_rate(output)
    checks = scorer_checks(data / "heldout" / "ground_truth")
    checks["ground_truth"]["prompt_colour_rate"] = prompt_colour_rate(data / "heldout" / "ground_truth")
    shown = write_grid(work / "eval-trained", data / "heldout" / "ground_truth", work / "grid.png")
    result = {"settings": settings, "times_s": {k: round(v, 1) for k, v in times.items()}, **checks, **scores}
    (work / "shapes.json").write_text(json.dumps(result, indent=2) + "\n")
    report = "\n".join([
        f"# Synthetic shapes ({'smoke' if args.smoke else 'full'} run)", "",
        f"{settings['train_size']} training images, {checks['ground_truth']['images'] // 4} held-out prompts x 4 "
        f"images, {settings['max_steps']} steps of batch {settings['batch_size']}, {settings['sample_steps']} sampling "
        "steps.", "",
        table({"ground truth": checks["ground_truth"], "shuffled captions": checks["shuffled"],
               "untrained": scores["untrained"], "trained": scores["trained"],
               "trained, seen pairs": scores["trained_seen"]}), "",
        "The first four columns are the held-out prompts; the last is the trained model on the first "
        f"{SEEN_LIMIT[-1]} prompts per task naming only training pairs (drawing without composing).", "",
        "Prompt colour rate (diagnostic, not a task: the image's most frequent palette colour is one the prompt "
        "names): " + ", ".join(f"{name} {result[name]['prompt_colour_rate']:.3f}"
                                for name in ("ground_truth", "untrained", "trained", "trained_seen")), "",
        "| step | wall s |", "|---|---|", *[f"| {k} | {v:.0f} |" for k, v in times.items()], "",
        "`grid.png`: per row a held-out prompt, its 4 generated images, one rendered ground truth. Rows: "
        + "; ".join(shown), ""])
    (work / "REPORT.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
