"""The trainer on the tiny model: what trains, that it learns, resume, export, caption handling."""

from __future__ import annotations

import shutil

import pytest
import torch

from training_helpers import OneThread, reset_accelerate, tiny_train_config, write_json_dataset, write_latent_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_json_dataset(tmp_path_factory.mktemp("json-data"))


@pytest.fixture(autouse=True)
def fresh_accelerate():
    reset_accelerate()
    with OneThread():
        yield
    reset_accelerate()


def snapshot(trainer) -> dict[str, torch.Tensor]:
    model = trainer.model
    parts = {"mllm": model.mllm, "vae": model.vae, "connector": model.connector, "transformer": model.transformer}
    return {f"{part}.{name}": p.detach().clone() for part, module in parts.items() for name, p in module.named_parameters()}


def should_train(name: str, setting: dict) -> bool:
    if name.startswith("connector."):
        return True
    if name.startswith("transformer."):
        return "lora_" in name if setting.get("lora_rank") else setting["train_transformer"]
    return False  # the MLLM and the VAE never train


@pytest.mark.parametrize("setting", [
    dict(train_transformer=False), dict(train_transformer=True), dict(train_transformer=True, lora_rank=4),
], ids=["pretrain", "finetune", "lora"])
def test_one_step_changes_exactly_the_trainable_parameters(tiny, data, tmp_path, setting):
    from openuni.training.trainer import Trainer

    trainer = Trainer(tiny_train_config(tiny, data, tmp_path, max_steps=1, warmup_ratio=0, **setting))
    before = snapshot(trainer)
    trainer.run()
    after = snapshot(trainer)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if should_train(name, setting)}


def test_loss_falls_on_a_tiny_fixed_set(tiny, tmp_path):
    from openuni.training.trainer import Trainer

    latents = write_latent_dataset(tmp_path / "latents")
    config = tiny_train_config(tiny, latents, tmp_path / "run", data=[dict(kind="latents", path=str(latents))],
                               max_steps=24, batch_size=4, train_transformer=True, lr=3e-3, warmup_ratio=0.05)
    losses = Trainer(config).run()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"loss did not fall: first steps {first:.3f}, last steps {last:.3f}"


def test_resume_after_a_kill_continues_the_same_loss_curve(tiny, data, tmp_path):
    """A killed run leaves its last complete checkpoint and maybe a torn one; resuming reproduces the rest."""
    from openuni.training import checkpointing
    from openuni.training.trainer import Trainer

    settings = dict(max_steps=6, checkpoint_every=2, keep_checkpoints=5, train_transformer=True)
    uninterrupted = Trainer(tiny_train_config(tiny, data, tmp_path / "whole", **settings)).run()
    reset_accelerate()

    # What a kill during step 5 leaves on disk: checkpoints of steps 2 and 4, and a half-written one of step 6.
    killed = tmp_path / "killed"
    for step in (2, 4):
        source = checkpointing.checkpoint_root(tmp_path / "whole") / checkpointing.checkpoint_name(step)
        shutil.copytree(source, checkpointing.checkpoint_root(killed) / source.name)
    torn = checkpointing.partial_path(killed, 6)
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")
    assert [p.name for p in checkpointing.complete_checkpoints(killed)] == ["step-00000002", "step-00000004"]

    resumed = Trainer(tiny_train_config(tiny, data, killed, **settings))
    losses = resumed.run()
    print("resume max abs loss diff:", max(abs(a - b) for a, b in zip(losses, uninterrupted)))
    assert len(losses) == len(uninterrupted) == 6
    assert losses[4:] == pytest.approx(uninterrupted[4:], rel=1e-6, abs=1e-7)
    assert not torn.exists()


def test_export_loads_in_the_pipeline_and_as_a_release_checkpoint(tiny, data, tmp_path):
    from conftest import load_tiny_pipeline
    from openuni.pipeline import OpenUniPipeline
    from openuni.training.trainer import Trainer

    trainer = Trainer(tiny_train_config(tiny, data, tmp_path, max_steps=2, train_transformer=True, lora_rank=2))
    trainer.run()
    final = tmp_path / "final"
    saved = OpenUniPipeline.from_pretrained(final / "pipeline")
    released = load_tiny_pipeline(tiny, checkpoint=final / "openuni.pth")
    trained = trainer.accelerator.unwrap_model(trainer.wrapped)
    for pipe in (saved, released):
        for name, tensor in trained.connector.state_dict().items():
            assert torch.equal(pipe.connector.state_dict()[name], tensor), name
    assert torch.equal(saved.transformer.state_dict()["transformer_blocks.0.attn1.to_q.weight"],
                       released.transformer.state_dict()["transformer_blocks.0.attn1.to_q.weight"])
    # The LoRA adapters are merged: the exported SANA computes what the adapted one does.
    generator = torch.Generator().manual_seed(0)
    latents, captions = torch.randn(1, 8, 2, 2, generator=generator), torch.randn(1, 8, 48, generator=generator)
    with torch.no_grad():
        live, exported = (t(latents, encoder_hidden_states=captions, timestep=torch.tensor([500.0]), return_dict=False)[0]
                          for t in (trained.transformer, released.transformer))
    lora_delta = [v for k, v in trained.transformer.state_dict().items() if "lora_B" in k]
    assert any(v.abs().max() > 0 for v in lora_delta), "LoRA did not train"
    torch.testing.assert_close(exported, live, atol=1e-5, rtol=1e-5)
    images = released(["a green disc"], num_inference_steps=2, seed=0, output_type="np").images
    assert images.shape == (1, 64, 64, 3)


def test_a_real_kill_mid_run_resumes_onto_the_uninterrupted_curve(tiny, data, tmp_path):
    """SIGKILL a training process right after a checkpoint appears; resuming gives the uninterrupted losses."""
    from openuni.training.trainer import Trainer
    from training_helpers import train_until_killed

    settings = dict(max_steps=60, checkpoint_every=3, keep_checkpoints=2)
    killed_dir = tmp_path / "killed"
    killed_at = train_until_killed(tiny, data, killed_dir, tmp_path / "train.yaml", 120, **settings)
    assert killed_at < settings["max_steps"]

    uninterrupted = Trainer(tiny_train_config(tiny, data, tmp_path / "whole", **settings)).run()
    reset_accelerate()
    resumed = Trainer(tiny_train_config(tiny, data, killed_dir, **settings)).run()
    print(f"killed after step {killed_at}; resume max abs loss diff:",
          max(abs(a - b) for a, b in zip(resumed, uninterrupted)))
    assert resumed == pytest.approx(uninterrupted, rel=1e-6, abs=1e-7)


def test_weight_decay_reaches_only_matrices_and_the_schedule_warms_up_then_decays(tiny_pipe):
    import math

    from openuni.training.optim import parameter_groups, warmup_cosine_factor

    decay, no_decay = parameter_groups(tiny_pipe.connector.requires_grad_(True), 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["params"] and all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["params"] and all(p.ndim < 2 for p in no_decay["params"])
    tiny_pipe.connector.requires_grad_(False)

    factor = [warmup_cosine_factor(step, 1000, 10, 1e-5) for step in range(1001)]
    assert factor[0] == pytest.approx(1e-5) and factor[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factor[:10], factor[1:11]))  # linear warmup
    assert factor[505] == pytest.approx(0.5) and factor[1000] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factor[10:], factor[11:]))  # cosine decay
    assert factor[257] == pytest.approx(0.5 * (1 + math.cos(math.pi * 247 / 990)))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_training_sigma_shift_is_a_setting_unshifted_by_default(tiny, data, tmp_path, shift):
    from openuni.training.trainer import Trainer

    overrides = {} if shift == 1.0 else dict(train_shift=shift)
    schedule = Trainer(tiny_train_config(tiny, data, tmp_path, **overrides)).model.train_scheduler
    plain = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000  # the reference's: (1000 - i) / 1000
    expected = shift * plain / (1 + (shift - 1) * plain)
    torch.testing.assert_close(schedule.sigmas[:1000].double(), expected, atol=1e-6, rtol=0)


def test_gradient_accumulation_matches_one_larger_batch(tiny, data, tmp_path):
    """grad_accum=2 with batch 2 is the same optimisation as batch 4: same samples, same losses, same weights."""
    from openuni.checkpoints import read_state_dict
    from openuni.training.trainer import Trainer

    settings = dict(max_steps=3, train_transformer=True)
    accumulated = Trainer(tiny_train_config(tiny, data, tmp_path / "accum", batch_size=2, grad_accum=2, **settings)).run()
    reset_accelerate()
    whole = Trainer(tiny_train_config(tiny, data, tmp_path / "whole", batch_size=4, **settings)).run()
    assert accumulated == pytest.approx(whole, rel=1e-5, abs=1e-6)
    accumulated_weights = read_state_dict(tmp_path / "accum" / "final" / "openuni.pth")
    whole_weights = read_state_dict(tmp_path / "whole" / "final" / "openuni.pth")
    # As in the DDP test: key biases get no true gradient, so Adam moves them by float noise; skip them.
    for key, tensor in whole_weights.items():
        if not key.endswith(("k_proj.bias", "attn2.to_k.bias")):
            torch.testing.assert_close(accumulated_weights[key], tensor, atol=5e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")


def test_resuming_with_other_data_settings_says_so(tiny, data, tmp_path, caplog):
    import logging

    from openuni.training.trainer import Trainer

    Trainer(tiny_train_config(tiny, data, tmp_path, max_steps=1)).run()
    reset_accelerate()
    with caplog.at_level(logging.WARNING, logger="openuni"):
        Trainer(tiny_train_config(tiny, data, tmp_path, max_steps=2, seed=8, batch_size=1)).run()
    warnings = [r.getMessage() for r in caplog.records if "resuming with other" in r.getMessage()]
    assert len(warnings) == 1 and "seed" in warnings[0] and "global_batch" in warnings[0]


@pytest.mark.parametrize("package, setting", [("peft", dict(lora_rank=2)), ("tensorboard", dict(log_with="tensorboard"))])
def test_a_missing_optional_package_is_a_clear_error_before_anything_loads(tiny, data, tmp_path, monkeypatch,
                                                                             package, setting):
    import sys

    from openuni.errors import OpenUniError
    from openuni.training.trainer import Trainer

    monkeypatch.setitem(sys.modules, package, None)  # what a plain `pip install openuni` (no [train] extra) has
    if package == "tensorboard":
        monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(OpenUniError, match=rf"needs {package}: pip install -e '\.\[train\]'"):
        Trainer(tiny_train_config(tiny, data, tmp_path, **setting))


def training_state(trainer) -> dict:
    """What sampling must leave as it found: every parameter's requires_grad and every module's train/eval mode."""
    model = trainer.model
    roots = {"mllm": model.mllm, "vae": model.vae, "connector": model.connector, "transformer": model.transformer}
    state = {}
    for part, root in roots.items():
        state.update({f"{part}.{name}:grad": p.requires_grad for name, p in root.named_parameters()})
        state.update({f"{part}.{name}:training": m.training for name, m in root.named_modules()})
    return state


@pytest.mark.parametrize("setting", [
    dict(train_transformer=False), dict(train_transformer=True, activation_checkpointing=True),
    dict(train_transformer=True, lora_rank=2),
], ids=["pretrain", "finetune-checkpointed", "lora"])
def test_sampling_during_training_changes_nothing_of_the_run(tiny, data, tmp_path, setting):
    """Sample grids at every step: the run trains on through them, onto the losses of a run without sampling, and
    sampling leaves requires_grad and train/eval modes as it found them (it once froze the live model)."""
    from openuni.training.trainer import Trainer

    plain = Trainer(tiny_train_config(tiny, data, tmp_path / "plain", max_steps=3, **setting)).run()
    reset_accelerate()
    trainer = Trainer(tiny_train_config(tiny, data, tmp_path / "sampled", max_steps=3, sample_every=1, sample_steps=2,
                                        **setting))
    before = training_state(trainer)
    trainer.write_samples()
    assert training_state(trainer) == before
    sampled = trainer.run()
    assert sorted(p.name for p in (tmp_path / "sampled" / "samples").iterdir()) == [
        "step-00000000.png", "step-00000001.png", "step-00000002.png", "step-00000003.png"]
    # Equal up to float rounding: some CPU kernels round differently with the memory addresses they are given, and
    # sampling allocates (allocating as many unrelated tensors instead moves the LoRA run's third loss by 1 ulp too).
    torch.testing.assert_close(torch.tensor(sampled, dtype=torch.float64), torch.tensor(plain, dtype=torch.float64),
                               rtol=1e-6, atol=0)


FRESH_TINY_CONNECTOR = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_queries=8)


def test_fresh_connector_and_lora_init_are_functions_of_the_seed(tiny, data, tmp_path):
    from openuni.checkpoints import read_state_dict
    from openuni.training.trainer import Trainer

    def exported(name: str, seed: int) -> dict[str, torch.Tensor]:
        reset_accelerate()
        Trainer(tiny_train_config(tiny, data, tmp_path / name, max_steps=1, seed=seed, init_checkpoint="none",
                                  connector=FRESH_TINY_CONNECTOR)).run()
        return read_state_dict(tmp_path / name / "final" / "openuni.pth")

    first, again, other = exported("first", 3), exported("again", 3), exported("other", 4)
    assert set(first) == set(again) and any(k.endswith("meta_queries") for k in first)
    for key in first:
        assert torch.equal(first[key], again[key]), key  # same seed, same machine: the same bytes
    assert max((first[k] - other[k]).abs().max().item() for k in first) > 1e-2  # another seed, another connector

    def lora_init(seed: int) -> dict[str, torch.Tensor]:
        reset_accelerate()
        trainer = Trainer(tiny_train_config(tiny, data, tmp_path / f"lora-{seed}", seed=seed, lora_rank=4,
                                            train_transformer=True))
        return {k: p.detach().clone() for k, p in trainer.model.transformer.named_parameters() if "lora_" in k}

    a, b, c = lora_init(5), lora_init(5), lora_init(6)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("setting", [dict(train_transformer=False), dict(train_transformer=True, lora_rank=2)],
                         ids=["pretrain", "lora"])
def test_checkpoints_hold_only_what_trains_and_resume_onto_the_same_run(tiny, data, tmp_path, setting):
    from safetensors import safe_open

    from openuni.checkpoints import read_state_dict
    from openuni.training import checkpointing
    from openuni.training.trainer import Trainer

    settings = dict(max_steps=4, checkpoint_every=2, keep_checkpoints=2, **setting)
    whole = Trainer(tiny_train_config(tiny, data, tmp_path / "whole", **settings))
    uninterrupted = whole.run()
    trainable = {f"{part}.{name}" for part, module in (("connector", whole.model.connector),
                                                       ("transformer", whole.model.transformer))
                 for name, p in module.named_parameters() if p.requires_grad}
    first, last = checkpointing.complete_checkpoints(tmp_path / "whole")
    with safe_open(str(last / "model.safetensors"), framework="pt") as file:
        saved = set(file.keys())
    assert saved == trainable  # pretraining: the connector; LoRA: the connector and the adapters
    assert all(k.startswith("connector.") or "lora_" in k for k in saved)
    exported = read_state_dict(tmp_path / "whole" / "final" / "openuni.pth")
    assert any(k.startswith("connector.") for k in exported)
    if setting.get("lora_rank"):  # the export is whole: SANA with the adapters merged into it
        assert sum(k.startswith("transformer.") for k in exported) == len(whole.model.transformer.state_dict()) - sum(
            "lora_" in k for k in whole.model.transformer.state_dict())
    reset_accelerate()

    killed = tmp_path / "killed"
    shutil.copytree(first, checkpointing.checkpoint_root(killed) / first.name)
    losses = Trainer(tiny_train_config(tiny, data, killed, **settings)).run()
    assert losses == uninterrupted  # the same machine and process count: the same bytes
    resumed = read_state_dict(killed / "final" / "openuni.pth")
    assert all(torch.equal(resumed[k], exported[k]) for k in exported)


def test_default_data_workers_leave_each_training_process_its_core():
    from openuni.training.trainer import default_data_workers

    assert [default_data_workers(cpus, processes) for cpus, processes in
            [(1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (16, 8), (64, 8), (96, 8)]] == [0, 0, 0, 3, 1, 1, 4, 4]


def test_resuming_webdataset_with_other_readers_says_what_changes(tiny, tmp_path, caplog):
    import logging

    from openuni.training.trainer import Trainer
    from training_helpers import write_webdataset

    shards = write_webdataset(tmp_path / "shards", shards=2, per_shard=3)
    values = dict(data=[dict(kind="webdataset", path=shards)], max_steps=1)
    Trainer(tiny_train_config(tiny, tmp_path / "unused.json", tmp_path / "run", **values)).run()
    reset_accelerate()
    with caplog.at_level(logging.WARNING, logger="openuni"):
        values.update(max_steps=2, num_workers=2)
        Trainer(tiny_train_config(tiny, tmp_path / "unused.json", tmp_path / "run", **values)).run()
    [warning] = [r.getMessage() for r in caplog.records if "WebDataset readers" in r.getMessage()]
    assert "with 2 WebDataset readers (processes x data workers) where the checkpoint had 1" in warning


def test_the_weight_average_is_what_is_exported_and_a_resume_continues_it(tiny, data, tmp_path):
    """`ema_decay`: the export holds the average of the weights after each step (update 1 copies them, update
    u > 1 keeps min(ema_decay, u / (9 + u)) of the average), read here off the live weights each checkpoint holds;
    a run resumed from its step-2 checkpoint exports the same average."""
    from safetensors.torch import load_file

    from openuni.pipeline import OpenUniPipeline
    from openuni.training import checkpointing
    from openuni.training.trainer import Trainer

    settings = dict(max_steps=4, checkpoint_every=1, keep_checkpoints=4, ema_decay=0.5, lr=1e-2, warmup_ratio=0)
    whole = tmp_path / "whole"
    Trainer(tiny_train_config(tiny, data, whole, **settings)).run()
    steps = [load_file(str(path / "model.safetensors")) for path in checkpointing.complete_checkpoints(whole)]
    connector = [name for name in steps[0] if name.startswith("connector.")]
    average = {name: steps[0][name].clone() for name in connector}
    for update, weights in enumerate(steps[1:], start=2):
        keep = min(0.5, update / (9 + update))
        average = {name: keep * average[name] + (1 - keep) * weights[name] for name in connector}
    exported = OpenUniPipeline.from_pretrained(whole / "final" / "pipeline").connector.state_dict()
    moved = 0
    for name in connector:
        short = name.removeprefix("connector.")
        torch.testing.assert_close(exported[short], average[name], rtol=1e-6, atol=1e-7, msg=name)
        moved += not torch.allclose(exported[short], steps[-1][name])
    assert moved, "the export holds the last weights, not their average"
    assert (checkpointing.complete_checkpoints(whole)[-1] / "ema.safetensors").is_file()

    reset_accelerate()
    resumed = tmp_path / "resumed"
    source = checkpointing.complete_checkpoints(whole)[1]
    shutil.copytree(source, checkpointing.checkpoint_root(resumed) / source.name)
    Trainer(tiny_train_config(tiny, data, resumed, **settings)).run()
    again = OpenUniPipeline.from_pretrained(resumed / "final" / "pipeline").connector.state_dict()
    for name, tensor in exported.items():  # the same process count and batches: float noise at most
        torch.testing.assert_close(again[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


def test_resuming_without_an_average_starts_one_and_an_average_of_other_weights_is_refused(tiny, data, tmp_path,
                                                                                          caplog):
    from safetensors.torch import load_file, save_file

    from openuni.errors import OpenUniError
    from openuni.training import checkpointing
    from openuni.training.trainer import Trainer

    Trainer(tiny_train_config(tiny, data, tmp_path, max_steps=1)).run()  # no average
    reset_accelerate()
    with caplog.at_level("WARNING"):
        Trainer(tiny_train_config(tiny, data, tmp_path, max_steps=2, ema_decay=0.9)).run()
    assert "holds no weight average" in caplog.text
    reset_accelerate()
    latest = checkpointing.complete_checkpoints(tmp_path)[-1]
    saved = load_file(str(latest / "ema.safetensors"))
    save_file({f"{name}.other": tensor for name, tensor in saved.items()}, str(latest / "ema.safetensors"))
    with pytest.raises(OpenUniError, match="averages other weights than this run trains"):
        Trainer(tiny_train_config(tiny, data, tmp_path, max_steps=3, ema_decay=0.9)).run()
