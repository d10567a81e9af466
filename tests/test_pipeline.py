"""Text-to-image on the tiny model: outputs, seeds, batching and bad input."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from openuni.errors import OpenUniError
from tolerances import assert_images_close

FAST = dict(num_inference_steps=3, height=64, width=64)


def test_generates_each_output_type(tiny_pipe):
    pil = tiny_pipe("a red cube", seed=1, **FAST).images
    assert len(pil) == 1 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (64, 64)
    array = tiny_pipe("a red cube", seed=1, output_type="np", **FAST).images
    assert array.dtype == np.uint8 and array.shape == (1, 64, 64, 3)
    assert np.array_equal(array[0], np.asarray(pil[0]))
    pixels = tiny_pipe("a red cube", seed=1, output_type="pt", **FAST).images
    assert pixels.shape == (1, 3, 64, 64) and pixels.dtype == torch.float32
    latents = tiny_pipe("a red cube", seed=1, output_type="latent", **FAST).images
    assert latents.shape == (1, 8, 2, 2)  # 32x compression
    assert torch.allclose(tiny_pipe.model.latents_to_pixels(latents), pixels, atol=1e-6)


def test_default_size_is_the_models_resolution(tiny_pipe):
    image = tiny_pipe("a dog", seed=0, num_inference_steps=1).images[0]
    assert image.size == (tiny_pipe.default_resolution,) * 2 == (64, 64)
    wide = tiny_pipe("a dog", seed=0, num_inference_steps=1, height=64, width=128).images[0]
    assert wide.size == (128, 64)


def test_prompt_and_seed_change_the_image(tiny_pipe):
    base = tiny_pipe("a red cube", seed=3, output_type="pt", **FAST).images
    assert not torch.allclose(base, tiny_pipe("a blue dog", seed=3, output_type="pt", **FAST).images)
    assert not torch.allclose(base, tiny_pipe("a red cube", seed=4, output_type="pt", **FAST).images)
    assert torch.equal(base, tiny_pipe("a red cube", seed=3, output_type="pt", **FAST).images)


def test_negative_prompt_and_guidance_change_the_image(tiny_pipe):
    base = tiny_pipe("a red cube", seed=3, output_type="pt", **FAST).images
    negative = tiny_pipe("a red cube", negative_prompt="blurry", seed=3, output_type="pt", **FAST).images
    unguided = tiny_pipe("a red cube", guidance_scale=1.0, seed=3, output_type="pt", **FAST).images
    assert not torch.allclose(base, negative) and not torch.allclose(base, unguided)


def test_seed_fixes_each_image_whatever_the_batch(tiny_pipe):
    """Image k of a prompt with seed s is the same alone, in a bigger batch, or next to other prompts: equal within
    the batch-composition promise (padding lengths and batch sizes change kernel summation order)."""
    prompts = ["a red cube", "two green birds", "a white boat at night"]
    batched = tiny_pipe(prompts, num_images_per_prompt=2, seed=7, output_type="pt", **FAST).images
    assert batched.shape[0] == 6
    for p, prompt in enumerate(prompts):
        alone = tiny_pipe(prompt, num_images_per_prompt=2, seed=7, output_type="pt", **FAST).images
        assert_images_close(batched[2 * p:2 * p + 2], alone)
    # Image 1 of a prompt is image 0 of seed s + 1; a single image is the reference's noise for its seed.
    second = tiny_pipe("a red cube", seed=8, output_type="pt", **FAST).images
    assert_images_close(batched[1:2], second)
    noise = tiny_pipe.prepare_latents(1, 1, 64, 64, seed=8, generator=None)
    assert torch.equal(noise, torch.randn(1, 8, 2, 2, generator=torch.Generator("cpu").manual_seed(8)))


def test_per_prompt_seeds_and_generators(tiny_pipe):
    both = tiny_pipe(["a", "b"], seed=[5, 9], output_type="latent", **FAST).images
    assert torch.allclose(both[1:], tiny_pipe("b", seed=9, output_type="latent", **FAST).images, atol=1e-4)
    generators = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(9)]
    same = tiny_pipe(["a", "b"], generator=generators, output_type="latent", **FAST).images
    assert torch.allclose(both, same, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(height=48), "multiple of 32"),
    (dict(width=0), "multiple of 32"),
    (dict(prompt=""), "non-empty"),
    (dict(prompt=[]), "no prompt"),
    (dict(output_type="jpeg"), "output_type"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(seed=[1, 2]), "2 seeds for 1 prompts"),
    (dict(negative_prompt=["x", "y"]), "negative prompts"),
])
def test_bad_input_is_refused_clearly(tiny_pipe, bad, match):
    kwargs = dict(prompt="a red cube", seed=0, **FAST)
    kwargs.update(bad)
    with pytest.raises(OpenUniError, match=match):
        tiny_pipe(**kwargs)
