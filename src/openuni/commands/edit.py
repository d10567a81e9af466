"""`openuni edit IMAGE "instruction"`: edit images with a released variant or a saved pipeline.

Several edits at once come from `--pairs-file`, a JSON-lines file of {"image": PATH, "instruction": TEXT}.
Consecutive edits with the same output size share a forward pass; every finished image is written at once, so an
interruption or a bad image later in the file loses nothing already done.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..errors import OpenUniError
from .generate import OutputWriter, output_paths
from .options import (add_model_arguments, add_sampling_arguments, model_identity, pipeline_from_args,
                      sampling_from_args)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("edit", help="edit an image following an instruction",
                                   description="Edit images following instructions (OpenUni image-to-image).")
    parser.add_argument("image", nargs="?", type=Path, help="the source image")
    parser.add_argument("instruction", nargs="?", help='what to change, e.g. "make the sky pink"')
    parser.add_argument("--pairs-file", type=Path,
                        help='JSON lines {"image": PATH, "instruction": TEXT}: several edits (relative paths are '
                             "relative to the file)")
    parser.add_argument("--output", "-o", type=Path,
                        help="an image file for one image, else a folder (default: openuni-edit.png or "
                             "openuni-edits/)")
    parser.add_argument("--grid", action="store_true", help="one grid image per edit holding all its images")
    add_sampling_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def read_pairs(args: argparse.Namespace) -> list[tuple[Path, str]]:
    pairs = []
    if args.image is not None or args.instruction is not None:
        if args.image is None or args.instruction is None:
            raise OpenUniError('give both an IMAGE and an "instruction"')
        pairs.append((args.image, args.instruction))
    if args.pairs_file:
        pairs += read_pairs_file(args.pairs_file)
    if not pairs:
        raise OpenUniError('nothing to edit: pass IMAGE "instruction" or --pairs-file FILE')
    for number, (image, instruction) in enumerate(pairs, 1):
        if not instruction.strip():
            raise OpenUniError(f"edit {number} ({image}): the instruction is empty")
        if not image.is_file():
            raise OpenUniError(f"edit {number}: image {image}: no such file")
    return pairs


def read_pairs_file(path: Path) -> list[tuple[Path, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise OpenUniError(f"cannot read --pairs-file {path}: {error}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            image, instruction = entry["image"], entry["instruction"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise OpenUniError(f'{path}:{number}: expected {{"image": PATH, "instruction": TEXT}}') from None
        if not isinstance(image, str) or not isinstance(instruction, str):
            raise OpenUniError(f"{path}:{number}: image and instruction must be strings")
        image_path = Path(image).expanduser()
        pairs.append((image_path if image_path.is_absolute() else path.parent / image_path, instruction))
    return pairs


def edit_record(pair: tuple[Path, str], sampling, model: dict) -> dict:
    """An edit's generation record: the instruction as its prompt, and which source (path and SHA-256)."""
    import hashlib

    from ..records import generation_record

    image, instruction = pair
    source = {"path": str(image.resolve()), "sha256": hashlib.sha256(image.read_bytes()).hexdigest()}
    return generation_record(instruction, sampling, sampling.height, sampling.width, model, source=source)


def batches(sizes: list[tuple[int, int]], per_batch: int) -> list[range]:
    """Runs of consecutive edits with the same output size, at most `per_batch` long."""
    runs, start = [], 0
    for index in range(1, len(sizes) + 1):
        if index == len(sizes) or sizes[index] != sizes[start] or index - start == per_batch:
            runs.append(range(start, index))
            start = index
    return runs


def run(args: argparse.Namespace) -> int:
    from ..images import check_image_size, load_image

    sampling = sampling_from_args(args)
    pairs = read_pairs(args)
    per_pair = 1 if args.grid else args.num_images
    output = args.output or Path("openuni-edit.png" if len(pairs) * per_pair == 1 else "openuni-edits")
    writer = OutputWriter(output, output_paths(output, len(pairs), per_pair), args.num_images, args.grid, unit="edit")

    # Every unreadable image is reported before the model loads; only the sizes are kept (a long pairs file of large
    # photos would not fit in memory), and each batch reads its own images again.
    source_sizes = [load_image(image).size for image, _ in pairs]
    pipe = pipeline_from_args(args)
    # The smallest source this model reads is one patch of its own vision encoder: checked for every edit before
    # the first one runs (the check before loading could only assume the real models' 14 px).
    try:
        for (image, _), size in zip(pairs, source_sizes):
            check_image_size(size, str(image), min_side=pipe.vision_patch_size)
    except OpenUniError:
        writer.progress.close()  # (the error line comes after the bar, not inside it)
        raise
    sizes = [pipe.edit_output_size([size], args.height, args.width) for size in source_sizes]
    model = {**model_identity(args), "dtype": str(pipe.dtype).removeprefix("torch.")}
    per_batch = max(1, args.batch_size // args.num_images)
    writer.quiet_steps(pipe, per_batch)
    for run_of_edits in batches(sizes, per_batch):
        height, width = sizes[run_of_edits[0]]
        images = pipe.edit([load_image(pairs[i][0]) for i in run_of_edits], [pairs[i][1] for i in run_of_edits],
                           **replace(sampling, height=height, width=width).pipeline_kwargs()).images
        writer.save(images, [(i, edit_record(pairs[i], replace(sampling, height=height, width=width), model))
                             for i in run_of_edits])
    print(writer.summary())
    return 0
