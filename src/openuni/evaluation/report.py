"""Run summaries: `<output>/<benchmark>_summary.json` and `.md`, with scores, settings, model, time and labels."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..files import write_text_atomically
from .benchmarks import BENCHMARKS


def write_report(output: Path, benchmark: str, scores: dict, scorer: dict, generation: dict | None = None,
                 scoring_elapsed_s: float | None = None) -> tuple[Path, Path]:
    """scores: `overall` plus a mapping of tasks/categories; scorer: what judged (name, proxy, notes)."""
    summary = {
        "benchmark": benchmark,
        "overall": scores.get("overall"),
        "scores": scores,
        "scorer": scorer,
        "proxy": bool(scorer.get("proxy")),
        "generation": (generation or {}).get("generation"),
        "smoke_run": ((generation or {}).get("generation") or {}).get("smoke_run"),
        "generation_elapsed_s": (generation or {}).get("elapsed_s"),
        "scoring_elapsed_s": None if scoring_elapsed_s is None else round(scoring_elapsed_s, 1),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    json_path, md_path = output / f"{benchmark}_summary.json", output / f"{benchmark}_summary.md"
    write_text_atomically(json_path, json.dumps(summary, indent=2) + "\n")
    write_text_atomically(md_path, markdown(summary))
    return json_path, md_path


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(summary: dict) -> str:
    known = BENCHMARKS.get(summary["benchmark"])
    title = known.title if known else summary["benchmark"]
    scorer = summary["scorer"]
    label = " (PROXY judge: not comparable with published scores)" if summary["proxy"] else ""
    lines = [f"# {title} results{label}", ""]
    smoke = summary.get("smoke_run")
    if smoke:
        lines += [f"**SMOKE RUN: only the first {smoke['prompts_per_task']} prompts of each task (`--limit`), not the "
                  f"{smoke['of_prompts']} of the benchmark: not comparable with published or full-run scores.**", ""]
    lines += [f"**Overall: {_number(summary['overall'])}**", ""]
    for key in ("tasks", "categories", "subcategories"):
        table = summary["scores"].get(key)
        if table:
            lines += [f"| {key[:-1] if key != 'categories' else 'category'} | score |", "|---|---|"]
            lines += [f"| {name} | {_number(value)} |" for name, value in table.items()] + [""]
    extra = {k: v for k, v in summary["scores"].items() if k not in ("overall", "tasks", "categories", "subcategories")}
    lines += ["## Scoring", ""] + [f"- {k}: {v}" for k, v in {**scorer, **extra}.items()] + [""]
    generation = summary.get("generation") or {}
    if generation:
        lines += ["## Generation", ""] + [f"- {k}: {v}" for k, v in generation.items()]
        lines += [f"- elapsed: {summary['generation_elapsed_s']} s (last generation run)"]
    lines += ["", f"Scoring took {summary['scoring_elapsed_s']} s; written {summary['written']}.", ""]
    return "\n".join(lines)
