"""Tiny datasets in the real layouts and training configs on the tiny model, shared by the training tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import PIL.Image

CAPTIONS = ["a red square on a blue background", "a green disc", "two yellow stripes", "a white cross on black",
            "a purple triangle", "an orange ring", "a grey checkerboard", "a pink dot in a corner"]


def synthetic_image(index: int, width: int = 80, height: int = 64) -> PIL.Image.Image:
    rng = np.random.default_rng(index)
    array = np.zeros((height, width, 3), dtype=np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    array[top:top + height // 3, left:left + width // 3] = rng.integers(0, 255, 3, dtype=np.uint8)
    return PIL.Image.fromarray(array)


def write_json_dataset(root: Path, count: int = 8, corrupt: tuple[int, ...] = (), no_caption: tuple[int, ...] = ()) -> Path:
    """The reference's layout: index.json + images + per-image .json/.txt captions (alternating)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        image_name, caption_name = f"{i:04d}.png", f"{i:04d}.{'json' if i % 2 else 'txt'}"
        if i in corrupt:
            (root / image_name).write_bytes(b"this is not a png")
        else:
            synthetic_image(i).save(root / image_name)
        caption = CAPTIONS[i % len(CAPTIONS)]
        if i in no_caption:
            caption = ""
        (root / caption_name).write_text(json.dumps({"caption": caption}) if caption_name.endswith("json") else caption)
        entries.append({"image": image_name, "annotation": caption_name})
    (root / "index.json").write_text(json.dumps(entries))
    return root / "index.json"


def write_webdataset(root: Path, shards: int = 2, per_shard: int = 3, corrupt: tuple[int, ...] = ()) -> str:
    import io

    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    index = 0
    for shard in range(shards):
        with wds.TarWriter(str(root / f"part-{shard:05d}.tar")) as writer:
            for _ in range(per_shard):
                buffer = io.BytesIO()
                synthetic_image(index).save(buffer, format="PNG")
                image = b"\x00garbage" if index in corrupt else buffer.getvalue()
                writer.write({"__key__": f"{index:06d}", "png": image, "txt": CAPTIONS[index % len(CAPTIONS)]})
                index += 1
    return str(root / f"part-{{00000..{shards - 1:05d}}}.tar")


def tiny_train_values(tiny, data_path: Path, output_dir: Path, **overrides) -> dict:
    values = dict(
        mllm=str(tiny.mllm), transformer=str(tiny.transformer), vae=str(tiny.vae), scheduler=str(tiny.scheduler),
        init_checkpoint=str(tiny.checkpoint), connector_heads=tiny.connector_heads,
        data=[dict(kind="json", path=str(data_path))], resolution=64, num_workers=0, batch_size=2, max_steps=4,
        lr=1e-3, warmup_ratio=0.25, mixed_precision="no", log_with="none", output_dir=str(output_dir),
        checkpoint_every=100, sample_every=0, seed=7,
    )
    values.update(overrides)
    return values


def tiny_train_config(tiny, data_path: Path, output_dir: Path, **overrides):
    from openuni.training.config import from_dict

    return from_dict(tiny_train_values(tiny, data_path, output_dir, **overrides))


def reset_accelerate() -> None:
    """Each in-process Trainer builds its own Accelerator; accelerate keeps process-wide singletons between them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def shuffled(items, seed=0):
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def write_latent_dataset(root: Path, count: int = 4, seed: int = 0) -> Path:
    """A cached-latents folder as `openuni extract-latents` writes it, with unit-variance latents of the tiny SANA."""
    import torch

    from openuni.data.latent_cache import shard_path, write_shard

    root.mkdir(parents=True, exist_ok=True)
    latents = torch.randn(count, 8, 2, 2, generator=torch.Generator().manual_seed(seed))
    write_shard(shard_path(root, 0), list(latents), CAPTIONS[:count], [f"k{i}" for i in range(count)], 0)
    return root


class OneThread:
    """Torch on one thread: the tiny models are far faster so on a shared machine than with oversubscribed threads."""

    def __enter__(self):
        import torch

        self.previous = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.previous)


EDIT_INSTRUCTIONS = ["swap red and blue", "invert the colours", "make it darker", "turn it upside down"]


def instruction_of(item: int) -> str:
    return EDIT_INSTRUCTIONS[item % len(EDIT_INSTRUCTIONS)]


def edit_pair(item: int, size: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """(source, target) of edit pair `item` as training sees them: both resized (bicubic) to size x size."""
    source = synthetic_image(item)
    target = edited_image(source, instruction_of(item))
    return source.resize((size, size), PIL.Image.BICUBIC), target.resize((size, size), PIL.Image.BICUBIC)


def pixels_of(image: PIL.Image.Image):
    """An RGB image as training pixels [3, H, W] in [-1, 1]."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def edited_image(image: PIL.Image.Image, instruction: str) -> PIL.Image.Image:
    """What each of EDIT_INSTRUCTIONS does, so the targets follow from the sources and the instructions."""
    array = np.asarray(image)
    if instruction == "swap red and blue":
        array = array[..., ::-1]
    elif instruction == "invert the colours":
        array = 255 - array
    elif instruction == "make it darker":
        array = array // 2
    else:
        array = array[::-1]
    return PIL.Image.fromarray(np.ascontiguousarray(array))


def write_edit_dataset(root: Path, count: int = 8, missing_source: tuple[int, ...] = (),
                       missing_target: tuple[int, ...] = (), empty_instruction: tuple[int, ...] = ()) -> Path:
    """The reference's edit layout: index.json of {source_image, target_image, annotation} + images + per-pair
    .json (key `caption`) or .txt instructions (alternating)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        instruction = instruction_of(i)
        source, target = f"{i:04d}-src.png", f"{i:04d}-tgt.png"
        image = synthetic_image(i)
        if i not in missing_source:
            image.save(root / source)
        if i not in missing_target:
            edited_image(image, instruction).save(root / target)
        text = "  " if i in empty_instruction else instruction
        annotation = f"{i:04d}.{'json' if i % 2 else 'txt'}"
        (root / annotation).write_text(json.dumps({"caption": text}) if annotation.endswith("json") else text)
        entries.append({"source_image": source, "target_image": target, "annotation": annotation})
    (root / "edits.json").write_text(json.dumps(entries))
    return root / "edits.json"


def write_edit_webdataset(root: Path, shards: int = 2, per_shard: int = 3, missing_target: tuple[int, ...] = ()) -> str:
    """Edit pairs as WebDataset records: <key>.src.png, <key>.tgt.png, <key>.txt."""
    import io

    import webdataset as wds

    def png(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    root.mkdir(parents=True, exist_ok=True)
    index = 0
    for shard in range(shards):
        with wds.TarWriter(str(root / f"edits-{shard:05d}.tar")) as writer:
            for _ in range(per_shard):
                instruction = instruction_of(index)
                record = {"__key__": f"{index:06d}", "src.png": png(synthetic_image(index)), "txt": instruction}
                if index not in missing_target:
                    record["tgt.png"] = png(edited_image(synthetic_image(index), instruction))
                writer.write(record)
                index += 1
    return str(root / f"edits-{{00000..{shards - 1:05d}}}.tar")


def write_edit_latent_dataset(root: Path, count: int = 4, seed: int = 0, task: str = "edit") -> Path:
    """A cached edit folder as `extract-latents --task edit` writes it: 64 px uint8 sources, unit-variance latents
    of the tiny SANA as targets."""
    import torch

    from openuni.data.edit_cache import uint8_pixels, write_edit_shard
    from openuni.data.latent_cache import shard_path

    root.mkdir(parents=True, exist_ok=True)
    latents = torch.randn(count, 8, 2, 2, generator=torch.Generator().manual_seed(seed))
    samples = [dict(latents=latents[i], source=uint8_pixels(synthetic_image(i).resize((64, 64)))) for i in range(count)]
    instructions = [instruction_of(i) for i in range(count)]
    write_edit_shard(shard_path(root, 0), samples, instructions, [f"k{i}" for i in range(count)], 0, task, 64)
    return root


def take(stream, count: int) -> list:
    """The first `count` items of a stream (fewer if it ends)."""
    import itertools

    return list(itertools.islice(stream, count))


def train_until_killed(tiny, data_path, output_dir: Path, config_file: Path, deadline_seconds: float, **settings) -> int:
    """`openuni train` (its own process) SIGKILLed as soon as its first checkpoint is complete; returns that
    checkpoint's step. Fails if the run ended on its own first."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from openuni.training import checkpointing

    config_file.write_text(yaml.safe_dump(tiny_train_values(tiny, data_path, output_dir, **settings)))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "openuni.cli", "train", str(config_file)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + deadline_seconds
    while not checkpointing.complete_checkpoints(output_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (output_dir / "final").exists()
    return checkpointing.read_trainer_state(checkpointing.complete_checkpoints(output_dir)[-1])["step"]
