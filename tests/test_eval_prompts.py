"""Benchmark prompt files: the official formats, the pinned-commit cache, and clear errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from openuni.errors import OpenUniError
from openuni.evaluation import prompts as benchmark_prompts
from openuni.evaluation.prompts import load_dpg, load_geneval, load_wise

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared benchmark files not present")


@needs_shared
def test_official_geneval_file():
    prompts = load_geneval(SHARED / "geneval" / "evaluation_metadata.jsonl")
    assert len(prompts) == 553 and prompts[0].key == "00000" and prompts[552].key == "00552"
    assert Counter(p.record["tag"] for p in prompts) == {"single_object": 80, "two_object": 99, "counting": 80,
                                                         "colors": 94, "position": 100, "color_attr": 100}
    assert prompts[0].text == prompts[0].record["prompt"]


@needs_shared
def test_official_dpg_folder():
    prompts = load_dpg(SHARED / "dpg")  # the folder holding prompts/ works as well as prompts/ itself
    assert len(prompts) == 1065 and len({p.key for p in prompts}) == 1065
    assert all(p.text and "\n" not in p.text for p in prompts)


def write_wise(folder: Path) -> None:
    ids = iter(range(1, 100))
    for name in benchmark_prompts.WISE_FILES:
        records = [{"prompt_id": next(ids), "Prompt": f"{name} prompt {i}", "Category": "c", "Subcategory": "s",
                    "Explanation": "e"} for i in range(2)]
        (folder / name).write_text(json.dumps(records))


def test_wise_three_files_or_one(tmp_path):
    write_wise(tmp_path)
    prompts = load_wise(tmp_path)
    assert [p.key for p in prompts] == ["1", "2", "3", "4", "5", "6"] and prompts[0].record["Explanation"] == "e"
    assert [p.key for p in load_wise(tmp_path / "natural_science.json")] == ["5", "6"]
    (tmp_path / "natural_science.json").unlink()
    with pytest.raises(OpenUniError, match="missing natural_science.json"):
        load_wise(tmp_path)


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "meta.jsonl").write_text('{"tag": "x", "prompt": "ok"}\n{"tag": "x"}\n')
    with pytest.raises(OpenUniError, match="line 2"):
        load_geneval(tmp_path / "meta.jsonl")
    (tmp_path / "empty.jsonl").write_text('{"prompt": "  "}\n')
    with pytest.raises(OpenUniError, match="empty"):
        load_geneval(tmp_path / "empty.jsonl")
    with pytest.raises(OpenUniError, match="cannot read"):
        load_geneval(tmp_path / "absent.jsonl")
    (tmp_path / "dpg").mkdir()
    with pytest.raises(OpenUniError, match="no prompts"):
        load_dpg(tmp_path / "dpg")
    (tmp_path / "w.json").write_text('{"not": "a list"}')
    with pytest.raises(OpenUniError, match="not a WISE prompt file"):
        load_wise(tmp_path / "w.json")


def test_fetched_files_are_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENUNI_CACHE", str(tmp_path))
    commit_dir = tmp_path / "djghosh13--geneval" / benchmark_prompts.GENEVAL_COMMIT / "prompts"
    commit_dir.mkdir(parents=True)
    (commit_dir / "evaluation_metadata.jsonl").write_text('{"tag": "single_object", "prompt": "a cat"}\n')
    prompts_dir = tmp_path / "TencentQQGYLab--ELLA" / benchmark_prompts.DPG_COMMIT / "dpg_bench" / "prompts"
    prompts_dir.mkdir(parents=True)
    (prompts_dir / "3.txt").write_text("a dog\n")

    def no_network(url):
        raise AssertionError(f"downloaded {url} although it was cached")

    monkeypatch.setattr(benchmark_prompts, "_download", no_network)
    assert [p.text for p in load_geneval()] == ["a cat"]
    assert [(p.key, p.text) for p in load_dpg()] == [("3", "a dog")]
