"""Caching image-to-image samples: the target's DC-AE latents, with the source beside them, so training skips the VAE.

The source is stored as training would see it: as uint8 pixels [3, H, W] (an edit pair's source resized to the
training size; a reconstruction sample's centred square crop, which is also its target), or, with
`--source-features`, as the InternViT features the loop would compute from those pixels. Features skip the ViT as
well and are smaller than the pixels (256 x 896 values for InternVL3-1B: 448 KiB in bf16, against 768 KiB of 512 px
pixels), but they belong to one MLLM (the projector differs between InternVL3-1B and -2B) and need it to extract.

Shards are laid out, resumed and spread over processes as `latent_cache` does for text-to-image (the same
`shard-XXXXXX.safetensors` names, written whole or not at all); their metadata says `task` (edit | reconstruct).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import save_file

from ..files import write_atomically
from .images import crop_to, resize_to, to_pixels
from .latent_cache import LatentExtractor


def source_and_target(sample: dict, resolution: int):
    """(source, target) images as training prepares them: an edit pair resized, not cropped; a reconstruction
    sample cropped at the centre (the cache holds one crop), its crop being both."""
    if "target" in sample:
        return (resize_to(sample["source"], resolution, resolution),
                resize_to(sample["target"], resolution, resolution))
    crop = crop_to(sample["source"], resolution, resolution)
    return crop, crop


def uint8_pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class EditExtractor(LatentExtractor):
    """`LatentExtractor` for edit and reconstruction sources; `features` (images in [-1, 1] -> InternViT features)
    caches the sources' features instead of their pixels."""

    def __init__(self, *args, task: str, features=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.task, self.features = task, features

    def encode_pairs(self, pairs: list[tuple]) -> list[dict[str, torch.Tensor]]:
        """The tensors of each (source, target) pair: `latents` and `source` or `source_features`."""
        sources = torch.stack([uint8_pixels(source) for source, _ in pairs])
        targets = torch.stack([to_pixels(target) for _, target in pairs])
        with torch.no_grad():
            latents = self.encode(targets).float().cpu()
            if self.features is None:
                return [dict(latents=l, source=s) for l, s in zip(latents, sources)]
            features = self.features(sources.float() / 127.5 - 1.0).cpu()
        return [dict(latents=l, source_features=f) for l, f in zip(latents, features)]

    def encode_samples(self, samples: list[dict]) -> list[tuple]:
        """(tensors, instruction, key) of each sample of a batch."""
        pairs = self.encode_pairs([source_and_target(s, self.resolution) for s in samples])
        return [(tensors, s["instruction"], s["key"]) for tensors, s in zip(pairs, samples)]

    def write(self, path, encoded: list[tuple], skipped: int) -> None:
        tensors, instructions, keys = zip(*encoded)
        write_edit_shard(path, list(tensors), list(instructions), list(keys), skipped, self.task, self.resolution)


def write_edit_shard(path, samples: list[dict[str, torch.Tensor]], instructions: list[str], keys: list[str],
                     skipped: int, task: str, resolution: int) -> None:
    """One shard: per sample `latents.{i}` and `source.{i}` or `source_features.{i}`, the rest in the metadata."""
    tensors = {f"{name}.{i}": tensor.contiguous() for i, sample in enumerate(samples) for name, tensor in sample.items()}
    metadata = {"task": task, "instructions": json.dumps(instructions), "keys": json.dumps(keys),
                "skipped": str(skipped), "resolution": str(resolution)}
    write_atomically(path, lambda partial: save_file(tensors, partial, metadata=metadata))
