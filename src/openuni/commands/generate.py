"""`openuni generate`: text to images with a released variant or a saved pipeline."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from ..errors import OpenUniError
from ..files import check_writable, save_image_atomically, write_text_atomically
from .options import (add_model_arguments, add_rewrite_argument, add_sampling_arguments, apply_model_identity,
                      model_identity, pipeline_from_args, sampling_from_args)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images from text prompts",
                                   description="Generate images from text prompts.")
    parser.add_argument("prompts", nargs="*", help="one or more prompts")
    parser.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    parser.add_argument("--output", "-o", type=Path,
                        help="an image file for one image, else a folder (default: openuni.png or openuni-outputs/)")
    parser.add_argument("--grid", action="store_true", help="one grid image per prompt holding all its images")
    parser.add_argument("--from-image", type=Path, metavar="OLD.png",
                        help="generate again what OLD.png's record says (prompt, settings, model): the same bytes on "
                             "the same machine and software; the record replaces the prompt and sampling flags")
    add_rewrite_argument(parser)
    add_sampling_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        try:
            lines = args.prompts_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise OpenUniError(f"cannot read --prompts-file {args.prompts_file}: {error}") from None
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise OpenUniError("no prompt given: pass prompts as arguments or --prompts-file FILE")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise OpenUniError(f"prompt {empty[0] + 1} is empty")
    return prompts


def output_paths(output: Path, num_prompts: int, per_prompt: int) -> list[list[Path]]:
    """Where image k of prompt p goes: the file itself for a single output, else numbered files."""
    if output.suffix.lower() in IMAGE_SUFFIXES:
        if num_prompts * per_prompt == 1:
            return [[output]]
        return [[output.with_name(f"{output.stem}-{p:05d}-{k:02d}{output.suffix}") for k in range(per_prompt)]
                for p in range(num_prompts)]
    if output.exists() and not output.is_dir():
        raise OpenUniError(f"--output {output} exists and is not a folder; name an image file (.png/.jpg) or a folder")
    return [[output / f"{p:05d}-{k:02d}.png" for k in range(per_prompt)] for p in range(num_prompts)]


def index_path(output: Path) -> Path:
    """The metadata index of a run with several files: in its folder, or beside numbered `NAME-...png` files
    (never a bare metadata.jsonl in a folder the user did not make for this run)."""
    if output.suffix.lower() in IMAGE_SUFFIXES:
        return output.with_name(f"{output.stem}-metadata.jsonl")
    return output / "metadata.jsonl"


def check_outputs(output: Path, files: list[Path]) -> None:
    """Every output can be written: checked when the run is planned, before the model loads."""
    if output.suffix.lower() not in IMAGE_SUFFIXES:
        check_writable(output, "--output", folder=True)
    for path in files:
        if path.is_dir():
            raise OpenUniError(f"--output: {path} is a folder; name another file or folder")
    check_writable(files[0], "--output")


class OutputWriter:
    """Saves each request's images as they come, and keeps the index of what is written current, so an interrupted
    run keeps both its finished images and their records. Every image carries its generation record (a PNG text
    chunk, `openuni.records`); the index holds the same records, with each file's path relative to the index. Shows
    the run's progress (done/total, ETA). Every output path is checked when it is made, before any work."""

    def __init__(self, output: Path, paths: list[list[Path]], num_images: int, grid: bool, unit: str):
        from tqdm.auto import tqdm

        self.paths, self.num_images, self.grid = paths, num_images, grid
        self.index = index_path(output) if sum(map(len, paths)) > 1 else None
        check_outputs(output, [path for own in paths for path in own] + ([self.index] if self.index else []))
        self.written: list[dict] = []
        self.progress = tqdm(total=len(paths), unit=unit, dynamic_ncols=True, disable=len(paths) == 1)

    def quiet_steps(self, pipe, per_batch: int) -> None:
        """Over several batches the run's bar says more than each batch's denoising-step bar."""
        if len(self.paths) > per_batch:
            pipe.set_progress_bar_config(disable=True)

    def save(self, images: list, requests: list[tuple[int, dict]]) -> None:
        """`images` are prompt-major, `num_images` per request; a request is (its number, its generation record,
        whose seed is its first image's). A write the system refuses (a full disk) ends the run with one line; the
        images finished before stay, indexed."""
        try:
            self._save(images, requests)
        except OpenUniError as error:
            if self.index is not None and self.written:
                with contextlib.suppress(OpenUniError):
                    self.write_index()
            self.progress.close()  # (the error line comes after the bar, not inside it)
            raise OpenUniError(f"{error} ({len(self.written)} images finished before it are kept)") from None
        self.progress.update(len(requests))

    def write_index(self) -> None:
        write_text_atomically(self.index, "".join(json.dumps(entry, ensure_ascii=False) + "\n"
                                                  for entry in self.written))

    def _save(self, images: list, requests: list[tuple[int, dict]]) -> None:
        from ..images import image_grid
        from ..records import record_chunks

        for offset, (number, record) in enumerate(requests):
            own = images[offset * self.num_images:(offset + 1) * self.num_images]
            if self.grid:
                own = [image_grid(own)]
            for k, (image, path) in enumerate(zip(own, self.paths[number])):
                # Image k of a request starts from seed + k; a grid file holds them all (its record: the first seed).
                image_record = ({**record, "num_images": self.num_images, "grid": True} if self.grid
                                else {**record, "seed": record["seed"] + k})
                save_image_atomically(image, path, text=record_chunks(image_record))
                where = os.path.relpath(path, self.index.parent) if self.index is not None else str(path)
                self.written.append({**image_record, "file": Path(where).as_posix()})
        if self.index is not None:
            self.write_index()

    def summary(self) -> str:
        self.progress.close()
        if self.index is None:
            return f"wrote 1 image: {self.written[0]['file']}"
        return f"wrote {len(self.written)} images to {self.paths[0][0].parent} (index: {self.index})"


def read_generation_record(path: Path) -> dict:
    """The record `openuni generate` wrote into `path`, checked to hold everything that fixes the image."""
    from ..records import GENERATION_FIELDS, UNREADABLE, read_record

    if not path.is_file():
        raise OpenUniError(f"--from-image {path}: no such file")
    record = read_record(path)
    if record == UNREADABLE:
        raise OpenUniError(f"--from-image {path}: not a readable image")
    if record is None:
        raise OpenUniError(f"--from-image {path}: the image carries no openuni record (only PNGs that openuni "
                           "generate wrote do)")
    if "source" in record:
        raise OpenUniError(f"--from-image {path}: an edit's record; make it again with `openuni edit`")
    missing = [field for field in GENERATION_FIELDS if field not in record]
    if missing:
        raise OpenUniError(f"--from-image {path}: its record lacks {', '.join(missing)} (a benchmark image or an "
                           "older openuni's)")
    return record


def apply_record(args: argparse.Namespace, record: dict) -> None:
    """Generate what `record` describes: its prompt (as rewritten then, if it was), settings and model (model part
    flags given still win)."""
    if args.prompts or args.prompts_file:
        raise OpenUniError("--from-image takes the prompt from the image's record; give no prompts with it")
    args.prompts = [record["prompt"]]
    args.recorded_rewrites = [record.get("rewritten_prompt")]
    args.rewrite = False  # (the record holds the rewrite: the MLLM is not asked again)
    for field in ("seed", "steps", "cfg_scale", "negative_prompt", "height", "width"):
        setattr(args, field, record[field])
    args.guidance_interval, args.step_cache = record.get("guidance_interval"), record.get("step_cache")
    args.num_images, args.grid = (record.get("num_images", 1), True) if record.get("grid") else (1, False)
    apply_model_identity(args, record["model"])
    if args.dtype == "auto" and record["model"].get("dtype"):
        args.dtype = record["model"]["dtype"]


def run(args: argparse.Namespace) -> int:
    from ..records import generation_record

    if args.from_image:
        apply_record(args, read_generation_record(args.from_image))
    sampling = sampling_from_args(args)
    prompts = read_prompts(args)
    per_prompt = 1 if args.grid else args.num_images
    output = args.output or Path("openuni.png" if len(prompts) * per_prompt == 1 else "openuni-outputs")
    writer = OutputWriter(output, output_paths(output, len(prompts), per_prompt), args.num_images, args.grid,
                          unit="prompt")

    pipe = pipeline_from_args(args)
    height, width = sampling.height or pipe.default_resolution, sampling.width or pipe.default_resolution
    model = {**model_identity(args), "dtype": str(pipe.dtype).removeprefix("torch.")}
    rewrites = getattr(args, "recorded_rewrites", None) or [None] * len(prompts)
    prompts_per_batch = max(1, args.batch_size // args.num_images)
    writer.quiet_steps(pipe, prompts_per_batch)
    for start in range(0, len(prompts), prompts_per_batch):
        numbers = range(start, min(start + prompts_per_batch, len(prompts)))
        if args.rewrite:  # batch by batch: an interrupted run keeps what it finished, rewrites included
            from ..rewriting import rewrite_prompts

            rewrites[start:numbers.stop] = rewrite_prompts(pipe, [prompts[i] for i in numbers])
        images = pipe([rewrites[i] or prompts[i] for i in numbers], **sampling.pipeline_kwargs()).images
        writer.save(images, [(i, generation_record(prompts[i], sampling, height, width, model,
                                                   **({"rewritten_prompt": rewrites[i]} if rewrites[i] else {})))
                             for i in numbers])
    print(writer.summary())
    return 0
