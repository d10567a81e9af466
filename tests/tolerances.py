"""What we promise about images made in different batch compositions, as one assertion the tests share.

The promise (README, "Reproducibility"): batch composition (batch size, the other prompts of a batch, the process
count) changes an image only by float rounding, because batched CPU/GPU kernels sum in other orders; uint8 pixels
then agree within MAX_PIXEL_LEVELS levels and on average within MEAN_PIXEL_LEVELS. The same batch composition on
the same machine and software gives identical bytes. On a CPU with AVX-512 or AMX, a tiny-model edit moved by one
level (2.3e-5 in float) between a batch of two and images made one by one.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

MAX_PIXEL_LEVELS = 2
MEAN_PIXEL_LEVELS = 0.1


def _levels(images) -> np.ndarray:
    """uint8 levels as float64: PIL images, uint8 arrays, or float tensors in [-1, 1] (the pipeline's `pt`)."""
    if isinstance(images, PIL.Image.Image):
        return np.asarray(images.convert("RGB"), dtype=np.float64)
    if isinstance(images, (list, tuple)):
        return np.stack([_levels(image) for image in images])
    if isinstance(images, torch.Tensor):
        return images.detach().double().cpu().numpy() * 127.5
    array = np.asarray(images)
    return array.astype(np.float64) * (127.5 if array.dtype.kind == "f" else 1.0)


def assert_images_close(actual, expected, what: str = "images") -> None:
    """Equal within the batch-composition promise."""
    actual, expected = _levels(actual), _levels(expected)
    assert actual.shape == expected.shape, f"{what}: shapes {actual.shape} and {expected.shape}"
    difference = np.abs(actual - expected)
    assert difference.max() <= MAX_PIXEL_LEVELS and difference.mean() <= MEAN_PIXEL_LEVELS, (
        f"{what}: differ by up to {difference.max():.2f} levels (mean {difference.mean():.4f}); the promise is "
        f"<= {MAX_PIXEL_LEVELS} (mean <= {MEAN_PIXEL_LEVELS})")
