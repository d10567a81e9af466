"""Score a finished output folder: the benchmark's models or judges, then per-image rows and the summary report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import OpenUniError
from ..files import write_text_atomically
from .benchmarks import Benchmark, ScorerOptions
from .generate import RUN_FILE
from .report import write_report


def generation_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def score_benchmark(benchmark: Benchmark, folder: Path, options: ScorerOptions, prompts=None,
                    device: str = "cpu") -> dict:
    """Score `folder` (inputs checked before any model loads), write `<results_file>` and the summary; returns the
    scores."""
    if not folder.is_dir():
        raise OpenUniError(f"{folder}: no such folder")
    started = time.time()
    scored = benchmark.score(folder, options, prompts, device)
    write_text_atomically(folder / benchmark.results_file, "".join(json.dumps(row) + "\n" for row in scored.rows))
    write_report(folder, benchmark.name, scored.scores, scored.scorer, generation_record(folder),
                 time.time() - started)
    return scored.scores
