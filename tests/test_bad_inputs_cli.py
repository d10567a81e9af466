"""The bad-input suite, command line: each row is an `openuni ...` command a stranger or an adversary would type,
with the one line it must print (exit code 2) and nothing written. The model flags of these rows name folders that
do not exist, so a row passes only if its input is refused before any model is looked for, let alone loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openuni.cli import main

from conftest import tiny_cli_args
from training_helpers import OneThread, reset_accelerate, tiny_train_values, write_json_dataset, write_webdataset

MISSING = "/nonexistent/openuni-bad-inputs"
NO_MODEL = ["--mllm", f"{MISSING}/mllm", "--transformer", f"{MISSING}/sana", "--vae", f"{MISSING}/vae",
            "--checkpoint", f"{MISSING}/openuni.pth", "--connector-heads", "4"]
FAST = ["--steps", "1", "--height", "64", "--width", "64"]


def run_cli(args) -> int:
    reset_accelerate()
    with OneThread():
        try:
            return main([str(a) for a in args])
        finally:
            reset_accelerate()


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def error_lines(capsys) -> list[str]:
    """What the command said on stderr besides its progress bars; there must be no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]


def refused(capsys, args, message, watched: Path) -> None:
    """Exit 2, one line naming the problem, and nothing new in `watched`."""
    before = files_in(watched)
    capsys.readouterr()
    assert run_cli(args) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("openuni "), lines
    assert message in lines[0], lines
    assert files_in(watched) == before


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in: a read-only one, or where even root cannot write (sysfs)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()  # root writes anyway
    try:
        Path("/sys/openuni-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no folder here refuses writes")


@pytest.fixture
def work(tmp_path):
    """A folder with a real image, a text file posing as an image, and a file standing where a folder should."""
    import PIL.Image

    PIL.Image.new("RGB", (64, 64), "red").save(tmp_path / "photo.png")
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "a-file").write_text("a user's file")
    (tmp_path / "folder.png").mkdir()
    return tmp_path


GENERATE_ROWS = [
    (["--seed", 2**64], "--seed must be at most 9223372036854775807"),
    (["--seed", 2**63], "--seed must be at most 9223372036854775807"),
    (["--seed", -1], "--seed must be at least 0"),
    (["--cfg-scale", "nan"], "--cfg-scale must be a finite number, got nan"),
    (["--cfg-scale", "inf"], "--cfg-scale must be a finite number, got inf"),
    (["--cfg-scale=-inf"], "--cfg-scale must be a finite number"),
    (["--height", 100_000, "--width", 100_000], "--height must be at most 4096 pixels"),
    (["--width", 8192], "--width must be at most 4096 pixels"),
    (["--height", 0], "--height must be a positive multiple of 32"),
    (["--steps", 100_000], "--steps must be at most 1000"),
    (["--steps", -3], "--steps must be at least 1"),
    (["--num-images", 0], "--num-images must be at least 1"),
    (["--batch-size", 0], "--batch-size must be at least 1"),
    (["--connector-heads", 0], "--connector-heads must be at least 1"),
    (["--connector-heads", -4], "--connector-heads must be at least 1"),
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--device", "meta"], "device meta: holds no data"),
    (["--device", "cpu:3"], "there is one CPU device"),
    (["--device", "cuda:abc"], "unknown device 'cuda:abc'"),
]
if not torch.cuda.is_available():
    GENERATE_ROWS += [(["--device", "cuda"], "this machine has no CUDA GPU"),
                      (["--device", "cuda:1"], "this machine has no CUDA GPU")]


@pytest.mark.parametrize("flags, message", GENERATE_ROWS)
def test_generate_refuses_bad_settings_before_loading(capsys, work, flags, message):
    refused(capsys, ["generate", "a red cube", "-o", work / "out.png", *NO_MODEL, *flags], message, work)


OUTPUT_ROWS = [
    (lambda w: ["-o", w / "folder.png"], "folder.png is a folder"),
    (lambda w: ["-o", w / "a-file" / "x.png"], "a-file is a file, not a folder"),
    (lambda w: ["-o", w / "a-file" / "deeper" / "x.png"], "a-file is a file, not a folder"),
    (lambda w: ["--num-images", 2, "-o", w / "a-file"], "a-file exists and is not a folder"),
    (lambda w: ["--num-images", 2, "-o", w / "a-file" / "out"], "a-file is a file, not a folder"),
    (lambda w: ["-o", unwritable_folder(w) / "x.png"], "cannot write in"),
    (lambda w: ["--num-images", 2, "-o", unwritable_folder(w) / "new-folder"], "cannot write in"),
]


@pytest.mark.parametrize("make, message", OUTPUT_ROWS)
def test_outputs_that_cannot_be_written_are_refused_before_loading(capsys, work, make, message):
    """Before: the model loaded, every image was generated, and then the save failed with a traceback."""
    args = make(work)
    refused(capsys, ["generate", "a red cube", *args, *NO_MODEL], message, work)
    refused(capsys, ["edit", work / "photo.png", "make it blue", *args, *NO_MODEL], message, work)


EDIT_ROWS = [
    (lambda w: [w / "notes.png", "make it blue"], "not an image format"),
    (lambda w: [w / "photo.png", "   "], "the instruction is empty"),
    (lambda w: [w / "missing.png", "make it blue"], "no such file"),
    (lambda w: [w / "photo.png", "make it blue", "--cfg-scale", "nan"], "--cfg-scale must be a finite number"),
    (lambda w: [w / "photo.png", "make it blue", "--seed", 2**70], "--seed must be at most"),
    (lambda w: [w / "photo.png", "make it blue", "--device", "tpu"], "unknown device 'tpu'"),
    (lambda w: ["--pairs-file", w / "a-file"], "expected {\"image\": PATH, \"instruction\": TEXT}"),
]


@pytest.mark.parametrize("make, message", EDIT_ROWS)
def test_edit_refuses_before_loading(capsys, work, make, message):
    refused(capsys, ["edit", *make(work), "-o", work / "edited.png", *NO_MODEL], message, work)


CHAT_ROWS = [
    (["hi", "--temperature", "nan"], "--temperature must be a positive number"),
    (["hi", "--temperature", "inf"], "--temperature must be a positive number"),
    (["hi", "--temperature", "-1"], "--temperature must be a positive number"),
    (["hi", "--top-p", "nan"], "--top-p must be in (0, 1]"),
    (["hi", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["hi", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["hi", "--max-tiles", "0"], "--max-tiles must be between 1 and 40"),
    (["hi", "--device", "gpu"], "unknown device 'gpu'"),
    (["hi", "--device", "meta"], "holds no data"),
]


@pytest.mark.parametrize("flags, message", CHAT_ROWS)
def test_chat_refuses_before_loading(capsys, work, flags, message):
    refused(capsys, ["chat", *flags, "--mllm", f"{MISSING}/mllm"], message, work)


def benchmark_prompts(work: Path) -> dict[str, Path]:
    files = {
        "geneval-number": ['{"tag": "single_object", "prompt": 5}'],
        "geneval-list": ['{"tag": "single_object", "prompt": ["a", "b"]}'],
        "geneval-array-line": ['[1, 2]'],
        "wise-number": [json.dumps([{"prompt_id": 1, "Prompt": 7, "Category": "x"}])],
        "wise-null": [json.dumps([{"prompt_id": 1, "Prompt": None, "Category": "x"}])],
        "wise-good": [json.dumps([{"prompt_id": 1, "Prompt": "a lantern", "Category": "x"}])],
        "geneval-good": ['{"tag": "single_object", "prompt": "a photo of a bench"}'],
    }
    paths = {}
    for name, lines in files.items():
        paths[name] = work / f"{name}.json"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


EVAL_ROWS = [
    ("geneval", "geneval-number", [], "the 'prompt' must be text, got int"),
    ("geneval", "geneval-list", [], "the 'prompt' must be text, got list"),
    ("geneval", "geneval-array-line", [], "not a GenEval metadata object"),
    ("wise", "wise-number", [], "not a WISE prompt file"),
    ("wise", "wise-null", [], "not a WISE prompt file"),
    ("wise", "wise-good", ["--device", "gpu"], "unknown device 'gpu'"),
    ("wise", "wise-good", ["--cfg-scale", "nan"], "--cfg-scale must be a finite number"),
    ("wise", "wise-good", ["--steps", 5000], "--steps must be at most 1000"),
    ("geneval", "geneval-good", ["--seed", 2**63 - 2], "--seed must be at most 9223372036854775804"),  # 4 images
]


@pytest.mark.parametrize("suite, prompts, flags, message", EVAL_ROWS)
def test_eval_refuses_before_loading(capsys, work, suite, prompts, flags, message):
    files = benchmark_prompts(work)
    refused(capsys, ["eval", suite, "-o", work / "run", "--prompts", files[prompts], *flags, *NO_MODEL],
            message, work)


@pytest.mark.parametrize("output, message", [
    ("a-file/run", "a-file is a file, not a folder"),
    ("a-file", "a-file exists and is not a folder"),
])
def test_eval_output_that_cannot_be_a_folder(capsys, work, output, message):
    files = benchmark_prompts(work)
    refused(capsys, ["eval", "wise", "-o", work / output, "--prompts", files["wise-good"], *NO_MODEL], message, work)


# -- extract-latents -------------------------------------------------------------------------------------------------

def test_a_vae_typo_does_not_lock_the_output_folder(tiny, tmp_path, capsys):
    """Before: extraction.json was written before the VAE loaded; the corrected rerun was refused."""
    index = write_json_dataset(tmp_path / "data", count=2)
    out = tmp_path / "latents"
    common = ["extract-latents", "json", index, "-o", out, "--device", "cpu", "--batch-size", 2]
    refused(capsys, [*common, "--vae", tmp_path / "no-such-vae", "--resolution", 512], "no such directory", tmp_path)
    assert not out.exists()
    assert run_cli([*common, "--vae", tiny.vae, "--resolution", 64]) == 0
    assert len(list(out.glob("shard-*.safetensors"))) == 1


@pytest.mark.parametrize("flags, message", [
    (["--resolution", 100_000], "--resolution must be a positive multiple of 32 up to 4096"),
    (["--resolution", 0], "--resolution must be a positive multiple of 32"),
    (["--shard-size", 0], "--batch-size and --shard-size must be at least 1"),
    (["--device", "gpu"], "unknown device 'gpu'"),
])
def test_extract_latents_refuses_before_loading(capsys, work, flags, message):
    index = write_json_dataset(work / "data", count=1)
    refused(capsys, ["extract-latents", "json", index, "-o", work / "latents", "--vae", f"{MISSING}/vae", *flags],
            message, work)


def test_extract_latents_output_under_a_file(capsys, work):
    index = write_json_dataset(work / "data", count=1)
    refused(capsys, ["extract-latents", "json", index, "-o", work / "a-file" / "latents", "--vae", f"{MISSING}/vae"],
            "a-file is a file, not a folder", work)


def extract(tiny, kind, path, out, *flags):
    return run_cli(["extract-latents", kind, path, "-o", out, "--vae", tiny.vae, "--resolution", 64,
                    "--device", "cpu", *flags])


def test_a_non_tar_webdataset_writes_no_shard(tiny, tmp_path, capsys):
    """Before: an empty shard and exit 0 (and a corrected rerun counted it as done)."""
    fake = tmp_path / "data.tar"
    fake.write_text("this is no tar archive")
    out = tmp_path / "latents"
    assert extract(tiny, "webdataset", fake, out) == 2
    err = capsys.readouterr().err
    assert "1 shard(s) had no usable sample and were not written" in err and "no samples read" in err
    assert not list(out.glob("shard-*"))


def test_a_shard_of_only_unusable_samples_is_not_written_and_a_corrected_rerun_writes_it(tiny, tmp_path, capsys):
    index = write_json_dataset(tmp_path / "data", count=4, corrupt=(2, 3))
    out = tmp_path / "latents"
    assert extract(tiny, "json", index, out, "--shard-size", 2) == 2
    assert "shard 1 (items 2-3): all 2 samples unusable" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.safetensors"]  # the finished one stays
    write_json_dataset(tmp_path / "data", count=4)  # the data fixed
    assert extract(tiny, "json", index, out, "--shard-size", 2) == 0
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.safetensors", "shard-000001.safetensors"]


def test_every_sample_unusable_is_an_error_not_an_empty_shard(tiny, tmp_path, capsys):
    urls = write_webdataset(tmp_path / "wds", shards=1, per_shard=3, corrupt=(0, 1, 2))
    out = tmp_path / "latents"
    assert extract(tiny, "webdataset", urls, out) == 2
    assert "all 3 samples unusable" in capsys.readouterr().err
    assert not list(out.glob("shard-*"))


def test_a_torn_shard_under_its_final_name_is_redone_on_resume(tiny, tmp_path, capsys):
    """Before: a shard cut short (a copy, a crash before the disk had it) counted as done, and training crashed."""
    from openuni.data.sources import CachedLatents

    index = write_json_dataset(tmp_path / "data", count=4)
    out = tmp_path / "latents"
    assert extract(tiny, "json", index, out, "--shard-size", 2) == 0
    shard = out / "shard-000001.safetensors"
    whole = {key: tensor.clone() for key, tensor in load_file(shard).items()}  # (load_file maps the file)
    shard.write_bytes(shard.read_bytes()[:-100])
    assert extract(tiny, "json", index, out, "--shard-size", 2) == 0
    assert "wrote 1 shards" in capsys.readouterr().out
    assert len(CachedLatents(out)) == 4
    redone = load_file(shard)
    assert redone.keys() == whole.keys() and all(torch.equal(redone[k], whole[k]) for k in whole)


# -- train: the whole config checked before anything loads --------------------------------------------------------

TRAIN_ROWS = [
    (["num_workers=-1"], "num_workers must be 0 or more, got -1"),
    (["resolution=0"], "resolution must be a positive multiple of 32, got 0"),
    (["resolution=-512"], "resolution must be a positive multiple of 32"),
    (["sample_prompts=['']"], "sample_prompts must be non-empty texts, got ''"),
    (["sample_prompts=['a cat', '  ']"], "sample_prompts must be non-empty texts"),
    (["sample_steps=0"], "sample_steps must be between 1 and 1000, got 0"),
    (["sample_steps=5000"], "sample_steps must be between 1 and 1000"),
    (["sample_every=-1"], "sample_every must be 0 or more"),
    (["max_prompt_tokens=0"], "max_prompt_tokens must be at least 1, got 0"),
    (["lr=nan"], "lr must be a finite number in (0, inf], got nan"),
    (["lr=0"], "lr must be a finite number in (0, inf]"),
    (["lr=inf"], "lr must be a finite number"),
    (["weight_decay=-0.1"], "weight_decay must be a finite number in [0, inf]"),
    (["grad_clip=nan"], "grad_clip must be a finite number"),
    (["warmup_ratio=1.5"], "warmup_ratio must be a finite number in [0, 1]"),
    (["warmup_start_factor=0"], "warmup_start_factor must be a finite number in (0, 1]"),
    (["caption_dropout=1"], "caption_dropout must be a finite number in [0, 1)"),
    (["betas=[0.9, 1.5]"], "betas[1] must be a finite number in [0, 1)"),
    (["betas=[nan, 0.95]"], "betas[0] must be a finite number"),
    (["train_shift=0"], "train_shift must be a finite number in (0, inf]"),
    (["lora_rank=-1"], "lora_rank must be 0 or more"),
    (["lora_rank=4", "lora_alpha=0"], "lora_alpha must be a finite number in (0, inf]"),
    (["connector_heads=0"], "connector_heads must be at least 1"),
    (["seed=-1"], "seed must be between 0 and 2^63 - 1"),
    (["data.0.ratio=0"], "data.0.ratio must be a positive number"),
    (["data.0.ratio=nan"], "data.0.ratio must be a positive number"),
    (["init_stage=final"], "init_stage must be one of finetune, pretrain"),
    (["log_with=mlflow"], "log_with must be tensorboard, wandb or none"),
    (["mixed_precision=fp8"], "mixed_precision must be bf16, fp16 or no"),
]


@pytest.mark.parametrize("overrides, message", TRAIN_ROWS)
def test_train_config_is_checked_whole(capsys, tmp_path, overrides, message):
    """Checked by --print-config too: nothing is loaded for a config."""
    refused(capsys, ["train", "pretrain-b-512", f"data.0.path={tmp_path / 'data.json'}",
                     f"output_dir={tmp_path / 'run'}", *overrides, "--print-config"], message, tmp_path)


def test_train_output_dir_that_is_a_file(capsys, work):
    for output_dir, message in ((work / "a-file", "output_dir"), (work / "a-file" / "run", "is a file, not a folder")):
        refused(capsys, ["train", "pretrain-b-512", "data.0.path=x", f"output_dir={output_dir}", "--print-config"],
                message, work)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x01binary", b"\x89PNG\r\n\x1a\n\x00\x00", b"key: [unclosed"])
def test_train_config_files_that_are_not_yaml_text(capsys, tmp_path, content):
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    refused(capsys, ["train", config, "--print-config"], "cannot read config", tmp_path)


def latent_config(tiny, tmp_path, latents, **overrides):
    import yaml

    values = tiny_train_values(tiny, tmp_path / "unused.json", tmp_path / "run", **overrides)
    values["data"] = [dict(kind="latents", path=str(latents))]
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(values))
    return config


def test_cached_latents_of_another_resolution_are_refused_before_training(tiny, tmp_path, capsys):
    """Before: 256 px latents trained silently in a 64 px run."""
    index = write_json_dataset(tmp_path / "data", count=2)
    latents = tmp_path / "latents-256"
    assert extract(tiny, "json", index, latents) == 0  # 64 px
    refused(capsys, ["train", latent_config(tiny, tmp_path, latents, resolution=256)],
            "holds latents of 64 px images, this run trains at resolution 256", tmp_path)


def test_a_torn_latent_shard_is_refused_before_training(tiny, tmp_path, capsys):
    index = write_json_dataset(tmp_path / "data", count=2)
    latents = tmp_path / "latents"
    assert extract(tiny, "json", index, latents) == 0
    shard = next(latents.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-40])
    refused(capsys, ["train", latent_config(tiny, tmp_path, latents)], "is damaged", tmp_path)


def test_aspect_buckets_cannot_read_cached_latents(tiny, tmp_path, capsys):
    index = write_json_dataset(tmp_path / "data", count=2)
    latents = tmp_path / "latents"
    assert extract(tiny, "json", index, latents) == 0
    refused(capsys, ["train", latent_config(tiny, tmp_path, latents, aspect_buckets=True)],
            "aspect_buckets needs images", tmp_path)


# -- the disk: full, or refusing a write mid-run ------------------------------------------------------------------

@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_line_and_leaves_nothing_torn(tmp_path):
    from openuni.errors import OpenUniError
    from openuni.files import write_atomically

    def write_to_a_full_disk(partial):
        partial.write_bytes(b"half")
        with open("/dev/full", "wb") as full:  # the kernel's ENOSPC, as a full disk gives it
            full.write(b"x" * 1_000_000)
            full.flush()

    with pytest.raises(OpenUniError, match=r"no space left on the device to write .*out\.png: free some space"):
        write_atomically(tmp_path / "out.png", write_to_a_full_disk)
    assert not list(tmp_path.iterdir())


def test_a_write_refused_mid_run_keeps_the_finished_images(tiny, tmp_path, capsys):
    """The second image cannot be written (a folder holds its temporary name): one line; the first image and its
    index entry stay."""
    out = tmp_path / "out"
    (out / ".00001-00.png.partial").mkdir(parents=True)
    args = ["generate", "a red cube", "a blue ball", "--batch-size", 1, "-o", out, *FAST, *tiny_cli_args(tiny)]
    assert run_cli(args) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("openuni generate: error: cannot write"), lines
    assert "1 images finished before it are kept" in lines[0]
    assert (out / "00000-00.png").is_file() and not (out / "00001-00.png").exists()
    index = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [entry["prompt"] for entry in index] == ["a red cube"]
    assert (out / ".00001-00.png.partial").is_dir()  # not ours to remove


# -- damaged models: one line from every command that loads them ---------------------------------------------------

def damaged(tiny, tmp_path, part: str, file: str, content: bytes | None = None) -> Path:
    import shutil

    target = tmp_path / f"damaged-{part}"
    shutil.copytree(getattr(tiny, part), target)
    data = (target / file).read_bytes()
    (target / file).write_bytes(data[: len(data) // 2] if content is None else content)
    return target


def test_damaged_models_are_one_line_in_every_command(tiny, tiny_pipe, tmp_path, capsys):
    index = write_json_dataset(tmp_path / "data", count=1)
    mllm = damaged(tiny, tmp_path, "mllm", "model.safetensors")
    vae = damaged(tiny, tmp_path, "vae", "config.json", b"[1, 2]")
    saved = tmp_path / "saved"
    tiny_pipe.save_pretrained(saved)
    (saved / "transformer" / "config.json").write_text("[1, 2]")
    args = tiny_cli_args(tiny)
    with_mllm = [*args[:args.index("--mllm") + 1], mllm, *args[args.index("--mllm") + 2:]]
    rows = [
        (["generate", "a cube", "-o", tmp_path / "x.png", *FAST, *with_mllm], "cannot load the InternVL3 weights"),
        (["chat", "hi", "--mllm", mllm, "--device", "cpu"], "cannot load the InternVL3 weights"),
        (["extract-latents", "json", index, "-o", tmp_path / "latents", "--vae", vae, "--device", "cpu",
          "--resolution", 64], "config.json is a JSON list"),
        (["generate", "a cube", "--model", saved, "-o", tmp_path / "x.png", "--device", "cpu", *FAST],
         "cannot load a saved OpenUni pipeline"),
    ]
    for args, message in rows:
        refused(capsys, args, message, tmp_path / "data")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "latents" / "extraction.json").exists()


def test_interactive_chat_recovers_from_a_bad_image(tiny, work, capsys, monkeypatch):
    """Before: `/image notes.png` was attached anyway, and every later question failed on it until /reset."""
    import io
    import sys

    lines = f"/image {work / 'notes.png'}\nwhat is it?\n/image {work / 'photo.png'}\nand this one?\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert run_cli(["chat", "--mllm", tiny.mllm, "--device", "cpu", "--max-new-tokens", 3]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2  # both questions answered
    assert "not an image format" in captured.err and "not attached" in captured.err
    assert f"attached {work / 'photo.png'}" in captured.err


def test_interactive_chat_drops_the_images_of_a_failed_question(tiny, work, capsys, monkeypatch):
    import io
    import sys

    lines = "What is <image> here?\nhello\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert run_cli(["chat", "--image", work / "photo.png", "--mllm", tiny.mllm, "--device", "cpu",
                    "--max-new-tokens", 3]) == 0
    captured = capsys.readouterr()
    assert "the 1 attached image(s) were dropped" in captured.err
    assert len(captured.out.strip().splitlines()) == 1


def test_sources_smaller_than_the_models_own_patch_are_refused_before_any_edit(tiny, tiny_pipe, work, capsys,
                                                                                monkeypatch):
    """The tiny model's vision patch is 16 px, not InternVL3's 14: a 15 px source passes a 14 px check but not this
    model, in `edit` (before the first edit of the file runs) and in interactive chat's /image."""
    import io
    import sys

    import PIL.Image

    assert tiny_pipe.vision_patch_size == 16
    PIL.Image.new("RGB", (64, 64), "red").save(work / "fine.png")
    PIL.Image.new("RGB", (15, 40), "red").save(work / "small.png")
    pairs = work / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "fine.png", "instruction": "make it blue"}) + "\n"
                     + json.dumps({"image": "small.png", "instruction": "make it green"}) + "\n")
    refused(capsys, ["edit", "--pairs-file", pairs, "--output", work / "edits", *FAST, *tiny_cli_args(tiny)],
            "smaller than one 16-pixel patch", work)

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/image {work / 'small.png'}\n"))
    assert run_cli(["chat", "--mllm", tiny.mllm, "--device", "cpu", "--max-new-tokens", 3]) == 0
    assert "smaller than one 16-pixel patch" in capsys.readouterr().err
