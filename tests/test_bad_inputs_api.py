"""The bad-input suite, Python API: what a stranger or an adversary hands `SamplingOptions`, the pipeline, the device
policy, the loaders and the chat, each row with the one-line `OpenUniError` it must get (or the value it must be
accepted as). Everything that must fail does so before any model runs."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from openuni.chat import InternVLChat
from openuni.devices import resolve_device
from openuni.errors import OpenUniError
from openuni.pipeline import OpenUniPipeline
from openuni.sampling import SamplingOptions

from conftest import load_tiny_pipeline

FAST = dict(num_inference_steps=1, height=64, width=64, seed=0, output_type="pt")

# -- SamplingOptions.check: every request path (generate, edit, eval, demo, serve) goes through it ----------------

SAMPLING_REFUSED = [
    (dict(height=100), "height must be a positive multiple of 32"),
    (dict(height=0), "height must be a positive multiple of 32"),
    (dict(height=64.0), "height must be a whole number"),
    (dict(width="64"), "width must be a whole number"),
    (dict(height=100_000, width=100_000), "height must be at most 4096 pixels"),
    (dict(steps=0), "steps must be at least 1"),
    (dict(steps=1_000_000), "steps must be at most 1000"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(cfg_scale=math.nan), "cfg_scale must be a finite number"),
    (dict(cfg_scale=math.inf), "cfg_scale must be a finite number"),
    (dict(cfg_scale=-math.inf), "cfg_scale must be a finite number"),
    (dict(cfg_scale="4.5"), "cfg_scale must be a number"),
    (dict(seed=2**63), "seed must be at most"),
    (dict(seed=2**64), "seed must be at most"),
    (dict(seed=-1), "seed must be at least 0"),
    (dict(seed=2**63 - 1, num_images=2), "seed must be at most"),  # image 1 would use seed + 1
    (dict(seed=True), "seed must be a whole number"),
    (dict(seed="42"), "seed must be a whole number"),
    (dict(num_images=0), "num_images must be at least 1"),
    (dict(negative_prompt=7), "negative_prompt must be text"),
]


@pytest.mark.parametrize("settings, message", SAMPLING_REFUSED)
def test_sampling_options_refuse(settings, message):
    with pytest.raises(OpenUniError, match=message):
        SamplingOptions(**settings).check()


@pytest.mark.parametrize("settings, plain", [
    (dict(height=np.int64(64), width=np.int32(96)), dict(height=64, width=96)),
    (dict(steps=np.int64(3), seed=np.uint8(7), num_images=np.int16(2)), dict(steps=3, seed=7, num_images=2)),
    (dict(cfg_scale=np.float32(3.5)), dict(cfg_scale=3.5)),
    (dict(seed=2**63 - 1), dict(seed=2**63 - 1)),
])
def test_sampling_options_take_numpy_numbers_as_plain_ones(settings, plain):
    checked = SamplingOptions(**settings).check()
    for name, value in plain.items():
        assert getattr(checked, name) == value and type(getattr(checked, name)) is type(value)
    json.dumps(checked.__dict__)  # run records can hold them


# -- the pipeline: types, finiteness and bounds at its public boundary ---------------------------------------------

PIPELINE_REFUSED = [
    (dict(prompt={"a red cube": 1}), "prompt must be a string or a list of strings, got dict"),
    (dict(prompt=["a red cube", 3]), "it holds a int"),
    (dict(prompt=None), "prompt must be a string or a list of strings"),
    (dict(prompt=b"a red cube"), "prompt must be a string or a list of strings, got bytes"),
    (dict(prompt=[]), "no prompt given"),
    (dict(prompt="a cube", negative_prompt={"blurry": 1}), "negative_prompt must be a string or a list"),
    (dict(prompt="a cube", height=100), "height must be a positive multiple of 32"),
    (dict(prompt="a cube", height=64.0), "height must be a whole number"),
    (dict(prompt="a cube", height=1024), "over this model's limit of 256 pixels"),
    (dict(prompt="a cube", num_inference_steps=0), "num_inference_steps must be at least 1"),
    (dict(prompt="a cube", num_inference_steps=5000), "num_inference_steps must be at most 1000"),
    (dict(prompt="a cube", guidance_scale=math.nan), "guidance_scale must be a finite number"),
    (dict(prompt="a cube", guidance_scale=math.inf), "guidance_scale must be a finite number"),
    (dict(prompt="a cube", seed=2**64), "seed must be at most"),
    (dict(prompt="a cube", seed=-5), "seed must be at least 0"),
    (dict(prompt="a cube", num_images_per_prompt=0), "num_images_per_prompt must be at least 1"),
    (dict(prompt="a cube", output_type="jpeg"), "output_type must be one of"),
    (dict(prompt="a cube", latents=torch.randn(1, 8, 8, 8)), "do not fit 64x64 images"),
    (dict(prompt="a cube", latents=torch.full((1, 8, 2, 2), math.nan)), "latents hold NaN or infinite"),
    (dict(prompt="a cube", latents=torch.randn(2, 8, 2, 2)), "latents hold 2 images, the request makes 1"),
    (dict(prompt="a cube", latents=[[0.0]]), "latents must be a torch.Tensor"),
]


@pytest.mark.parametrize("call, message", PIPELINE_REFUSED)
def test_pipeline_refuses_before_any_model_runs(tiny_pipe, call, message):
    ran = []
    hook = tiny_pipe.mllm.register_forward_pre_hook(lambda *args: ran.append(True))
    try:
        with pytest.raises(OpenUniError, match=message):
            tiny_pipe(**{**FAST, **call})
    finally:
        hook.remove()
    assert not ran  # refused before the MLLM saw anything


def test_numpy_sizes_and_steps_are_plain_numbers_to_the_pipeline(tiny_pipe):
    expected = tiny_pipe("a red cube", **FAST).images
    given = tiny_pipe("a red cube", **{**FAST, "height": np.int64(64), "width": np.int32(64),
                                       "num_inference_steps": np.int64(1), "seed": np.int64(0),
                                       "guidance_scale": np.float32(4.5)}).images
    assert torch.equal(given, expected)


def test_latents_of_the_right_size_are_used_as_given(tiny_pipe):
    noise = torch.randn(1, 8, 2, 2, generator=torch.Generator().manual_seed(0))
    given = tiny_pipe("a red cube", **{**FAST, "latents": noise}).images
    assert torch.equal(given, tiny_pipe("a red cube", **FAST).images)


@pytest.fixture
def small_window(tiny_pipe, monkeypatch):
    """The tiny MLLM with a 256-token window, so an over-long prompt is short enough to build in a test."""
    monkeypatch.setattr(tiny_pipe.mllm.config.text_config, "max_position_embeddings", 256)
    return tiny_pipe


@pytest.mark.parametrize("call", [
    lambda pipe: pipe("a red cube " * 200, **FAST),
    lambda pipe: pipe("a red cube", negative_prompt="blurry " * 300, **FAST),
    lambda pipe: pipe.edit(PIL.Image.new("RGB", (64, 64)), "make it blue " * 200, **FAST),
])
def test_prompts_beyond_the_mllm_window_are_refused_naming_the_limit(small_window, call):
    ran = []
    hook = small_window.mllm.model.language_model.register_forward_pre_hook(lambda *args: ran.append(True))
    try:
        with pytest.raises(OpenUniError, match=r"tokens long with its template, over the 248 the MLLM reads "
                                               r"\(its 256-token window less 8 queries\)"):
            call(small_window)
    finally:
        hook.remove()
    assert not ran


def test_a_prompt_within_the_window_still_runs(small_window):
    assert small_window("a red cube " * 20, **FAST).images.shape == (1, 3, 64, 64)


def test_nan_weights_fail_instead_of_giving_a_black_image(tiny_pipe):
    weight = tiny_pipe.transformer.proj_out.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.fill_(math.nan)
    try:
        with pytest.raises(OpenUniError, match="denoised latents of 1 of 1 images are NaN or infinite"):
            tiny_pipe("a red cube", **FAST)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert torch.isfinite(tiny_pipe("a red cube", **FAST).images).all()


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_checkpoint_with_nan_or_inf_weights_is_refused_naming_the_tensor(tiny, tmp_path, value):
    state = torch.load(tiny.checkpoint, weights_only=True)
    state["transformer.proj_out.weight"][0, 0] = value
    torch.save(state, tmp_path / "diverged.pth")
    with pytest.raises(OpenUniError, match="'proj_out.weight' holds NaN or infinite values"):
        load_tiny_pipeline(tiny, checkpoint=tmp_path / "diverged.pth")


# -- the device policy -----------------------------------------------------------------------------------------------

DEVICES_REFUSED = [
    ("gpu", "unknown device 'gpu'"),
    ("", "unknown device ''"),
    ("cuda:x", "unknown device 'cuda:x'"),
    ("meta", "holds no data"),
    ("cpu:1", "there is one CPU device"),
]
if not torch.cuda.is_available():
    DEVICES_REFUSED += [("cuda", "this machine has no CUDA GPU"), ("cuda:3", "this machine has no CUDA GPU")]
if not (torch.cuda.is_available() or (getattr(torch, "xpu", None) and torch.xpu.is_available())):
    DEVICES_REFUSED += [("xpu", "not available on this machine"), ("mps", "not available on this machine")]


@pytest.mark.parametrize("name, message", DEVICES_REFUSED)
def test_devices_this_machine_lacks_are_refused(name, message):
    with pytest.raises(OpenUniError, match=message):
        resolve_device(name)


def test_the_cpu_is_always_there():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("cpu:0").type == "cpu"


# -- loading damaged or mismatched components ---------------------------------------------------------------------

def damaged_copy(tiny, tmp_path, part: str, damage):
    target = tmp_path / part
    shutil.copytree(getattr(tiny, part), target)
    damage(target)
    return target


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def resize_llm(folder):
    config = json.loads((folder / "config.json").read_text())
    config["llm_config"]["hidden_size"] = 96
    (folder / "config.json").write_text(json.dumps(config))


DAMAGED_PARTS = [
    ("mllm", lambda d: truncate(d / "model.safetensors"), "cannot load the InternVL3 weights in"),
    ("mllm", lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "cannot load the InternVL3 weights in"),
    ("mllm", resize_llm, r"weight '\S+' is \(\d+, 64\) but config.json makes it \(\d+, 96\).*do not belong"),
    ("mllm", lambda d: (d / "config.json").write_text("[1, 2]"), "expected a JSON object of settings, got a list"),
    ("mllm", lambda d: (d / "config.json").write_text("{not json"), "config.json: unreadable"),
    ("mllm", lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00"), "config.json: unreadable"),
    ("transformer", lambda d: (d / "config.json").write_text("[1, 2]"), "--transformer .*config.json is a JSON list"),
    ("transformer", lambda d: truncate(d / "diffusion_pytorch_model.safetensors"), "--transformer .*cannot load"),
    ("vae", lambda d: (d / "config.json").write_text('"a string"'), "--vae .*config.json is a JSON str"),
    ("vae", lambda d: (d / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage"), "--vae .*cannot load"),
    ("scheduler", lambda d: (d / "scheduler_config.json").write_text("{{{"), "--scheduler .*cannot read a scheduler"),
    ("scheduler", lambda d: (d / "scheduler_config.json").write_text("[1]"), "--scheduler .*cannot read a scheduler"),
]


@pytest.mark.parametrize("part, damage, message", DAMAGED_PARTS)
def test_damaged_components_are_one_line_naming_them(tiny, tmp_path, part, damage, message):
    broken = damaged_copy(tiny, tmp_path, part, damage)
    with pytest.raises(OpenUniError, match=message):
        load_tiny_pipeline(tiny, **{part: broken}, tokenizer=tiny.tokenizer)


@pytest.mark.parametrize("damage, message", [
    (lambda d: truncate(d / "model.safetensors"), "cannot load the InternVL3 weights in"),
    (resize_llm, "do not belong together"),
])
def test_chat_with_a_damaged_mllm_is_one_line(tiny, tmp_path, damage, message):
    broken = damaged_copy(tiny, tmp_path, "mllm", damage)
    with pytest.raises(OpenUniError, match=message):
        InternVLChat.from_pretrained(mllm=broken, device="cpu")


@pytest.fixture(scope="module")
def saved_pipeline(tiny_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "pipeline"
    tiny_pipe.save_pretrained(folder)
    return folder


def pickled_vae(folder):
    weights = next((folder / "vae").glob("*.safetensors"))
    torch.save(load_file(weights), folder / "vae" / "diffusion_pytorch_model.bin")
    weights.unlink()


DAMAGED_SAVES = [
    (lambda d: (d / "model_index.json").write_text("{{{"), "not a valid JSON file"),
    (lambda d: (d / "model_index.json").write_text("[1]"), "cannot load a saved OpenUni pipeline"),
    (lambda d: shutil.rmtree(d / "connector"), "cannot load a saved OpenUni pipeline"),
    (lambda d: truncate(next((d / "connector").glob("*.safetensors"))), "cannot load a saved OpenUni pipeline"),
    (lambda d: truncate(next((d / "mllm").glob("*.safetensors"))), "cannot load a saved OpenUni pipeline"),
    (lambda d: (d / "transformer" / "config.json").write_text("[1]"), "cannot load a saved OpenUni pipeline"),
    (lambda d: shutil.rmtree(d / "tokenizer"), "lacks InternVL's special token"),
    (pickled_vae, "no file named diffusion_pytorch_model.safetensors"),  # never a pickle fallback
]


@pytest.mark.parametrize("damage, message", DAMAGED_SAVES)
def test_a_damaged_saved_pipeline_is_one_line(saved_pipeline, tmp_path, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(saved_pipeline, broken)
    damage(broken)
    with pytest.raises(OpenUniError, match=message):
        OpenUniPipeline.from_pretrained(broken)


# -- the chat -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat(tiny_pipe):
    return InternVLChat(tiny_pipe.mllm, tiny_pipe.tokenizer)


def picture(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    path = tmp_path / "picture.png"
    PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("given", [str, lambda path: path, lambda path: PIL.Image.open(path)])
def test_one_image_given_alone_is_one_image(chat, tmp_path, given):
    path = picture(tmp_path)
    inputs, question, tiles = chat.prepare("What is this?", given(path))
    assert len(tiles) == 1 and question.count("<image>") == 1
    assert torch.equal(inputs["pixel_values"], chat.prepare("What is this?", [path])[0]["pixel_values"])


CHAT_REFUSED = [
    (dict(do_sample=True, temperature=math.nan), "temperature must be a finite number"),
    (dict(do_sample=True, temperature=math.inf), "temperature must be a finite number"),
    (dict(do_sample=True, top_p=math.nan), "top_p must be a finite number"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
    (dict(max_new_tokens="8"), "max_new_tokens must be a whole number"),
]


@pytest.mark.parametrize("settings, message", CHAT_REFUSED)
def test_chat_settings_are_checked_before_generating(chat, settings, message):
    with pytest.raises(OpenUniError, match=message):
        chat.ask("What is this?", **settings)
    with pytest.raises(OpenUniError, match=message):
        next(iter(chat.stream("What is this?", **settings)))


def test_more_images_than_the_window_holds_are_refused_before_tiling(chat, monkeypatch):
    tiled, tile = [], chat.tile
    monkeypatch.setattr(chat.model.config.text_config, "max_position_embeddings", 16)
    monkeypatch.setattr(chat, "tile", lambda image: (tiled.append(image), tile(image))[1])  # counts, then tiles
    images = [PIL.Image.new("RGB", (64, 64))] * 5  # at least one tile of 4 tokens each: 20, over 16
    with pytest.raises(OpenUniError, match="5 images take at least 20 tokens, over the model's 16"):
        chat.prepare("Compare them.", images)
    assert not tiled
