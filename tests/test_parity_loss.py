"""The training loss against the reference's recorded `t2i_loss.*` / `i2i_loss.*` (parity README, quirk 7).

The recorded noise and u are fed in; everything else (schedule tables, noisy input, conditioning, DiT output,
loss) is computed by our code from the parity folder's weights through the public API.
"""

from __future__ import annotations

import pytest
import torch

from conftest import PARITY_DIR

pytestmark = pytest.mark.skipif(
    not (PARITY_DIR / "expected.pt").is_file(), reason=f"reference parity fixtures not found at {PARITY_DIR}"
)

NETWORK_TOLERANCE = dict(atol=5e-5, rtol=5e-5)
LOSS_TOLERANCE = dict(atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def expected():
    return torch.load(PARITY_DIR / "expected.pt", weights_only=True)


@pytest.fixture(scope="module")
def model_and_schedule(parity_pipe):
    from openuni.training.model import training_scheduler

    return parity_pipe, training_scheduler(parity_pipe.scheduler.config)


def assert_close(name, actual, expected, tolerance):
    diff = (actual - expected).abs().max().item()
    print(f"{name}: max abs diff {diff:.3g}")
    torch.testing.assert_close(actual, expected, **tolerance, msg=lambda m: f"{name}: {m}")


def test_training_tables_are_unshifted(model_and_schedule, expected):
    _, schedule = model_and_schedule
    assert torch.equal(schedule.timesteps, expected["train_scheduler.timesteps"])
    assert torch.equal(schedule.sigmas[:1000], expected["train_scheduler.sigmas"])


def test_text_to_image_loss(model_and_schedule, expected):
    pipe, schedule = model_and_schedule
    e = {k.removeprefix("t2i_loss."): v for k, v in expected.items() if k.startswith("t2i_loss.")}
    with torch.no_grad():
        caption_embeds = pipe.model.encode_text(e["input_ids"], e["attention_mask"])
        out = pipe.model.flow_matching_loss(e["image_latents"], caption_embeds, schedule, noise=e["noise"], u=e["u"])
    assert torch.equal(out.timesteps, e["timesteps"]) and torch.equal(out.sigmas, e["sigmas"])
    assert_close("t2i_loss.prompt_embeds", caption_embeds, e["prompt_embeds"], NETWORK_TOLERANCE)
    assert_close("t2i_loss.noisy_model_input", out.noisy_latents, e["noisy_model_input"], NETWORK_TOLERANCE)
    assert_close("t2i_loss.target", out.target, e["target"], NETWORK_TOLERANCE)
    assert_close("t2i_loss.model_pred", out.model_pred, e["model_pred"], NETWORK_TOLERANCE)
    assert_close("t2i_loss.loss", out.loss, e["loss"], LOSS_TOLERANCE)


def test_image_to_image_loss(model_and_schedule, expected):
    pipe, schedule = model_and_schedule
    e = {k.removeprefix("i2i_loss."): v for k, v in expected.items() if k.startswith("i2i_loss.")}
    model = pipe.model
    with torch.no_grad():
        vit_embeds = model.semantic_features(e["pixel_values_src"])
        latents = model.pixels_to_latents(e["pixel_values"])
        caption_embeds = model.edit_caption_embeds(e["input_ids"], e["attention_mask"], e["pixel_values_src"])
        out = model.flow_matching_loss(latents, caption_embeds, schedule, noise=e["noise"], u=e["u"])
    assert torch.equal(out.timesteps, e["timesteps"]) and torch.equal(out.sigmas, e["sigmas"])
    assert_close("i2i_loss.vit_embeds", vit_embeds, e["vit_embeds"], NETWORK_TOLERANCE)
    assert_close("i2i_loss.image_latents", latents, e["image_latents"], NETWORK_TOLERANCE)
    assert_close("i2i_loss.prompt_embeds", caption_embeds, e["prompt_embeds"], NETWORK_TOLERANCE)
    assert_close("i2i_loss.noisy_model_input", out.noisy_latents, e["noisy_model_input"], NETWORK_TOLERANCE)
    assert_close("i2i_loss.model_pred", out.model_pred, e["model_pred"], NETWORK_TOLERANCE)
    assert_close("i2i_loss.loss", out.loss, e["loss"], LOSS_TOLERANCE)


def test_training_batches_are_tokenized_and_padded_as_the_reference(model_and_schedule, expected):
    """t2i: generation prompts right-padded with 0; i2i: edit prompts left-padded with 0 (quirk 1)."""
    from openuni.data.collate import tokenize_edit_prompts, tokenize_prompts, training_prompts

    pipe, _ = model_and_schedule
    captions = ["a red cube on the left of a blue sphere", "a green dog"]
    prompts = training_prompts(captions, [0, 1], seed=0, caption_dropout=0.0)
    ids, mask = tokenize_prompts(pipe.tokenizer, prompts)
    assert torch.equal(ids, expected["t2i_loss.input_ids"]) and torch.equal(mask, expected["t2i_loss.attention_mask"])

    instructions = ["make it blue", "Keep the image as it is."]
    ids, mask = tokenize_edit_prompts(pipe.tokenizer, instructions, pipe.model.num_image_tokens)
    assert torch.equal(ids, expected["i2i_loss.input_ids"]) and torch.equal(mask, expected["i2i_loss.attention_mask"])
