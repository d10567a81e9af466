"""Benchmark images in each official scorer's layout (`benchmarks.py`), over all processes, resumable.

Images depend only on (prompt, sample index, seed): image k of every prompt starts from the noise of seed + k. Work is
cut into batches over the whole prompt list first and the batches are dealt out to processes, so a batch holds the
same prompts (and the same padding) whatever the number of processes: outputs are byte-identical across process
counts. Every file is written under a temporary name and renamed, and an image counts as finished only when it
decodes completely, so an interrupted run resumes where it stopped and never trusts a truncated file. Every image
records what it was made from (`outputs.provenance`: its prompt's hash and the sampling settings), and a folder
holding images of other prompts or settings is refused before anything runs, whatever `openuni_run.json` says or
whether it is there at all: one folder never mixes two runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..errors import OpenUniError
from ..files import save_image_atomically, write_text_atomically
from ..sampling import SamplingOptions
from .benchmarks import Benchmark, get_benchmark
from .outputs import PROVENANCE_KEY, UNREADABLE, is_complete_image, provenance, read_provenance
from .prompts import BenchmarkPrompt

RUN_FILE = "openuni_run.json"


def is_finished(benchmark: Benchmark, output: Path, prompt: BenchmarkPrompt) -> bool:
    texts_done = all(path.is_file() and path.read_text(encoding="utf-8", errors="replace") == text
                     for path, text in benchmark.side_files(output, prompt).items())
    return texts_done and all(is_complete_image(path) for path in benchmark.image_files(output, prompt))


def check_outputs_belong(benchmark: Benchmark, output: Path, prompts: list[BenchmarkPrompt], settings: dict) -> None:
    """Refuse a folder whose images were made from other prompts or with other settings (every process checks every
    image's header, so all of them refuse together). A torn image is not refused: it is redone."""
    for prompt in prompts:
        expected = json.loads(provenance(prompt.text, settings))
        for path in benchmark.image_files(output, prompt):
            if not path.is_file():
                continue
            found = read_provenance(path)
            if found == UNREADABLE or (isinstance(found, dict) and {k: found.get(k) for k in expected} == expected):
                continue
            if found is None:
                reason = "does not record what it was made from (another program, or an older openuni)"
            elif found.get("prompt_sha256") != expected["prompt_sha256"]:
                reason = f"was made from another prompt than {prompt.key!r} ({prompt.text[:40]!r})"
            else:
                before = found.get("settings", {})
                changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
                reason = "was made with other settings (" + ", ".join(
                    f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed) + ")"
            raise OpenUniError(f"{path} {reason}; use another --output folder, or the prompts and settings that "
                               "made it to resume")


def plan_batches(num_prompts: int, images_per_prompt: int, batch_size: int) -> list[list[int]]:
    """Prompt indices per batch, fixed by the prompt count and batch size alone (never by the process count)."""
    per_batch = max(1, batch_size // images_per_prompt)
    return [list(range(start, min(start + per_batch, num_prompts))) for start in range(0, num_prompts, per_batch)]


def check_run_settings(output: Path, settings: dict) -> None:
    """Refuse to resume a run with other settings (its prompt count included). A damaged or missing run file loses
    only this early check: each image carries its own record (`check_outputs_belong`)."""
    record = output / RUN_FILE
    if not record.is_file():
        return
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    previous = previous.get("generation", {}) if isinstance(previous, dict) else {}
    previous = previous if isinstance(previous, dict) else {}
    changed = sorted(k for k in settings if k in previous and previous[k] != settings[k])
    if changed:
        differences = ", ".join(f"{k}: {previous[k]!r} -> {settings[k]!r}" for k in changed)
        raise OpenUniError(f"{output} holds images made with other settings ({differences}); "
                           "use another --output folder, or the same settings to resume")


def generate_benchmark(pipe, benchmark: str, prompts: list[BenchmarkPrompt], output: Path, settings: SamplingOptions,
                       batch_size: int = 4, model: dict | None = None, show_progress: bool = True,
                       smoke_run: dict | None = None, rewrite: bool = False) -> dict:
    """Write the missing images of `prompts`; this process does its share. Returns the run record. `smoke_run`
    ({"prompts_per_task": N, "of_prompts": total}) marks a run over a part of the benchmark's prompts: the run
    file and the report say so, and neither a full run nor another part resumes into its folder."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    state = PartialState()
    spec = get_benchmark(benchmark)
    settings = replace(settings, num_images=spec.images_per_prompt).check()
    # What each image records: what decides its pixels besides the model. (The model's description, paths as the
    # user gave them, is checked through the run file only: images stay byte-identical between the CLI and the API.)
    image_settings = {"benchmark": benchmark, **asdict(settings), **({"rewrite": True} if rewrite else {})}
    run_settings = {**image_settings, "num_prompts": len(prompts), "model": model or {}, "smoke_run": smoke_run}
    check_run_settings(output, run_settings)
    check_outputs_belong(spec, output, prompts, image_settings)
    state.wait_for_everyone()  # nobody writes before everybody has checked
    output.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:  # recorded first, so an interrupted run is resumed only with the same settings
        write_text_atomically(output / RUN_FILE, json.dumps({"generation": run_settings, "finished": False}, indent=2))

    batches = plan_batches(len(prompts), spec.images_per_prompt, batch_size)
    mine = batches[state.process_index::state.num_processes]
    missing = {i for batch in mine for i in batch if not is_finished(spec, output, prompts[i])}
    # A batch with anything missing is generated whole, as first planned: batch composition moves pixels by a
    # rounding step, so only the same batch reproduces an uninterrupted run's bytes. Only what is missing is written.
    todo = [batch for batch in mine if missing.intersection(batch)]
    total = sum(len(batch) for batch in mine)
    started = time.time()
    bar = tqdm(total=total, initial=total - len(missing), unit="prompt", dynamic_ncols=True,
               desc=f"{benchmark} (process {state.process_index + 1}/{state.num_processes})",
               disable=not (show_progress and state.is_main_process))
    for batch in todo:
        texts = [prompts[i].text for i in batch]
        rewritten = None
        if rewrite:
            from ..rewriting import rewrite_prompts

            texts = rewrite_prompts(pipe, texts)
            rewritten = {prompts[i].key: text for i, text in zip(batch, texts)}
        images = pipe(texts, **settings.pipeline_kwargs()).images
        write_outputs(spec, output, [(prompts[i], images[offset * spec.images_per_prompt:][:spec.images_per_prompt])
                                     for offset, i in enumerate(batch) if i in missing], image_settings,
                      rewritten)
        bar.update(len(missing.intersection(batch)))
    bar.close()
    state.wait_for_everyone()
    record = {"generation": run_settings, "finished": True, "generated_here": len(missing),
              "elapsed_s": round(time.time() - started, 1), "num_processes": state.num_processes}
    if state.is_main_process:
        write_text_atomically(output / RUN_FILE, json.dumps(record, indent=2) + "\n")
    return record


def write_outputs(benchmark: Benchmark, output: Path, finished: list[tuple[BenchmarkPrompt, list]],
                  settings: dict, rewritten: dict | None = None) -> None:
    """Each prompt's side files, then its images (tiled into one grid where the layout asks), each image carrying
    its provenance."""
    from ..images import image_grid

    for prompt, images in finished:
        if benchmark.grid:
            images = [image_grid(images, columns=2)]
        for path, text in benchmark.side_files(output, prompt).items():
            write_text_atomically(path, text)
        record = {PROVENANCE_KEY: provenance(prompt.text, settings, (rewritten or {}).get(prompt.key))}
        for image, path in zip(images, benchmark.image_files(output, prompt)):
            save_image_atomically(image, path, text=record)
