"""Loading: both InternVL layouts, release .pth files good and bad, the saved pipeline format."""

from __future__ import annotations

import json

import pytest
import torch

from safetensors.torch import load_file

from openuni.checkpoints import read_state_dict, save_release
from openuni.errors import OpenUniError
from openuni.pipeline import OpenUniPipeline

from conftest import load_tiny_pipeline

FAST = dict(num_inference_steps=2, height=64, width=64, seed=0, output_type="pt")


def test_both_internvl_layouts_give_identical_images(tiny, tiny_pipe):
    hf_pipe = load_tiny_pipeline(tiny, mllm=tiny.mllm_hf)
    hf_pipe.set_progress_bar_config(disable=True)
    original = tiny_pipe.mllm.state_dict()
    native = hf_pipe.mllm.state_dict()
    assert original.keys() == native.keys()
    assert all(torch.equal(original[k], native[k]) for k in original)
    assert torch.equal(tiny_pipe("a red cube", **FAST).images, hf_pipe("a red cube", **FAST).images)


def test_release_checkpoint_weights_are_loaded(tiny, tiny_pipe):
    release = torch.load(tiny.checkpoint, weights_only=True)
    assert torch.equal(tiny_pipe.connector.meta_queries, release["meta_queries"])
    assert torch.equal(tiny_pipe.connector.projector.weight, release["projector.weight"])
    # The release SANA differs from the base repo's; the pipeline must run the release one.
    key = "transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(tiny_pipe.transformer.state_dict()[key], release["transformer." + key])

    base = load_file(tiny.transformer / "diffusion_pytorch_model.safetensors")
    assert not torch.equal(base[key], release["transformer." + key])


def write_variant(tiny, tmp_path, name, edit):
    state = torch.load(tiny.checkpoint, weights_only=True)
    state = edit(state)
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_nested_and_full_state_dicts_load(tiny, tmp_path):
    nested = write_variant(tiny, tmp_path, "nested.pth", lambda s: {"state_dict": s})
    assert read_state_dict(nested).keys() == torch.load(tiny.checkpoint, weights_only=True).keys()
    full = write_variant(tiny, tmp_path, "full.pth", lambda s: {**s, "lmm.language_model.lm_head.weight": torch.zeros(2),
                                                               "vae.decoder.conv_out.bias": torch.zeros(3)})
    pipe = load_tiny_pipeline(tiny, checkpoint=full)
    assert torch.equal(pipe.connector.meta_queries, torch.load(tiny.checkpoint, weights_only=True)["meta_queries"])


def test_legacy_format_release_file_loads(tiny, tmp_path):
    """torch's pre-zip format cannot be memory-mapped; it is still a valid release file."""
    state = torch.load(tiny.checkpoint, weights_only=True)
    legacy = tmp_path / "legacy.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    loaded = read_state_dict(legacy)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("edit, match", [
    (lambda s: {k: v for k, v in s.items() if k != "connector.layers.1.mlp.fc2.bias"}, "connector.layers.1.mlp.fc2.bias"),
    (lambda s: {**s, "connector.layers.0.self_attn.q_proj.weight": torch.zeros(64, 32)}, "q_proj.weight.*shape"),
    (lambda s: {k: v for k, v in s.items() if k != "transformer.proj_out.weight"}, "transformer.*proj_out.weight"),
    (lambda s: {**s, "transformer.caption_projection.linear_1.weight": torch.zeros(3, 3)}, "caption_projection"),
    (lambda s: {k: v for k, v in s.items() if k != "meta_queries"}, "meta_queries"),
])
def test_broken_release_files_fail_naming_the_key(tiny, tmp_path, edit, match):
    path = write_variant(tiny, tmp_path, "broken.pth", edit)
    with pytest.raises(OpenUniError, match=match):
        load_tiny_pipeline(tiny, checkpoint=path)


def test_unsafe_or_damaged_files_are_refused(tiny, tmp_path):
    import argparse

    pickled = tmp_path / "objects.pth"
    torch.save({"meta_queries": argparse.Namespace(payload="any object")}, pickled)
    with pytest.raises(OpenUniError, match="refusing"):
        read_state_dict(pickled)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny.checkpoint.read_bytes()[:5000])
    with pytest.raises(OpenUniError, match="cannot read"):
        read_state_dict(truncated)
    with pytest.raises(OpenUniError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")


def test_connector_size_comes_from_variant_or_head_count(tiny):
    with pytest.raises(OpenUniError, match="--connector-heads"):
        load_tiny_pipeline(tiny, connector_heads=None)
    with pytest.raises(OpenUniError, match="does not divide"):
        load_tiny_pipeline(tiny, connector_heads=5)
    pipe = load_tiny_pipeline(tiny, connector_heads=2)
    assert pipe.connector.config.num_attention_heads == 2 and pipe.connector.config.num_queries == tiny.num_queries


def test_missing_local_components_are_named(tiny, tmp_path):
    with pytest.raises(OpenUniError, match="--vae .*no such directory"):
        load_tiny_pipeline(tiny, vae=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OpenUniError, match="--transformer .*no config.json"):
        load_tiny_pipeline(tiny, transformer=tmp_path / "empty")
    with pytest.raises(OpenUniError, match="not an InternVL3 model directory"):
        load_tiny_pipeline(tiny, mllm=tmp_path / "empty", tokenizer=tiny.tokenizer)


def test_damaged_sana_or_vae_folders_are_named(tiny, tmp_path):
    import shutil

    for name in ("transformer", "vae"):
        broken = tmp_path / name
        shutil.copytree(getattr(tiny, name), broken)
        (broken / "diffusion_pytorch_model.safetensors").unlink()
        with pytest.raises(OpenUniError, match=f"--{name} .*cannot load"):
            load_tiny_pipeline(tiny, **{name: broken})
    with pytest.raises(OpenUniError, match="--vae .*cannot load"):
        load_tiny_pipeline(tiny, vae=tiny.transformer)  # a SANA config is no DC-AE


def test_unreachable_hub_names_what_to_download(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OpenUniError, match=r"Efficient-Large-Model/Sana_600M_512px_diffusers.*--transformer PATH"
                                           r".*openuni download openuni-b-512"):
        load_tiny_pipeline(tiny, transformer=None)


def test_save_and_load_round_trip_bit_exactly(tiny_pipe, tmp_path):
    target = tmp_path / "saved"
    tiny_pipe.save_pretrained(target)
    index = json.loads((target / "model_index.json").read_text())
    assert index["_class_name"] == "OpenUniPipeline"
    assert {"tokenizer", "mllm", "connector", "transformer", "vae", "scheduler"} <= set(index)
    assert not list(tmp_path.glob("*.partial"))
    loaded = OpenUniPipeline.from_pretrained(target)
    loaded.set_progress_bar_config(disable=True)
    for name in ("mllm", "connector", "transformer", "vae"):
        before, after = getattr(tiny_pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert before.keys() == after.keys(), name
        assert all(torch.equal(before[k], after[k]) for k in before), name
    def sizes(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert sizes(loaded.connector.config) == sizes(tiny_pipe.connector.config)
    assert torch.equal(tiny_pipe("a red cube", **FAST).images, loaded("a red cube", **FAST).images)


def test_saving_into_a_users_folder_keeps_everything_else_in_it(tiny_pipe, tmp_path):
    """Only our files are written or replaced; a stale weight shard of an older save goes, nothing else does."""
    target = tmp_path / "mine"
    (target / "src").mkdir(parents=True)
    (target / "NOTES.md").write_text("my notes")
    (target / "src" / "train.py").write_text("print('mine')")
    (target / "transformer").mkdir()
    stale = target / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    stale.write_bytes(b"an older save's shard")
    (target / "transformer" / "README.md").write_text("about my transformer")
    tiny_pipe.save_pretrained(target)
    assert (target / "NOTES.md").read_text() == "my notes"
    assert (target / "src" / "train.py").read_text() == "print('mine')"
    assert (target / "transformer" / "README.md").read_text() == "about my transformer"
    assert not stale.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]
    loaded = OpenUniPipeline.from_pretrained(target)
    assert torch.equal(loaded.transformer.state_dict()["proj_out.weight"],
                       tiny_pipe.transformer.state_dict()["proj_out.weight"])


def test_saving_onto_a_file_is_refused_before_writing(tiny_pipe, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"a user's file")
    with pytest.raises(OpenUniError, match="exists and is not a folder"):
        tiny_pipe.save_pretrained(target)
    assert target.read_bytes() == b"a user's file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_release_file_round_trip(tiny, tiny_pipe, tmp_path):
    path = tmp_path / "export.pth"
    save_release(tiny_pipe.connector, tiny_pipe.transformer, path)
    pipe = load_tiny_pipeline(tiny, checkpoint=path)
    assert torch.equal(pipe.connector.meta_queries, tiny_pipe.connector.meta_queries)


def copy_mllm_without(tiny, tmp_path, drop):
    import shutil

    from safetensors.torch import save_file

    target = tmp_path / "mllm"
    shutil.copytree(tiny.mllm, target)
    weights = load_file(target / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not drop(k)}, target / "model.safetensors")
    return target, weights


def test_mllm_without_lm_head_ties_it_to_the_embeddings(tiny, tmp_path):
    from openuni.internvl import load_mllm
    from openuni.loading import load_tokenizer

    target, weights = copy_mllm_without(tiny, tmp_path, lambda k: k == "language_model.lm_head.weight")
    model = load_mllm(target, load_tokenizer(tiny.tokenizer))
    assert torch.equal(model.lm_head.weight, weights["language_model.model.embed_tokens.weight"])


def test_mllm_with_missing_weights_is_refused(tiny, tmp_path):
    from openuni.internvl import load_mllm
    from openuni.loading import load_tokenizer

    target, _ = copy_mllm_without(tiny, tmp_path, lambda k: "layers.1.mlp.down_proj" in k)
    with pytest.raises(OpenUniError, match="down_proj"):
        load_mllm(target, load_tokenizer(tiny.tokenizer))
    (target / "model.safetensors").unlink()
    with pytest.raises(OpenUniError, match="cannot load the InternVL3 weights"):
        load_mllm(target, load_tokenizer(tiny.tokenizer))


def test_loading_and_casting_print_no_misleading_library_warnings(tiny):
    """transformers' "model of type `internvl_chat` to instantiate a model of type ``" (the tokenizer's look at the
    original layout's config.json) and diffusers' "should be kept in float32: []" (any `.to(dtype)`) say nothing
    true here; other warnings of those loggers still pass."""
    import logging

    import diffusers
    import transformers

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    names = ("transformers.configuration_utils", "diffusers.models.modeling_utils")
    handler, loggers = Keep(), [logging.getLogger(name) for name in names]
    levels = transformers.logging.get_verbosity(), diffusers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    diffusers.logging.set_verbosity_warning()
    for logger in loggers:
        logger.addHandler(handler)
    try:
        pipe = load_tiny_pipeline(tiny)
        pipe.to("cpu", torch.bfloat16)
        loggers[1].warning("another diffusers warning")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        transformers.logging.set_verbosity(levels[0])
        diffusers.logging.set_verbosity(levels[1])
    assert pipe.transformer.dtype == torch.bfloat16
    assert seen == ["another diffusers warning"]


def test_a_failed_bf16_load_leaves_torch_default_dtype_alone(tiny, tmp_path):
    """transformers sets the default dtype to the load's while building the model and, when the weights turn out
    truncated, leaves it so: every float tensor made afterwards would be bf16."""
    import shutil

    from openuni.internvl import load_mllm
    from openuni.loading import load_tokenizer

    broken = tmp_path / "mllm"
    shutil.copytree(tiny.mllm, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(OpenUniError):
        load_mllm(broken, load_tokenizer(tiny.mllm), dtype=torch.bfloat16)
    assert torch.get_default_dtype() == torch.float32
