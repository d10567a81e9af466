"""`openuni generate` end to end on the tiny model, in-process, including bad input."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from openuni.cli import main

from conftest import tiny_cli_args

FAST = ["--steps", "2", "--height", "64", "--width", "64"]


def test_one_prompt_to_one_file(tiny, tiny_pipe, tmp_path, capsys):
    out = tmp_path / "dog.png"
    assert main(["generate", "a dog on the left", "--output", str(out), "--seed", "3", *FAST, *tiny_cli_args(tiny)]) == 0
    assert "dog.png" in capsys.readouterr().out
    expected = tiny_pipe("a dog on the left", seed=3, num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert np.array_equal(np.asarray(PIL.Image.open(out)), expected)


def test_prompts_file_several_images_and_grid(tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\n  two birds  \n")
    folder = tmp_path / "out"
    args = ["generate", "a boat", "--prompts-file", str(prompts), "--num-images", "2", "--batch-size", "3",
            "--output", str(folder), *FAST, *tiny_cli_args(tiny)]
    assert main(args) == 0
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{p:05d}-{k:02d}.png" for p in range(3) for k in range(2)]
    index = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [e["prompt"] for e in index[::2]] == ["a boat", "a red cube", "two birds"]
    assert [e["seed"] for e in index[:2]] == [42, 43]  # image k of a prompt is made from seed + k

    grid_folder = tmp_path / "grid"
    assert main(["generate", "a boat", "--num-images", "4", "--grid", "--output", str(grid_folder), *FAST,
                 *tiny_cli_args(tiny)]) == 0
    grid = PIL.Image.open(grid_folder / "00000-00.png")
    assert grid.size == (128, 128)
    # The grid's top-right tile is image 1, which seed 43 gives alone.
    single = tmp_path / "single.png"
    assert main(["generate", "a boat", "--seed", "43", "--output", str(single), *FAST, *tiny_cli_args(tiny)]) == 0
    tile = np.asarray(grid)[:64, 64:]
    assert np.abs(tile.astype(int) - np.asarray(PIL.Image.open(single)).astype(int)).max() <= 1


def test_saved_pipeline_directory(tiny_pipe, tmp_path):
    model_dir = tmp_path / "model"
    tiny_pipe.save_pretrained(model_dir)
    out = tmp_path / "x.png"
    assert main(["generate", "a cat", "--model", str(model_dir), "--output", str(out), "--device", "cpu", *FAST]) == 0
    assert PIL.Image.open(out).size == (64, 64)


@pytest.mark.parametrize("args, message", [
    (["generate"], "no prompt given"),
    (["generate", "   "], "prompt 1 is empty"),
    (["generate", "a", "--height", "100"], "multiple of 32"),
    (["generate", "a", "--num-images", "0"], "--num-images must be at least 1"),
    (["generate", "a", "--prompts-file", "/no/such/file.txt"], "cannot read --prompts-file"),
    (["generate", "a", "--checkpoint", "/no/such.pth", "--mllm", "/no/such/dir"], "--mllm /no/such/dir"),
    (["generate", "a", "--model", "/tmp", "--vae", "x"], "cannot be combined"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, capsys, tmp_path):
    assert main(args + ["--output", str(tmp_path / "never.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_wrong_checkpoint_size_names_the_fix(tiny, tmp_path, capsys):
    args = [a for a in tiny_cli_args(tiny)]
    heads = args.index("--connector-heads")
    del args[heads:heads + 2]
    assert main(["generate", "a", "--output", str(tmp_path / "x.png"), *FAST, *args]) == 2
    assert "--connector-heads" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_argparse_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a", "--variant", "openuni-xxl"])
    assert exit_info.value.code == 2


def test_numbered_files_get_their_own_index(tiny, tmp_path):
    """`-o x.png` with several images: x-*.png plus x-metadata.jsonl, never a bare metadata.jsonl beside them."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text("the user's own file\n")
    assert main(["generate", "a boat", "a dog", "--seed", "5", "--output", str(folder / "x.png"), *FAST,
                 *tiny_cli_args(tiny)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.jsonl", "x-00000-00.png", "x-00001-00.png",
                                                        "x-metadata.jsonl"]
    assert (folder / "metadata.jsonl").read_text() == "the user's own file\n"
    index = [json.loads(line) for line in (folder / "x-metadata.jsonl").read_text().splitlines()]
    assert [(e["prompt"], e["seed"], e["file"]) for e in index] == [
        ("a boat", 5, "x-00000-00.png"), ("a dog", 5, "x-00001-00.png")]  # relative to the index


def test_the_index_is_current_after_every_batch(tmp_path):
    """An interrupted run keeps the records of the images it finished."""
    from openuni.commands.generate import OutputWriter, output_paths

    output = tmp_path / "out"
    writer = OutputWriter(output, output_paths(output, 2, 2), num_images=2, grid=False, unit="prompt")
    images = [PIL.Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    writer.save(images, [(0, {"prompt": "first", "seed": 10})])
    index = [json.loads(line) for line in (output / "metadata.jsonl").read_text().splitlines()]
    assert [(e["prompt"], e["seed"]) for e in index] == [("first", 10), ("first", 11)]
    assert sorted(p.name for p in output.glob("*.png")) == ["00000-00.png", "00000-01.png"]
    writer.save(images, [(1, {"prompt": "second", "seed": 10})])
    assert len((output / "metadata.jsonl").read_text().splitlines()) == 4


def read_index(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def png_record(path):
    with PIL.Image.open(path) as image:
        return json.loads(image.info["openuni"])


def test_every_png_and_the_index_carry_the_full_record(tiny, tmp_path, monkeypatch):
    from openuni.records import package_version

    folder = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a boat", "a dog", "--num-images", "2", "--seed", "5", "--cfg-scale", "3",
                 "--negative-prompt", "blurry", "--output", "out", *FAST, *tiny_cli_args(tiny)]) == 0
    index = read_index(folder / "metadata.jsonl")
    assert [e["file"] for e in index] == ["00000-00.png", "00000-01.png", "00001-00.png", "00001-01.png"]
    for entry in index:
        record = png_record(folder / entry["file"])
        assert record == {k: v for k, v in entry.items() if k != "file"}
    first = index[1]
    assert (first["prompt"], first["negative_prompt"], first["seed"], first["steps"], first["cfg_scale"],
            first["height"], first["width"]) == ("a boat", "blurry", 6, 2, 3.0, 64, 64)
    assert first["openuni_version"] == package_version() != "unknown"
    model = first["model"]
    assert model["variant"] == "openuni-b-512" and model["connector_heads"] == tiny.connector_heads
    assert model["checkpoint"] == str(tiny.checkpoint.resolve()) and model["dtype"] == "float32"


def test_from_image_makes_the_same_bytes_again(tiny, tmp_path, monkeypatch):
    from tolerances import assert_images_close

    first = tmp_path / "first.png"
    assert main(["generate", "a red cube on grass", "--seed", "7", "--cfg-scale", "3.5", "--negative-prompt", "dark",
                 "--output", str(first), *FAST, *tiny_cli_args(tiny)]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the record's paths hold from any folder
    assert main(["generate", "--from-image", str(first), "--output", "again.png", "--device", "cpu"]) == 0
    assert (elsewhere / "again.png").read_bytes() == first.read_bytes()

    # Image 1 of a prompt, made again alone: the same noise and settings, another batch composition.
    assert main(["generate", "a boat", "--num-images", "2", "--output", str(tmp_path / "pair"), *FAST,
                 *tiny_cli_args(tiny)]) == 0
    second = tmp_path / "pair" / "00000-01.png"
    assert main(["generate", "--from-image", str(second), "--output", "second.png", "--device", "cpu"]) == 0
    assert png_record(elsewhere / "second.png") == png_record(second)
    assert_images_close(np.asarray(PIL.Image.open(elsewhere / "second.png")), np.asarray(PIL.Image.open(second)))


def test_from_image_keeps_the_fast_sampling_it_was_made_with(tiny, tmp_path, monkeypatch):
    """A guidance interval (and a step cache or quantization) changes the image: the record holds it, --from-image
    uses it again."""
    first = tmp_path / "interval.png"
    assert main(["generate", "a red cube", "--seed", "3", "--steps", "4", "--height", "64", "--width", "64",
                 "--guidance-interval", "0.25", "0.75", "-o", str(first), *tiny_cli_args(tiny)]) == 0
    assert png_record(first)["guidance_interval"] == [0.25, 0.75]
    plain = tmp_path / "plain.png"
    assert main(["generate", "a red cube", "--seed", "3", "--steps", "4", "--height", "64", "--width", "64",
                 "-o", str(plain), *tiny_cli_args(tiny)]) == 0
    assert "guidance_interval" not in png_record(plain)
    assert plain.read_bytes() != first.read_bytes()  # (so the interval is what the record must carry)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--from-image", str(first), "-o", "again.png", "--device", "cpu"]) == 0
    assert (tmp_path / "again.png").read_bytes() == first.read_bytes()


def test_from_image_refuses_images_without_a_record(tiny, tmp_path, capsys):
    plain = tmp_path / "plain.png"
    PIL.Image.new("RGB", (64, 64)).save(plain)
    assert main(["generate", "--from-image", str(plain), "-o", str(tmp_path / "x.png")]) == 2
    assert "carries no openuni record" in capsys.readouterr().err
    made = tmp_path / "made.png"
    assert main(["generate", "a cat", "-o", str(made), *FAST, *tiny_cli_args(tiny)]) == 0
    assert main(["generate", "a dog", "--from-image", str(made), "-o", str(tmp_path / "x.png")]) == 2
    assert "give no prompts with it" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_rewrite_asks_the_mllm_and_records_the_rewritten_prompt(tiny, tiny_pipe, tmp_path):
    from openuni.rewriting import rewrite_prompts

    out = tmp_path / "rewritten.png"
    assert main(["generate", "a cat", "--rewrite", "--seed", "3", "-o", str(out), *FAST, *tiny_cli_args(tiny)]) == 0
    record = png_record(out)
    # The tiny MLLM's expansion is gibberish, but it is the MLLM's greedy answer, and it is what conditioned the image.
    (expected,) = rewrite_prompts(tiny_pipe, ["a cat"])
    assert record["prompt"] == "a cat" and record["rewritten_prompt"] == expected != "a cat"
    image = tiny_pipe(expected, seed=3, num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert np.array_equal(np.asarray(PIL.Image.open(out)), image)
    # Made again from its record: the recorded rewrite, not a new one, and the same bytes.
    assert main(["generate", "--from-image", str(out), "-o", str(tmp_path / "again.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "again.png").read_bytes() == out.read_bytes()
    # Off by default.
    plain = tmp_path / "plain.png"
    assert main(["generate", "a cat", "-o", str(plain), *FAST, *tiny_cli_args(tiny)]) == 0
    assert "rewritten_prompt" not in png_record(plain)


def test_opengvlab_folder_with_remote_code_never_prompts(tiny, tmp_path):
    """OpenGVLab folders name remote code in config.json (`auto_map`); transformers then asks "run the custom code?
    [y/N]" and waits for an answer unless told no. The command must neither ask nor wait, nor run that code."""
    import shutil
    import subprocess
    import sys

    mllm = tmp_path / "InternVL3-layout"
    shutil.copytree(tiny.mllm, mllm)
    config = json.loads((mllm / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                          "AutoModel": "modeling_internvl_chat.InternVLChatModel"}
    (mllm / "config.json").write_text(json.dumps(config))
    (mllm / "configuration_internvl_chat.py").write_text("raise SystemExit('remote code ran')\n")
    args = tiny_cli_args(tiny)
    args[args.index("--mllm") + 1] = str(mllm)
    out = tmp_path / "x.png"
    # stdin stays an open pipe nobody writes to: a prompt would block there (transformers gives up after 15 s).
    done = subprocess.run([sys.executable, "-m", "openuni.cli", "generate", "a cat", "--output", str(out), *FAST,
                           *args], stdin=subprocess.PIPE, capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert "[y/N]" not in said and "trust_remote_code" not in said and "remote code ran" not in said
    assert out.is_file()
