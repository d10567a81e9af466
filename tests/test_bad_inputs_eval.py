"""The bad-input suite, benchmark folders: a resumed `openuni eval` never mixes two runs. Each image records what it
was made from (its prompt's hash and the sampling settings), so another prompt set of the same length, other
settings with the run file deleted or corrupt, or images of unknown origin are refused before anything is
generated, and no image already there is touched."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import PIL.Image
import pytest

from openuni.errors import OpenUniError
from openuni.evaluation.generate import RUN_FILE, generate_benchmark
from openuni.evaluation.prompts import load_geneval, load_wise
from openuni.sampling import SamplingOptions

SETTINGS = SamplingOptions(seed=42, steps=2, height=64, width=64)


def wise_file(folder: Path, texts: list[str], name: str = "prompts.json") -> Path:
    path = folder / name
    path.write_text(json.dumps([{"prompt_id": i + 1, "Prompt": text, "Category": "x"} for i, text in enumerate(texts)]))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.png")}


@pytest.fixture(scope="module")
def finished_run(tiny_pipe, tmp_path_factory):
    """A finished WISE run of two prompts, steps 2, and a copy of it per test."""
    root = tmp_path_factory.mktemp("finished")
    prompts = load_wise(wise_file(root, ["a red cube", "a blue ball"]))
    generate_benchmark(tiny_pipe, "wise", prompts, root / "run", SETTINGS, show_progress=False)
    return root / "run"


@pytest.fixture
def run(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def resume(tiny_pipe, run: Path, texts: list[str], settings: SamplingOptions = SETTINGS) -> dict:
    prompts = load_wise(wise_file(run.parent, texts, "other.json"))
    return generate_benchmark(tiny_pipe, "wise", prompts, run, settings, show_progress=False)


def damage_run_file(run: Path, how: str) -> None:
    if how == "deleted":
        (run / RUN_FILE).unlink()
    elif how == "corrupt":
        (run / RUN_FILE).write_text("{not json")
    elif how == "a list":
        (run / RUN_FILE).write_text("[1, 2]")


MIXED = [
    # (what the rerun asks, the run file then, the refusal)
    (dict(texts=["a green tree", "a blue ball"]), "kept", "1.png was made from another prompt than '1'"),
    (dict(texts=["a green tree", "a blue ball"]), "deleted", "1.png was made from another prompt than '1'"),
    (dict(texts=["a red cube", "a yellow sun"]), "corrupt", "2.png was made from another prompt than '2'"),
    (dict(settings=replace(SETTINGS, steps=3)), "deleted", "1.png was made with other settings (steps: 2 -> 3)"),
    (dict(settings=replace(SETTINGS, steps=3)), "corrupt", "(steps: 2 -> 3)"),
    (dict(settings=replace(SETTINGS, steps=3)), "a list", "(steps: 2 -> 3)"),
    (dict(settings=replace(SETTINGS, seed=7)), "deleted", "(seed: 42 -> 7)"),
    (dict(settings=replace(SETTINGS, cfg_scale=2.0)), "deleted", "(cfg_scale: 4.5 -> 2.0)"),
    (dict(settings=replace(SETTINGS, negative_prompt="blurry")), "deleted", "(negative_prompt: None -> 'blurry')"),
    (dict(settings=replace(SETTINGS, height=96)), "deleted", "(height: 64 -> 96)"),
]


@pytest.mark.parametrize("rerun, run_file, message", MIXED)
def test_a_rerun_that_would_mix_two_runs_is_refused(tiny_pipe, run, rerun, run_file, message):
    """Before: another prompt set of the same length kept the old images (0 generated), and without a readable
    run file, steps-3 images were added to a folder of steps-2 ones."""
    damage_run_file(run, run_file)
    before = snapshot(run)
    with pytest.raises(OpenUniError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resume(tiny_pipe, run, rerun.get("texts", ["a red cube", "a blue ball"]), rerun.get("settings", SETTINGS))
    assert snapshot(run) == before


@pytest.mark.parametrize("run_file", ["deleted", "corrupt"])
def test_the_same_run_resumes_whatever_happened_to_its_run_file(tiny_pipe, run, run_file):
    damage_run_file(run, run_file)
    (run / "2.png").unlink()
    before = snapshot(run)
    record = resume(tiny_pipe, run, ["a red cube", "a blue ball"])
    assert record["generated_here"] == 1
    after = snapshot(run)
    assert after["1.png"] == before["1.png"] and "2.png" in after


def test_images_of_unknown_origin_are_refused(tiny_pipe, run):
    PIL.Image.new("RGB", (64, 64), "white").save(run / "1.png")  # not made by this run (no record)
    with pytest.raises(OpenUniError, match="1.png does not record what it was made from"):
        resume(tiny_pipe, run, ["a red cube", "a blue ball"])


def test_a_torn_image_is_redone_not_refused(tiny_pipe, run):
    whole = (run / "2.png").read_bytes()
    (run / "2.png").write_bytes(whole[:20])  # not even its header is left
    assert resume(tiny_pipe, run, ["a red cube", "a blue ball"])["generated_here"] == 1
    assert (run / "2.png").read_bytes() == whole


def test_each_image_carries_its_record(run):
    with PIL.Image.open(run / "1.png") as image:
        record = json.loads(image.info["openuni"])
    assert set(record) == {"prompt_sha256", "settings"}
    assert record["settings"]["steps"] == 2 and record["settings"]["benchmark"] == "wise"


def test_geneval_folders_refuse_another_prompt_file_of_the_same_length(tiny_pipe, tmp_path):
    lines = [{"tag": "single_object", "prompt": "a photo of a bench"}, {"tag": "single_object", "prompt": "a dog"}]
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    generate_benchmark(tiny_pipe, "geneval", load_geneval(first), out, SETTINGS, batch_size=8, show_progress=False)
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps({**line, "prompt": line["prompt"] + " at night"}) + "\n" for line in lines))
    before = snapshot(out)
    with pytest.raises(OpenUniError, match="00000/samples/0000.png was made from another prompt"):
        generate_benchmark(tiny_pipe, "geneval", load_geneval(second), out, SETTINGS, batch_size=8,
                           show_progress=False)
    assert snapshot(out) == before
