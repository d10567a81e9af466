"""`openuni extract-latents`: encode a dataset's images with the DC-AE once, into shards that training reads.

Run with `accelerate launch` (or torchrun) to spread the shards over all processes; rerun after an interruption
to finish the missing shards only.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract-latents", help="cache DC-AE latents of a dataset (resumable, multi-process)",
        description="Encode a dataset's images with the DC-AE into latent shards for `data.N.kind=latents`.",
    )
    parser.add_argument("kind", choices=["json", "webdataset"], help="the dataset's layout")
    parser.add_argument("path", help="JSON index file, or WebDataset shards ('data/{00000..00099}.tar')")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder for the latent shards")
    parser.add_argument("--vae", default="mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers", help="DC-AE folder or Hub id")
    parser.add_argument("--resolution", type=int, default=512, help="square size, multiple of 32 (default 512)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard for JSON datasets")
    parser.add_argument("--image-dir", help="JSON layout: image folder (default: the index's folder)")
    parser.add_argument("--annotation-dir", help="JSON layout: caption folder (default: the image folder)")
    parser.add_argument("--caption-key", default="caption", help="caption key in .json annotations")
    parser.add_argument("--device", help="default: this process's accelerator, else cpu")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState
    from diffusers import AutoencoderDC
    from tqdm.auto import tqdm

    from ..data.latent_cache import LatentExtractor, check_settings, shard_plan
    from ..data.sources import JsonImageFolder, WebDatasetShards
    from ..errors import OpenUniError
    from ..loading import resolve_dir
    from ..training.config import require_packages
    from ..training.trainer import cpu_only

    if args.resolution <= 0 or args.resolution % 32:
        raise OpenUniError(f"--resolution must be a positive multiple of 32, got {args.resolution}")
    if args.batch_size < 1 or args.shard_size < 1:
        raise OpenUniError("--batch-size and --shard-size must be at least 1")
    state = PartialState(cpu=args.device == "cpu" or cpu_only())
    device = torch.device(args.device) if args.device else state.device
    require_packages({"webdataset": args.kind == "webdataset"})
    if args.kind == "json":
        source = JsonImageFolder(args.path, args.image_dir, args.annotation_dir, args.caption_key)
    else:
        source = WebDatasetShards(args.path, args.caption_key)
    settings = dict(kind=args.kind, resolution=args.resolution, shards=len(shard_plan(source, args.shard_size)),
                    shard_size=args.shard_size if args.kind == "json" else None)
    check_settings(args.output, settings, record=state.is_main_process)
    vae_dir = resolve_dir(args.vae, "DC-AE", "--vae", ["*.json", "*.safetensors"], local_files_only=False)
    if (vae_dir / "vae" / "config.json").is_file():
        vae_dir = vae_dir / "vae"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = AutoencoderDC.from_pretrained(vae_dir, torch_dtype=dtype).to(device).eval()

    def encode(pixels):
        return vae.encode(pixels.to(device, dtype)).latent * vae.config.scaling_factor

    extractor = LatentExtractor(source, args.output, encode, args.resolution, args.batch_size, args.shard_size,
                                state.process_index, state.num_processes)
    pending = extractor.pending()
    # The ETA needs a total: images for JSON sets, input tars for WebDataset (whose record counts are unknown).
    by_image = args.kind == "json"
    total = sum(len(extractor.plan[i]) for i in pending) if by_image else len(pending)
    written = 0
    with tqdm(total=total, unit="img" if by_image else "shard", desc=f"latents [{state.process_index}]",
              disable=not pending) as bar:
        for shard in pending:
            written += extractor.extract_shard(shard, on_sample=lambda: bar.update(1) if by_image else None)
            if not by_image:
                bar.update(1)
    state.wait_for_everyone()
    done = len(extractor.mine) - len(pending)
    print(f"process {state.process_index}: wrote {len(pending)} shards ({written} latents), {done} were already "
          f"done, {extractor.skipped} unusable samples skipped -> {args.output}")
    return 0
