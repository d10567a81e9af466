"""Readers of image-to-image data: instruction-edit pairs, and reconstruction samples made from any image data.

Each yields `{"task": "image2image", "instruction": str, "source": PIL, "target": PIL, "key"}`; reconstruction
samples have no `target` (the source, cropped, is the target), cached ones carry `latents` (the target's) and
`source_pixels` or `source_features` instead of images.

- `JsonEditPairs`: the reference's `ImageEditDataset` layout, a JSON list of `{"source_image", "target_image",
  "annotation"}`; the instruction is the annotation's caption (a .json file's `caption_key`, a .txt file, or inline).
- `EditShards`: WebDataset records of `src.<ext>` + `tgt.<ext>` + `txt` (or `json` with the instruction).
- `JsonReconstruction` / `ReconstructionShards`: the reference's `ReconstructDataset` over any image data of the
  text-to-image layouts; only the images are read (captions may be missing), the instruction is "Keep the image as
  it is.".
- `CachedEdits`: shards of `openuni extract-latents --task edit|reconstruct`.

A sample that cannot be used (missing or unreadable source or target, empty instruction) raises `BadSample`.
"""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
from safetensors import safe_open

from ..prompting import RECONSTRUCTION_INSTRUCTION
from .images import BadSample, decode_image
from .sources import (IMAGE_EXTENSIONS, IMAGE_TO_IMAGE, JsonImageFolder, WebDatasetShards, caption_from_json,
                      index_latent_shards)

INSTRUCTION_KEYS = ("instruction", "caption", "prompt")


class JsonEditPairs(JsonImageFolder):
    """`[{"source_image": file, "target_image": file, "annotation": file}]`, images under `image_dir`."""

    task = IMAGE_TO_IMAGE
    required_keys = ("source_image", "target_image")
    text_keys = INSTRUCTION_KEYS

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        instruction = self.read_caption(entry)
        return {"task": IMAGE_TO_IMAGE, "instruction": instruction, "source": self.read_image(entry["source_image"]),
                "target": self.read_image(entry["target_image"]), "key": str(entry["target_image"])}


class JsonReconstruction(JsonImageFolder):
    """The images of a text-to-image JSON index as reconstruction samples (their captions are not read)."""

    task = IMAGE_TO_IMAGE

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        return {"task": IMAGE_TO_IMAGE, "instruction": RECONSTRUCTION_INSTRUCTION,
                "source": self.read_image(entry["image"]), "key": str(entry["image"])}


def record_image(raw: dict, key: str, prefix: str = "") -> PIL.Image.Image:
    """The record's image stored under `<prefix><ext>` (`src.jpg`, `tgt.png`, or plain `jpg` without prefix)."""
    names = [f"{prefix}{ext}" for ext in IMAGE_EXTENSIONS]
    data = next((raw[name] for name in names if name in raw), None)
    if data is None:
        raise BadSample(f"{key}: no image {'/'.join(names)} in the record")
    return decode_image(data, f"{key} {prefix.rstrip('.') or 'image'}")


def record_key(raw: dict) -> str:
    return f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"


class EditShards(WebDatasetShards):
    """WebDataset edit pairs: `<key>.src.jpg`, `<key>.tgt.jpg` and `<key>.txt` (or `<key>.json`) per record."""

    task = IMAGE_TO_IMAGE

    def sample(self, raw: dict) -> dict:
        key = record_key(raw)
        if "txt" in raw:
            instruction = raw["txt"].decode("utf-8", errors="replace").strip()
        elif "json" in raw:
            try:
                instruction = caption_from_json(json.loads(raw["json"]), self.caption_key, key, INSTRUCTION_KEYS)
            except ValueError as error:
                raise BadSample(f"{key}: invalid JSON ({error})") from None
        else:
            raise BadSample(f"{key}: no instruction (txt/json) in the record")
        if not instruction:
            raise BadSample(f"{key}: empty instruction")
        return {"task": IMAGE_TO_IMAGE, "instruction": instruction, "source": record_image(raw, key, "src."),
                "target": record_image(raw, key, "tgt."), "key": key}


class ReconstructionShards(WebDatasetShards):
    """The images of text-to-image WebDataset shards as reconstruction samples (captions not needed)."""

    task = IMAGE_TO_IMAGE

    def sample(self, raw: dict) -> dict:
        key = record_key(raw)
        return {"task": IMAGE_TO_IMAGE, "instruction": RECONSTRUCTION_INSTRUCTION, "source": record_image(raw, key),
                "key": key}


class CachedEdits:
    """Shards of `extract-latents --task edit|reconstruct`: `latents.{i}` (the target's), `source.{i}` (the source
    as uint8 [3, H, W], as training resizes or crops it) or `source_features.{i}` (its InternViT features), and the
    instructions in the metadata."""

    task = IMAGE_TO_IMAGE

    def __init__(self, path: str | Path, expected_task: str):
        self.path = Path(path)
        self.index, self.instructions = index_latent_shards(
            self.path, expected_task, "instructions", f" --task {expected_task}",
            lambda shard, found: f"{shard} holds {found} samples, this source is `task: {expected_task}`: extract "
                                 f"with `--task {expected_task}` or change the task")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict:
        shard, position = self.index[index]
        sample = {"task": IMAGE_TO_IMAGE, "instruction": self.instructions[shard][position],
                  "key": f"{shard.name}:{position}"}
        try:
            with safe_open(shard, framework="pt") as reader:
                sample["latents"] = reader.get_tensor(f"latents.{position}").float()
                if f"source_features.{position}" in reader.keys():
                    sample["source_features"] = reader.get_tensor(f"source_features.{position}")
                else:
                    sample["source_pixels"] = reader.get_tensor(f"source.{position}").float() / 127.5 - 1.0
        except Exception as error:  # a damaged shard: safetensors raises its own error types
            raise BadSample(f"{shard}: cannot read sample {position} ({error})") from None
        return sample


class CachedEditPairs(CachedEdits):
    def __init__(self, path: str | Path):
        super().__init__(path, "edit")


class CachedReconstruction(CachedEdits):
    def __init__(self, path: str | Path):
        super().__init__(path, "reconstruct")


# (task, kind) -> reader, for `readers.open_source`.
READERS = {
    "edit": dict(json=JsonEditPairs, webdataset=EditShards, latents=CachedEditPairs),
    "reconstruct": dict(json=JsonReconstruction, webdataset=ReconstructionShards, latents=CachedReconstruction),
}
