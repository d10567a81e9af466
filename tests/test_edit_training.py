"""Training the editing path on the tiny model: mixed text-to-image + image-to-image runs, the reference's i2i loss
on a recorded batch, kill-and-resume of a mixed run, export into `openuni edit`, the edit presets."""

from __future__ import annotations

import pytest
import torch

from conftest import PARITY_DIR, tiny_cli_args
from test_training import should_train, snapshot
from tolerances import assert_images_close
from training_helpers import (OneThread, reset_accelerate, tiny_train_config, write_edit_dataset,
                              write_edit_latent_dataset, write_edit_webdataset, write_json_dataset,
                              write_latent_dataset)


@pytest.fixture(autouse=True)
def fresh_accelerate():
    reset_accelerate()
    with OneThread():
        yield
    reset_accelerate()


def step_tasks(trainer, steps: int) -> list[str]:
    """The task each step of the run trains (the stream draws one per step)."""
    stream = trainer.sample_stream().dataset
    names = [trainer.sources[members[0]].task for members in stream.task_sources]
    return [names[stream.choose_task(step * stream.layout.global_batch)] for step in range(steps)]


def mixed_latent_data(tmp_path) -> list[dict]:
    return [dict(kind="latents", path=str(write_latent_dataset(tmp_path / "t2i"))),
            dict(kind="latents", task="edit", path=str(write_edit_latent_dataset(tmp_path / "edits", seed=1)))]


@pytest.mark.parametrize("setting", [dict(train_transformer=False), dict(train_transformer=True)],
                         ids=["pretrain", "finetune"])
def test_a_mixed_run_changes_exactly_the_trainable_parameters(tiny, tmp_path, setting):
    from openuni.training.trainer import Trainer

    data = mixed_latent_data(tmp_path)
    trainer = Trainer(tiny_train_config(tiny, tmp_path, tmp_path / "run", data=data, max_steps=3, warmup_ratio=0,
                                        seed=1, **setting))
    assert set(step_tasks(trainer, 3)) == {"text2image", "image2image"}
    before = snapshot(trainer)
    trainer.run()
    after = snapshot(trainer)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # The InternViT the edit batches run through is part of the frozen MLLM: it must not move either.
    assert any(name.startswith("mllm.model.vision_tower.") for name in before)
    assert changed == {name for name in before if should_train(name, setting)}


def test_both_losses_of_a_mixed_run_fall(tiny, tmp_path):
    from openuni.training.trainer import Trainer

    config = tiny_train_config(tiny, tmp_path, tmp_path / "run", data=mixed_latent_data(tmp_path), max_steps=40,
                               batch_size=4, train_transformer=True, lr=3e-3, warmup_ratio=0.05)
    trainer = Trainer(config)
    losses = trainer.run()
    tasks = step_tasks(trainer, 40)
    for task in ("text2image", "image2image"):
        curve = [loss for loss, t in zip(losses, tasks) if t == task]
        first, last = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
        print(f"{task}: {len(curve)} steps, first 4 {first:.3f}, last 4 {last:.3f}")
        assert len(curve) >= 12 and last < 0.8 * first, f"{task} loss did not fall: {first:.3f} -> {last:.3f}"


@pytest.mark.skipif(not (PARITY_DIR / "expected.pt").is_file(), reason=f"no parity fixtures at {PARITY_DIR}")
def test_the_trainers_edit_loss_on_the_recorded_batch_is_the_reference_one(tmp_path):
    """The reference's `i2i_loss` batch, from image files through our edit reader, stream, trainer and forward."""
    import json

    import PIL.Image

    from openuni.data.readers import open_source
    from openuni.training.config import from_dict
    from openuni.training.trainer import Trainer

    expected = torch.load(PARITY_DIR / "expected.pt", weights_only=True)
    e = {k.removeprefix("i2i_loss."): v for k, v in expected.items() if k.startswith("i2i_loss.")}
    instructions = json.loads((PARITY_DIR / "cases.json").read_text())["cases"]["i2i_loss"]["prompts"]
    entries = []
    for row, instruction in enumerate(instructions):
        for name, pixels in (("src", e["pixel_values_src"][row]), ("tgt", e["pixel_values"][row])):
            levels = ((pixels + 1) / 2 * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            PIL.Image.fromarray(levels).save(tmp_path / f"{row}-{name}.png")
        entries.append({"source_image": f"{row}-src.png", "target_image": f"{row}-tgt.png", "instruction": instruction})
    (tmp_path / "edits.json").write_text(json.dumps(entries))
    parts = {name: str(PARITY_DIR / name) for name in ("mllm", "tokenizer", "transformer", "vae", "scheduler")}
    index = str(tmp_path / "edits.json")
    config = from_dict(dict(
        parts, init_checkpoint=str(PARITY_DIR / "openuni_tiny.pth"), connector_heads=4, task="edit",
        data=[dict(kind="json", path=index, caption_key="instruction")], resolution=64, batch_size=2,
        mixed_precision="no", log_with="none", num_workers=0, output_dir=str(tmp_path / "run")))
    trainer = Trainer(config)
    stream, pairs = trainer.sample_stream().dataset, open_source("json", index, "edit", caption_key="instruction")
    samples = [stream.finish(dict(pairs[i]), i) for i in range(2)]
    inputs = trainer.model_inputs(samples)
    assert torch.equal(inputs["input_ids"], e["input_ids"]) and torch.equal(inputs["attention_mask"], e["attention_mask"])
    torch.testing.assert_close(inputs["source_pixels"], e["pixel_values_src"], atol=1e-7, rtol=0)
    inputs.update(noise=e["noise"], u=e["u"])  # the recorded draws, in place of ours
    with torch.no_grad():
        loss = trainer.wrapped(**inputs).mean()
    print(f"i2i_loss.loss: ours {loss.item():.7f}, reference {e['loss'].item():.7f}, "
          f"abs diff {abs(loss - e['loss']).item():.3g}")
    torch.testing.assert_close(loss, e["loss"], atol=1e-6, rtol=1e-5)


def test_killing_a_mixed_run_and_resuming_reproduces_its_loss_curve(tiny, tmp_path):
    """SIGKILL a mixed run (text-to-image JSON, WebDataset edit pairs, reconstruction) right after a checkpoint;
    the resumed run gives the uninterrupted run's losses."""
    from openuni.training.trainer import Trainer
    from training_helpers import train_until_killed

    t2i = write_json_dataset(tmp_path / "t2i")
    data = [dict(kind="json", path=str(t2i)), dict(kind="json", path=str(t2i), task="reconstruct"),
            dict(kind="webdataset", task="edit", path=write_edit_webdataset(tmp_path / "edits"), ratio=2.0)]
    settings = dict(max_steps=40, checkpoint_every=3, keep_checkpoints=2, data=data)
    killed_dir = tmp_path / "killed"
    killed_at = train_until_killed(tiny, t2i, killed_dir, tmp_path / "train.yaml", 180, **settings)
    assert killed_at < settings["max_steps"]

    whole = Trainer(tiny_train_config(tiny, t2i, tmp_path / "whole", **settings))
    assert set(step_tasks(whole, 40)[killed_at:]) == {"text2image", "image2image"}
    uninterrupted = whole.run()
    reset_accelerate()
    resumed = Trainer(tiny_train_config(tiny, t2i, killed_dir, **settings)).run()
    print(f"killed after step {killed_at}; resume max abs loss diff:",
          max(abs(a - b) for a, b in zip(resumed, uninterrupted)))
    assert resumed == pytest.approx(uninterrupted, rel=1e-6, abs=1e-7)


def test_an_exported_edit_run_edits_in_openuni_edit(tiny, tiny_pipe, tmp_path):
    from openuni.cli import main
    from openuni.pipeline import OpenUniPipeline
    from openuni.training.trainer import Trainer

    edits = write_edit_dataset(tmp_path / "edits", count=4)
    source = tmp_path / "edits" / "0000-src.png"
    trainer = Trainer(tiny_train_config(tiny, edits, tmp_path / "run", task="edit", max_steps=2,
                                        train_transformer=True))
    trainer.run()
    reset_accelerate()
    args = tiny_cli_args(tiny)
    args[args.index("--checkpoint") + 1] = str(tmp_path / "run" / "final" / "openuni.pth")
    output = tmp_path / "edited.png"
    assert main(["edit", str(source), "swap red and blue", "--steps", "2", "--height", "64", "--width", "64",
                 "--seed", "0", "-o", str(output), *args]) == 0
    import numpy as np
    import PIL.Image

    live = OpenUniPipeline.from_model(trainer.accelerator.unwrap_model(trainer.wrapped), trainer.tokenizer,
                                      trainer.sampling_scheduler)
    with torch.no_grad():
        expected = live.edit(str(source), "swap red and blue", num_inference_steps=2, height=64, width=64, seed=0,
                             output_type="pil").images[0]
    before = OpenUniPipeline.from_pretrained(tmp_path / "run" / "final" / "pipeline")  # the saved pipeline too
    saved = before.edit(str(source), "swap red and blue", num_inference_steps=2, height=64, width=64, seed=0,
                        output_type="pil").images[0]
    assert_images_close(PIL.Image.open(output), expected, "openuni edit with the exported .pth")
    assert_images_close(saved, expected, "the exported pipeline")
    untrained = tiny_pipe.edit(str(source), "swap red and blue", num_inference_steps=2, height=64, width=64, seed=0,
                               output_type="pil").images[0]
    assert np.abs(np.asarray(untrained, float) - np.asarray(expected, float)).mean() > 1  # training moved the edit


def test_sample_grids_hold_edits_of_the_fixed_sources_beside_them(tiny, tmp_path):
    import numpy as np
    import PIL.Image

    from openuni.errors import OpenUniError
    from openuni.training.trainer import Trainer

    edits = write_edit_dataset(tmp_path / "edits", count=2)
    source = tmp_path / "edits" / "0001-src.png"
    sample_edits = [dict(image=str(source), instruction="invert the colours")]
    trainer = Trainer(tiny_train_config(tiny, edits, tmp_path / "run", task="edit", max_steps=1, sample_every=1,
                                        sample_steps=2, sample_edits=sample_edits))
    trainer.run()
    grid = np.asarray(PIL.Image.open(tmp_path / "run" / "samples" / "step-00000001.png"))
    assert grid.shape == (128, 128, 3)  # two prompts on the first row, the source and its edit on the second
    shown = np.asarray(PIL.Image.open(source).convert("RGB").resize((64, 64), PIL.Image.BICUBIC))
    assert np.array_equal(grid[64:, :64], shown)
    reset_accelerate()
    with pytest.raises(OpenUniError, match="no such file"):  # a missing source: before the model loads
        Trainer(tiny_train_config(tiny, edits, tmp_path / "bad", task="edit", mllm="/nonexistent",
                                  sample_edits=[dict(image=str(tmp_path / "missing.png"), instruction="x")]))


def test_edit_presets_carry_the_reference_settings_and_their_task(capsys):
    import yaml

    from openuni.cli import main

    assert main(["train", "pretrain-edit-b-512", "data.0.path=megalith10m_all.json", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["task"] == "reconstruct" and config["data"][0]["task"] == "reconstruct"
    assert config["batch_size"] == 16 and config["lr"] == 1e-4 and config["max_steps"] == 100_000
    assert config["init_checkpoint"] == "none" and config["train_transformer"] is False
    assert config["betas"] == [0.9, 0.95] and config["weight_decay"] == 0.05 and config["warmup_ratio"] == 0.01
    assert main(["train", "finetune-edit-l-1024", "data.0.path=edits.json", "data.1.path=blip3o.json",
                 "data.1.task=text2image", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert [d["task"] for d in config["data"]] == ["edit", "text2image"]
    assert config["lr"] == 1e-5 and config["max_steps"] == 10_000 and config["train_transformer"] is True
    assert config["batch_size"] == 8 and config["activation_checkpointing"] is True and config["resolution"] == 1024
    assert main(["train", "pretrain-edit-b-512", "data.0.path=x", "data.0.task=paint", "--print-config"]) == 2
    assert "data.0.task must be one of text2image, edit, reconstruct" in capsys.readouterr().err


def test_a_two_process_ddp_mixed_run_matches_one_process(tiny, tmp_path):
    """Each step's task is drawn for the whole global batch, so 2 processes x batch 2 train what 1 x batch 4 does."""
    import os
    import subprocess
    import sys

    import yaml

    from openuni.training import checkpointing
    from openuni.training.trainer import Trainer
    from test_ddp import SRC, free_port
    from training_helpers import tiny_train_values

    t2i = write_json_dataset(tmp_path / "t2i", count=8)
    edits = write_edit_dataset(tmp_path / "edits")
    data = [dict(kind="json", path=str(t2i)), dict(kind="json", task="edit", path=str(edits))]
    settings = dict(max_steps=4, train_transformer=True, checkpoint_every=4, data=data)
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(tiny_train_values(tiny, t2i, tmp_path / "ddp", batch_size=2, **settings)))
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "openuni.cli", "train", str(config_file)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]

    single = Trainer(tiny_train_config(tiny, t2i, tmp_path / "single", batch_size=4, **settings))
    assert set(step_tasks(single, 4)) == {"text2image", "image2image"}
    single_losses = single.run()
    ddp_losses = checkpointing.read_trainer_state(checkpointing.complete_checkpoints(tmp_path / "ddp")[-1])["losses"]
    print("mixed DDP vs single process: max loss diff", max(abs(a - b) for a, b in zip(ddp_losses, single_losses)))
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5, abs=1e-6)
