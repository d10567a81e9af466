"""`openuni extract-latents`: encode a dataset's images with the DC-AE once, into shards that training reads.

Run with `accelerate launch` (or torchrun) to spread the shards over all processes; rerun after an interruption
to finish the missing shards only. `--task edit|reconstruct` caches image-to-image samples: the target's latents
and the source, as pixels or (`--source-features MLLM`) as InternViT features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_device_arguments


def add_parser(subparsers) -> None:
    from ..variants import VAE_REPO

    parser = subparsers.add_parser(
        "extract-latents", help="cache DC-AE latents of a dataset (resumable, multi-process)",
        description="Encode a dataset's images with the DC-AE into latent shards for `data.N.kind=latents`.",
    )
    parser.add_argument("kind", choices=["json", "webdataset"], help="the dataset's layout")
    parser.add_argument("path", help="JSON index file, or WebDataset shards ('data/{00000..00099}.tar')")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder for the latent shards")
    parser.add_argument("--resolution", type=int, default=512, help="square size, multiple of 32 (default 512)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard for JSON datasets")
    parser.add_argument("--image-dir", help="JSON layout: image folder (default: the index's folder)")
    parser.add_argument("--annotation-dir", help="JSON layout: caption folder (default: the image folder)")
    parser.add_argument("--caption-key", default="caption", help="caption key in .json annotations")
    parser.add_argument("--task", choices=["text2image", "edit", "reconstruct"], default="text2image",
                        help="what the data trains: text-to-image (default), edit pairs, or reconstruction of its "
                             "images")
    parser.add_argument("--source-features", metavar="MLLM",
                        help="edit/reconstruct: cache the sources' InternViT features of this InternVL3 (folder or Hub "
                             "id; the training run's MLLM) instead of their pixels")
    group = parser.add_argument_group("model")
    group.add_argument("--vae", default=VAE_REPO, help=f"DC-AE folder or Hub id (default {VAE_REPO})")
    add_device_arguments(group)
    parser.set_defaults(func=run)


def open_dataset(args: argparse.Namespace):
    from ..data.readers import open_source
    from ..data.sources import JsonImageFolder, WebDatasetShards
    from ..training.config import require_packages

    require_packages({"webdataset": args.kind == "webdataset"})
    if args.task != "text2image":
        options = dict(image_dir=args.image_dir, annotation_dir=args.annotation_dir) if args.kind == "json" else {}
        return open_source(args.kind, args.path, args.task, caption_key=args.caption_key, **options)
    if args.kind == "json":
        return JsonImageFolder(args.path, args.image_dir, args.annotation_dir, args.caption_key)
    return WebDatasetShards(args.path, args.caption_key)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..data.latent_cache import check_settings, record_settings, shard_plan
    from ..devices import cpu_only, resolve_device, resolve_dtype
    from ..errors import OpenUniError
    from ..files import check_writable
    from ..loading import load_vae, resolve_vae_dir
    from ..model import encode_pixels
    from ..sampling import MAX_SIDE

    if not 0 < args.resolution <= MAX_SIDE or args.resolution % 32:
        raise OpenUniError(f"--resolution must be a positive multiple of 32 up to {MAX_SIDE}, got {args.resolution}")
    if args.batch_size < 1 or args.shard_size < 1:
        raise OpenUniError("--batch-size and --shard-size must be at least 1")
    if args.source_features and args.task == "text2image":
        raise OpenUniError("--source-features caches the sources of image-to-image samples: use it with --task "
                           "edit or --task reconstruct")
    check_writable(args.output, "--output", folder=True)
    state = PartialState(cpu=args.device == "cpu" or cpu_only())
    device = resolve_device(args.device) if args.device else state.device
    source = open_dataset(args)
    settings = dict(kind=args.kind, resolution=args.resolution, shards=len(shard_plan(source, args.shard_size)),
                    shard_size=args.shard_size if args.kind == "json" else None)
    # None for text-to-image: folders recorded before tasks existed (no such keys) keep matching.
    settings.update(task=None if args.task == "text2image" else args.task, source_features=args.source_features)
    check_settings(args.output, settings)
    vae = load_vae(resolve_vae_dir(args.vae), resolve_dtype(args.dtype, device)).to(device).eval()
    extractor = build_extractor(args, source, lambda pixels: encode_pixels(vae, pixels), device, state)
    if state.is_main_process:  # the work starts: from here on the folder belongs to these settings
        record_settings(args.output, settings)
    state.wait_for_everyone()
    written, pending = extract_all(extractor, by_image=args.kind == "json", rank=state.process_index)
    state.wait_for_everyone()
    done = len(extractor.mine) - len(pending)
    print(f"process {state.process_index}: wrote {len(pending) - len(extractor.empty)} shards ({written} latents), "
          f"{done} were already done, {extractor.skipped} unusable samples skipped -> {args.output}")
    if extractor.empty:
        raise OpenUniError(f"{len(extractor.empty)} shard(s) had no usable sample and were not written "
                           f"({extractor.empty[0]}): fix the data and run again (the finished shards are kept)")
    return 0


def build_extractor(args: argparse.Namespace, source, encode, device, state):
    from ..data.edit_cache import EditExtractor
    from ..data.latent_cache import LatentExtractor

    layout = (source, args.output, encode, args.resolution, args.batch_size, args.shard_size, state.process_index,
              state.num_processes)
    if args.task == "text2image":
        return LatentExtractor(*layout)
    features = None
    if args.source_features:
        from ..devices import resolve_dtype
        from ..loading import load_language_parts, resolve_mllm_dirs
        from ..model import semantic_features

        _, mllm = load_language_parts(*resolve_mllm_dirs(args.source_features, None), resolve_dtype(args.dtype, device),
                                      device)

        def features(pixels):
            return semantic_features(mllm, pixels.to(device))
    return EditExtractor(*layout, task=args.task, features=features)


def extract_all(extractor, by_image: bool, rank: int) -> tuple[int, list[int]]:
    """Write this process's missing shards with a progress bar; the ETA needs a total: images for JSON sets, input
    tars for WebDataset (whose record counts are unknown). Returns (latents written, shards that were pending)."""
    from tqdm.auto import tqdm

    pending = extractor.pending()
    total = sum(len(extractor.plan[i]) for i in pending) if by_image else len(pending)
    written = 0
    with tqdm(total=total, unit="img" if by_image else "shard", desc=f"latents [{rank}]", disable=not pending) as bar:
        for shard in pending:
            written += extractor.extract_shard(shard, on_sample=lambda: bar.update(1) if by_image else None)
            if not by_image:
                bar.update(1)
    return written, pending
