"""Benchmark images in each official scorer's layout, over all processes, resumable.

Layouts (SPEC "Benchmarks"):
- GenEval: `<out>/<00000>/metadata.jsonl` (the prompt's JSON object) and `<out>/<00000>/samples/<0000>.png`, 4 each;
- DPG-Bench: `<out>/<item_id>.png`, a 2x2 grid of 4 images (row-major: image 0 top left, 1 top right, ...);
- WISE: `<out>/<prompt_id>.png`, one image.

Images depend only on (prompt, sample index, seed): image k of every prompt starts from the noise of seed + k. Work is
cut into batches over the whole prompt list first and the batches are dealt out to processes, so a batch holds the
same prompts (and the same padding) whatever the number of processes: outputs are byte-identical across process
counts. Every file is written under a temporary name and renamed, and an image counts as finished only when it
decodes completely, so an interrupted run resumes where it stopped and never trusts a truncated file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import PIL.Image

from ..errors import OpenUniError
from ..files import save_image_atomically, write_text_atomically
from .prompts import BenchmarkPrompt

RUN_FILE = "openuni_run.json"


@dataclass(frozen=True)
class Layout:
    images_per_prompt: int
    grid: bool  # tile a prompt's images into one 2x2 file


LAYOUTS = {
    "geneval": Layout(images_per_prompt=4, grid=False),
    "dpg": Layout(images_per_prompt=4, grid=True),
    "wise": Layout(images_per_prompt=1, grid=False),
}


@dataclass(frozen=True)
class SamplingSettings:
    seed: int = 42
    steps: int = 20
    cfg_scale: float = 4.5
    height: int = 512
    width: int = 512
    negative_prompt: str | None = None


def image_files(benchmark: str, output: Path, prompt: BenchmarkPrompt) -> list[Path]:
    """The files one prompt produces, in sample order."""
    if benchmark == "geneval":
        return [output / prompt.key / "samples" / f"{k:04d}.png" for k in range(LAYOUTS[benchmark].images_per_prompt)]
    return [output / f"{prompt.key}.png"]


def side_files(benchmark: str, output: Path, prompt: BenchmarkPrompt) -> dict[Path, str]:
    """Text files the scorer reads next to the images."""
    if benchmark == "geneval":
        return {output / prompt.key / "metadata.jsonl": json.dumps(prompt.record) + "\n"}
    return {}


def is_complete_image(path: Path) -> bool:
    try:
        with PIL.Image.open(path) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):  # missing, truncated or not an image at all
        return False


def read_output_image(path: Path) -> PIL.Image.Image:
    """An output image as RGB for scoring; a damaged one (an interrupted run) is an error that says what to do."""
    from ..images import load_image

    try:
        return load_image(path, min_side=1)
    except OpenUniError as error:
        raise OpenUniError(f"{error}: run the same `openuni eval` generation again (it redoes damaged images), "
                           "then score") from None


def is_finished(benchmark: str, output: Path, prompt: BenchmarkPrompt) -> bool:
    texts_done = all(path.is_file() for path in side_files(benchmark, output, prompt))
    return texts_done and all(is_complete_image(path) for path in image_files(benchmark, output, prompt))


def plan_batches(num_prompts: int, images_per_prompt: int, batch_size: int) -> list[list[int]]:
    """Prompt indices per batch, fixed by the prompt count and batch size alone (never by the process count)."""
    per_batch = max(1, batch_size // images_per_prompt)
    return [list(range(start, min(start + per_batch, num_prompts))) for start in range(0, num_prompts, per_batch)]


def check_run_settings(output: Path, settings: dict) -> None:
    """Refuse to mix images made with other settings into a resumed run."""
    record = output / RUN_FILE
    if not record.is_file():
        return
    try:
        previous = json.loads(record.read_text(encoding="utf-8")).get("generation", {})
    except (OSError, json.JSONDecodeError):
        return
    changed = sorted(k for k in settings if k in previous and previous[k] != settings[k])
    if changed:
        differences = ", ".join(f"{k}: {previous[k]!r} -> {settings[k]!r}" for k in changed)
        raise OpenUniError(f"{output} holds images made with other settings ({differences}); "
                           "use another --output folder, or the same settings to resume")


def generate_benchmark(pipe, benchmark: str, prompts: list[BenchmarkPrompt], output: Path, settings: SamplingSettings,
                       batch_size: int = 4, model: dict | None = None, show_progress: bool = True) -> dict:
    """Write the missing images of `prompts`; this process does its share. Returns the run record."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from ..images import image_grid

    state = PartialState()
    layout = LAYOUTS[benchmark]
    run_settings = {"benchmark": benchmark, **asdict(settings), "images_per_prompt": layout.images_per_prompt,
                    "num_prompts": len(prompts), "model": model or {}}
    check_run_settings(output, run_settings)
    state.wait_for_everyone()  # nobody writes before everybody has checked
    output.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:  # recorded first, so an interrupted run is resumed only with the same settings
        write_text_atomically(output / RUN_FILE, json.dumps({"generation": run_settings, "finished": False}, indent=2))

    batches = plan_batches(len(prompts), layout.images_per_prompt, batch_size)
    mine = batches[state.process_index::state.num_processes]
    missing = {i for batch in mine for i in batch if not is_finished(benchmark, output, prompts[i])}
    # A batch with anything missing is generated whole, as first planned: batch composition moves pixels by a
    # rounding step, so only the same batch reproduces an uninterrupted run's bytes. Only what is missing is written.
    todo = [batch for batch in mine if missing.intersection(batch)]
    total = sum(len(batch) for batch in mine)
    remaining = len(missing)
    started = time.time()
    bar = tqdm(total=total, initial=total - remaining, unit="prompt", dynamic_ncols=True,
               desc=f"{benchmark} (process {state.process_index + 1}/{state.num_processes})",
               disable=not (show_progress and state.is_main_process))
    for batch in todo:
        images = pipe(
            [prompts[i].text for i in batch], negative_prompt=settings.negative_prompt, height=settings.height,
            width=settings.width, num_inference_steps=settings.steps, guidance_scale=settings.cfg_scale,
            num_images_per_prompt=layout.images_per_prompt, seed=settings.seed,
        ).images
        for offset, index in enumerate(batch):
            if index not in missing:
                continue
            own = images[offset * layout.images_per_prompt:(offset + 1) * layout.images_per_prompt]
            if layout.grid:
                own = [image_grid(own, columns=2)]
            for path, text in side_files(benchmark, output, prompts[index]).items():
                write_text_atomically(path, text)
            for image, path in zip(own, image_files(benchmark, output, prompts[index])):
                save_image_atomically(image, path)
        bar.update(len(missing.intersection(batch)))
    bar.close()
    state.wait_for_everyone()
    record = {"generation": run_settings, "finished": True, "generated_here": remaining,
              "elapsed_s": round(time.time() - started, 1), "num_processes": state.num_processes}
    if state.is_main_process:
        write_text_atomically(output / RUN_FILE, json.dumps(record, indent=2) + "\n")
    return record

