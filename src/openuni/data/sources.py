"""Readers of image-text data, each yielding `{"caption": str, "image": PIL}` or `{"caption", "latents"}`.

- `JsonImageFolder`: the reference's layout, a JSON list of `{"image": file, "annotation": file}` whose captions sit
  in per-image `.json` (key `caption` or `prompt`, configurable) or `.txt` files. Random access.
- `CachedLatents`: the shards `openuni extract-latents` writes. Random access.
- `WebDatasetShards`: tar shards (local paths or brace-expanded URLs) of image + txt/json, read as a stream.

The image-to-image readers (edit pairs, reconstruction) are in `edit_sources`; `readers.open_source` builds any
of them.
Every reader says which loss its samples train (`task`). A sample that cannot be used raises `BadSample`; the
stream skips it and counts it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import PIL.Image
from safetensors import safe_open

from ..errors import OpenUniError, reason
from .images import BadSample, decode_image

logger = logging.getLogger(__name__)

CAPTION_KEYS = ("caption", "prompt")
TEXT_TO_IMAGE, IMAGE_TO_IMAGE = "text2image", "image2image"  # the two losses
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
LATENT_SHARD_GLOB = "shard-*.safetensors"


def caption_from_json(data: dict, caption_key: str, what: str, fallback_keys: tuple[str, ...] = CAPTION_KEYS) -> str:
    for key in (caption_key, *fallback_keys):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise BadSample(f"{what}: no non-empty {caption_key!r} in the annotation")


class JsonImageFolder:
    """The reference's layout: `annotations.json` (list of {image, annotation}), images and captions in folders."""

    task = TEXT_TO_IMAGE
    required_keys = ("image",)
    text_keys = CAPTION_KEYS  # where a .json annotation's text may be when `caption_key` is not there

    def __init__(self, path: str | Path, image_dir: str | Path | None = None, annotation_dir: str | Path | None = None,
                 caption_key: str = "caption"):
        self.path = Path(path)
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise OpenUniError(f"cannot read the dataset index {self.path}: {error}") from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) and all(k in e for k in self.required_keys)
                                                    for e in entries):
            layout = ", ".join(f'"{key}": ...' for key in (*self.required_keys, "annotation"))
            raise OpenUniError(f"{self.path}: expected a JSON list of {{{layout}}} objects")
        if not entries:
            raise OpenUniError(f"{self.path}: the dataset is empty")
        self.entries = entries
        self.image_dir = Path(image_dir) if image_dir else self.path.parent
        self.annotation_dir = Path(annotation_dir) if annotation_dir else self.image_dir
        self.caption_key = caption_key

    def __len__(self) -> int:
        return len(self.entries)

    def read_caption(self, entry: dict) -> str:
        """The entry's text (a caption, or an edit instruction): inline in the index under `caption_key`, or in its
        `annotation` file (.json or .txt)."""
        what = entry.get(self.required_keys[0])
        if isinstance(entry.get(self.caption_key), str):  # a caption inline in the index is accepted too
            if not entry[self.caption_key].strip():
                raise BadSample(f"{what}: empty inline {self.caption_key!r}")
            return entry[self.caption_key].strip()
        annotation = entry.get("annotation")
        if not annotation:
            raise BadSample(f"{what}: no annotation file and no inline {self.caption_key!r}")
        path = self.annotation_dir / annotation
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise BadSample(f"{path}: unreadable caption ({error})") from None
        if path.suffix == ".json":
            try:
                return caption_from_json(json.loads(text), self.caption_key, str(path), self.text_keys)
            except ValueError as error:
                raise BadSample(f"{path}: invalid JSON ({error})") from None
        if not text.strip():
            raise BadSample(f"{path}: empty caption")
        return text.strip()

    def read_image(self, name) -> PIL.Image.Image:
        path = self.image_dir / str(name)
        return decode_image(str(path), str(path))

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        caption = self.read_caption(entry)
        return {"caption": caption, "image": self.read_image(entry["image"]), "key": str(entry["image"])}


def cached_task(metadata: dict) -> str:
    """What a latent shard was extracted for (`extract-latents --task`); shards from before edits were cached hold
    text-to-image samples."""
    return metadata.get("task", "text2image")


def shard_layout(metadata: dict, keys) -> tuple[str, tuple[str, ...]]:
    """(the metadata key of a shard's texts, the tensors each of its samples has): `latents.{i}` and the captions
    for text-to-image; for image-to-image also `source.{i}` (pixels) or `source_features.{i}`, and the
    instructions."""
    if cached_task(metadata) == "text2image":
        return "captions", ("latents",)
    source = "source_features" if any(key.startswith("source_features.") for key in keys) else "source"
    return "instructions", ("latents", source)


def shard_problem(path: Path) -> str | None:
    """Why a shard cannot be used (torn, damaged, inconsistent), or None when it is whole. Reads its header only:
    safetensors checks that the data it lists is all in the file, so a shard cut short fails here."""
    try:
        with safe_open(path, framework="pt") as reader:
            metadata = reader.metadata() or {}
            shapes = {key: tuple(reader.get_slice(key).get_shape()) for key in reader.keys()}
        texts_key, names = shard_layout(metadata, shapes)
        texts = json.loads(metadata[texts_key])
    except Exception as error:  # safetensors raises its own error types; a header without our metadata
        return f"unreadable: {reason(error, 120)}"
    if not isinstance(texts, list) or set(shapes) != {f"{name}.{i}" for name in names for i in range(len(texts))}:
        return f"{len(shapes)} tensors for {len(texts) if isinstance(texts, list) else '?'} {texts_key}"
    if not texts:
        return "no samples"
    for name in names:
        sizes = {shape for key, shape in shapes.items() if key.rsplit(".", 1)[0] == name}
        if len(sizes) > 1:
            return f"{name} of several sizes {sorted(sizes)}"
    return None


def check_shard(path: Path) -> None:
    problem = shard_problem(path)
    if problem:
        raise OpenUniError(f"latent shard {path} is damaged ({problem}): run `openuni extract-latents` again with "
                           "the same settings to redo it")


def index_latent_shards(path: Path, task: str, texts_key: str, extract_flags: str, other_task) -> tuple:
    """Every sample of a folder of `extract-latents` shards of `task`: its (shard, position) pairs and each shard's
    texts (metadata `texts_key`: captions or instructions). Torn shards, shards of another task (`other_task(shard,
    found)` says what to do) and folders without samples are refused in one line when the folder is opened."""
    shards = sorted(path.glob(LATENT_SHARD_GLOB))
    if not shards:
        raise OpenUniError(f"{path}: no latent shards ({LATENT_SHARD_GLOB}); run `openuni extract-latents"
                           f"{extract_flags}`")
    index: list[tuple[Path, int]] = []
    texts: dict[Path, list[str]] = {}
    for shard in shards:
        check_shard(shard)
        with safe_open(shard, framework="pt") as reader:
            metadata = reader.metadata()
        if cached_task(metadata) != task:
            raise OpenUniError(other_task(shard, cached_task(metadata)))
        texts[shard] = json.loads(metadata[texts_key])
        index.extend((shard, i) for i in range(len(texts[shard])))
    if not index:
        raise OpenUniError(f"{path}: the latent shards hold no samples")
    return index, texts


class CachedLatents:
    """Latent shards written by `openuni extract-latents`: tensors `latents.{i}` + captions in the metadata. A torn
    or inconsistent shard is refused when the folder is opened, not when training reaches it."""

    task = TEXT_TO_IMAGE

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.index, self.captions = index_latent_shards(
            self.path, TEXT_TO_IMAGE, "captions", "",
            lambda shard, found: f"{shard} holds {found} samples (source images and target latents): give this "
                                 f"source `task: {found}`")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict:
        shard, position = self.index[index]
        try:
            with safe_open(shard, framework="pt") as reader:
                latents = reader.get_tensor(f"latents.{position}")
        except Exception as error:  # a damaged shard: safetensors raises its own error types
            raise BadSample(f"{shard}: cannot read latents {position} ({error})") from None
        return {"caption": self.captions[shard][position], "latents": latents.float(), "key": f"{shard.name}:{position}"}


def expand_shards(urls: str | list[str]) -> list[str]:
    """Brace-expanded shard list ("data/{00000..00099}.tar"), local paths or URLs (anything webdataset opens)."""
    from webdataset.shardlists import expand_urls

    shards = []
    for url in [urls] if isinstance(urls, str) else urls:
        shards.extend(expand_urls(url))
    if not shards:
        raise OpenUniError(f"no WebDataset shards in {urls!r}")
    return shards


def webdataset_sample(raw: dict, caption_key: str) -> dict:
    """A raw WebDataset record (extension -> bytes) as a training sample."""
    key = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
    image = next((raw[ext] for ext in IMAGE_EXTENSIONS if ext in raw), None)
    if image is None:
        raise BadSample(f"{key}: no image ({'/'.join(IMAGE_EXTENSIONS)}) in the record")
    if "txt" in raw:
        caption = raw["txt"].decode("utf-8", errors="replace").strip()
    elif "json" in raw:
        try:
            caption = caption_from_json(json.loads(raw["json"]), caption_key, key)
        except ValueError as error:
            raise BadSample(f"{key}: invalid JSON ({error})") from None
    else:
        raise BadSample(f"{key}: no caption (txt/json) in the record")
    if not caption:
        raise BadSample(f"{key}: empty caption")
    return {"caption": caption, "image": decode_image(image, key), "key": key}


class WebDatasetShards:
    """Tar shards read in order; `records(shards)` yields raw records, skipping (and counting) broken tar members."""

    task = TEXT_TO_IMAGE

    def __init__(self, urls: str | list[str], caption_key: str = "caption"):
        self.shards = expand_shards(urls)
        # webdataset's handler would skip a missing file as one more broken record, and a stream of nothing but
        # missing files never ends: say so now.
        missing = [s for s in self.shards if "://" not in s and not s.startswith("pipe:") and not Path(s).is_file()]
        if missing:
            raise OpenUniError(f"{len(missing)} of {len(self.shards)} WebDataset shards do not exist, e.g. {missing[0]}")
        self.caption_key = caption_key
        self.broken_records = 0

    def _count_and_continue(self, error: Exception) -> bool:
        self.broken_records += 1
        logger.warning("skipping a broken WebDataset record: %s", error)
        return True

    def records(self, shards: list[str]):
        import webdataset as wds

        dataset = wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, workersplitter=None,
                                 handler=self._count_and_continue, empty_check=False)
        yield from dataset

    def sample(self, raw: dict) -> dict:
        return webdataset_sample(raw, self.caption_key)
