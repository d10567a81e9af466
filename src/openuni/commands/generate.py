"""`openuni generate`: text to images with a released variant or a saved pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli import (IMAGE_SUFFIXES, add_model_arguments, add_sampling_arguments, check_sampling_arguments,
                   pipeline_from_args, save_image_atomically)
from ..errors import OpenUniError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images from text prompts",
                                   description="Generate images from text prompts.")
    parser.add_argument("prompts", nargs="*", help="one or more prompts")
    parser.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    parser.add_argument("--output", "-o", type=Path,
                        help="an image file for one image, else a folder (default: openuni.png or openuni-outputs/)")
    parser.add_argument("--grid", action="store_true", help="one grid image per prompt holding all its images")
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


def output_paths(output: Path | None, num_prompts: int, per_prompt: int) -> list[list[Path]]:
    """Where image k of prompt p goes: the file itself for a single output, else numbered files."""
    total = num_prompts * per_prompt
    if output is None:
        output = Path("openuni.png" if total == 1 else "openuni-outputs")
    if output.suffix.lower() in IMAGE_SUFFIXES:
        if total == 1:
            return [[output]]
        return [[output.with_name(f"{output.stem}-{p:05d}-{k:02d}{output.suffix}") for k in range(per_prompt)]
                for p in range(num_prompts)]
    if output.exists() and not output.is_dir():
        raise OpenUniError(f"--output {output} exists and is not a folder; name an image file (.png/.jpg) or a folder")
    return [[output / f"{p:05d}-{k:02d}.png" for k in range(per_prompt)] for p in range(num_prompts)]


def run(args: argparse.Namespace) -> int:
    from ..images import image_grid

    check_sampling_arguments(args)
    prompts = read_prompts(args)
    per_prompt = 1 if args.grid else args.num_images
    paths = output_paths(args.output, len(prompts), per_prompt)

    pipe = pipeline_from_args(args)
    prompts_per_batch = max(1, args.batch_size // args.num_images)
    written = []
    for start in range(0, len(prompts), prompts_per_batch):
        batch = prompts[start:start + prompts_per_batch]
        images = pipe(
            batch, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
            num_inference_steps=args.steps, guidance_scale=args.cfg_scale, num_images_per_prompt=args.num_images,
            seed=args.seed,
        ).images
        for offset, prompt in enumerate(batch):
            own = images[offset * args.num_images:(offset + 1) * args.num_images]
            if args.grid:
                own = [image_grid(own)]
            for image, path in zip(own, paths[start + offset]):
                save_image_atomically(image, path)
                written.append({"prompt": prompt, "seed": args.seed, "file": str(path)})
    folder = paths[0][0].parent
    if len(written) > 1:
        with open(folder / "metadata.jsonl", "w", encoding="utf-8") as index:
            index.writelines(json.dumps(entry) + "\n" for entry in written)
    print(f"wrote {len(written)} image{'s' if len(written) > 1 else ''}" + (f" to {folder}" if len(written) > 1 else f": {written[0]['file']}"))
    return 0
