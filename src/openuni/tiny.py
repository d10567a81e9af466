"""Tiny random OpenUni components, written to disk in the real formats, in seconds.

Tests build everything they need from here (no network, no hub); users can do the same with `openuni make-tiny DIR`
to try every command without downloading gigabytes. The layouts are the real ones: an InternVL3 directory in the
original OpenGVLab layout and in the transformers `-hf` layout, a diffusers SANA transformer and DC-AE (32x spatial
compression, as the real one), the SANA scheduler config and a release-style `.pth`. Only the sizes are small.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration, Qwen2TokenizerFast

from .connector import OpenUniConnector
from .internvl import ORIGINAL_TO_NATIVE_RENAMES, config_from_original
from .prompting import IMG_CONTEXT, IMG_END, IMG_START
from .variants import SANA_SCHEDULER_CONFIG

if TYPE_CHECKING:
    from .pipeline import OpenUniPipeline

# The InternVL special tokens, appended after the BPE vocabulary as Qwen2.5 + InternVL do.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMG_START, IMG_END, IMG_CONTEXT]

TINY_CORPUS = [
    "a photo of a red cube on the left of a blue sphere",
    "a green dog sitting next to two yellow cats under a tree",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of fruit: apples, oranges and bananas on a wooden table",
    "Generate an image of a white boat in a stormy sea at night",
    "What is in this picture? Describe the colors and the objects.",
    "Keep the image as it is. Make it blue. Remove the background.",
    "three black birds flying over a snowy mountain at sunrise",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]

# Geometry of the tiny components.
TINY_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=64,
    patch_size=16,
    qkv_bias=True,
    qk_normalization=False,
    norm_type="layer_norm",
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)
TINY_LLM = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
    rope_scaling={"rope_type": "dynamic", "factor": 2.0},
)
TINY_CONNECTOR = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_queries=8)
TINY_TRANSFORMER = dict(
    in_channels=8,
    out_channels=8,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    num_cross_attention_heads=2,
    cross_attention_head_dim=16,
    cross_attention_dim=32,
    caption_channels=48,
    mlp_ratio=2.5,
    patch_size=1,
    sample_size=2,  # 2 latents x 32 = 64 px by default
    attention_bias=False,
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    interpolation_scale=None,
    qk_norm=None,
)
# Six stages: 2^5 = 32x spatial compression, like dc-ae-f32c32.
TINY_VAE = dict(
    in_channels=3,
    latent_channels=8,
    attention_head_dim=8,
    encoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock"],
    decoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock"],
    encoder_block_out_channels=[8, 8, 16, 16, 16, 16],
    decoder_block_out_channels=[8, 8, 16, 16, 16, 16],
    encoder_layers_per_block=[1, 1, 1, 1, 1, 1],
    decoder_layers_per_block=[1, 1, 1, 1, 1, 1],
    encoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    upsample_block_type="interpolate",
    downsample_block_type="Conv",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.41407,
)


@dataclass(frozen=True)
class TinyOpenUni:
    """Where `build_tiny_openuni` wrote each component."""

    root: Path
    tokenizer: Path
    mllm: Path  # original OpenGVLab layout (tokenizer files included, as OpenGVLab repos ship them)
    mllm_hf: Path  # transformers-native "-hf" layout, same weights
    transformer: Path
    vae: Path
    scheduler: Path
    checkpoint: Path  # release-style .pth: meta_queries, connector.*, projector.*, transformer.*
    connector_heads: int = TINY_CONNECTOR["num_attention_heads"]
    num_queries: int = TINY_CONNECTOR["num_queries"]


def build_tiny_tokenizer(path: Path) -> Qwen2TokenizerFast:
    """A byte-level BPE in Qwen2's layout with the InternVL special tokens appended after its vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    qwen2_split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen2_split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(TINY_CORPUS, trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token=None,
        bos_token=None,
        padding_side="right",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.save_pretrained(path)
    return tokenizer


def original_mllm_config(vocab_size: int, bos_token_id: int, eos_token_id: int) -> dict:
    """An OpenGVLab `internvl_chat` config.json for the tiny geometry."""
    return dict(
        architectures=["InternVLChatModel"],
        model_type="internvl_chat",
        downsample_ratio=0.5,
        dynamic_image_size=True,
        force_image_size=TINY_VISION["image_size"],
        max_dynamic_patch=12,
        min_dynamic_patch=1,
        ps_version="v2",
        select_layer=-1,
        template="internvl2_5",
        tie_word_embeddings=False,
        torch_dtype="float32",
        use_thumbnail=True,
        vision_config=dict(TINY_VISION, architectures=["InternVisionModel"], model_type="intern_vit_6b"),
        llm_config=dict(
            TINY_LLM,
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            hidden_act="silu",
            vocab_size=vocab_size,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        ),
    )


def _native_to_original_renames() -> list[tuple[str, str]]:
    """The inverse of the registered conversion's renames, applied in reverse order."""
    inverse = []
    for source, target in reversed(ORIGINAL_TO_NATIVE_RENAMES):
        anchor = "^" if source.startswith("^") else ""
        inverse.append((anchor + re.escape(target), source.lstrip("^").replace("\\.", ".")))
    return inverse


def native_to_original_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Native InternVL weights -> OpenGVLab key names with InternViT's fused qkv (the layout of OpenGVLab repos)."""
    renames = _native_to_original_renames()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if ".attention.k_proj." in name or ".attention.v_proj." in name:
            continue  # fused into qkv with q_proj below
        fused = ".attention.q_proj." in name
        if fused:
            parts = [state_dict[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            tensor = torch.cat(parts, dim=0)
            name = name.replace(".attention.q_proj.", ".attn.qkv.")
        for pattern, replacement in renames:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor.contiguous()
    return out


def build_tiny_mllm(original_dir: Path, hf_dir: Path, tokenizer, seed: int = 0) -> InternVLForConditionalGeneration:
    raw = original_mllm_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    config = config_from_original(raw, tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    # Random init leaves some tensors at exact zeros/ones; spread them so a wrong mapping cannot hide.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)

    original_dir.mkdir(parents=True, exist_ok=True)
    (original_dir / "config.json").write_text(json.dumps(raw, indent=2))
    save_file(native_to_original_state_dict(model.state_dict()), original_dir / "model.safetensors")
    tokenizer.save_pretrained(original_dir)
    return model


def _perturb(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter nonzero random values: SANA zero-initialises layers that tests must see working."""
    with torch.no_grad():
        for name, parameter in sorted(module.named_parameters()):
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim >= 2:
                parameter.copy_(noise / parameter.shape[1] ** 0.5)
            elif name.endswith("bias"):
                parameter.copy_(noise * 0.05)
            else:
                parameter.copy_(1 + noise * 0.1)


def calibrate_scaling_factor(vae: AutoencoderDC, generator: torch.Generator) -> None:
    """Set the VAE's `scaling_factor` so that scaled latents of smooth images have unit spread, as the real DC-AE's
    0.41407 does: the random encoder's raw latents are ~1000 wide, which would put the tiny model's flow-matching
    losses near 1e5 instead of the ~1 of the real model."""
    coarse = torch.rand(8, 3, 4, 4, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=64, mode="bilinear", align_corners=False)
    with torch.no_grad():
        spread = vae.encode(images).latent.std().item()
    vae.register_to_config(scaling_factor=1.0 / spread)


def build_random_pipeline(variant_name: str, tokenizer_dir: Path, device, dtype) -> OpenUniPipeline:
    """A pipeline with the real geometry of a released variant and random weights: same cost as the real one.

    The tokenizer is any InternVL-style one (the tiny one will do): only the token count of a prompt matters here.
    """
    from .internvl import config_from_geometry
    from .loading import load_tokenizer
    from .pipeline import OpenUniPipeline
    from .variants import DC_AE_F32C32, get_variant

    variant = get_variant(variant_name)
    tokenizer = load_tokenizer(tokenizer_dir)
    with torch.device(device):
        mllm = InternVLForConditionalGeneration(config_from_geometry(variant.mllm_geometry)).to(dtype)
        # (Module.type: diffusers' ModelMixin.to(dtype) warns about fp32 modules even where there are none.)
        transformer = SanaTransformer2DModel(**variant.transformer_geometry).type(dtype)
        vae = AutoencoderDC(**DC_AE_F32C32).type(dtype)
        connector = OpenUniConnector(**vars(variant.connector), num_queries=variant.num_queries,
                                     caption_channels=transformer.config.caption_channels).type(dtype)
    scheduler = DPMSolverMultistepScheduler(**SANA_SCHEDULER_CONFIG)
    return OpenUniPipeline(tokenizer, mllm, connector, transformer, vae, scheduler).for_inference()


def build_tiny_openuni(root: str | Path, seed: int = 0, unit_latents: bool = False) -> TinyOpenUni:
    """Write a complete tiny OpenUni (every component, both MLLM layouts, a release .pth) under `root`.

    `unit_latents`: calibrate the DC-AE's `scaling_factor` (`calibrate_scaling_factor`), as `openuni make-tiny`
    does for training try-outs. The tests' model keeps the real DC-AE's factor; its latents are ~400 wide."""
    root = Path(root)
    paths = TinyOpenUni(
        root=root,
        tokenizer=root / "tokenizer",
        mllm=root / "mllm",
        mllm_hf=root / "mllm-hf",
        transformer=root / "transformer",
        vae=root / "vae",
        scheduler=root / "scheduler",
        checkpoint=root / "openuni_tiny.pth",
    )
    tokenizer = build_tiny_tokenizer(paths.tokenizer)
    build_tiny_mllm(paths.mllm, paths.mllm_hf, tokenizer, seed=seed)

    generator = torch.Generator().manual_seed(seed + 1)
    transformer = SanaTransformer2DModel(**TINY_TRANSFORMER)
    _perturb(transformer, generator)
    transformer.save_pretrained(paths.transformer)

    vae = AutoencoderDC(**TINY_VAE)
    _perturb(vae, generator)
    if unit_latents:  # (its own generator: the other components' weights stay the same either way)
        calibrate_scaling_factor(vae, torch.Generator().manual_seed(seed + 2))
    vae.save_pretrained(paths.vae)

    DPMSolverMultistepScheduler(**SANA_SCHEDULER_CONFIG).save_pretrained(paths.scheduler)

    connector = OpenUniConnector(**TINY_CONNECTOR, caption_channels=TINY_TRANSFORMER["caption_channels"])
    _perturb(connector, generator)
    _perturb(transformer, generator)  # a "finetuned" SANA: the release file's weights differ from the base repo's
    release = dict(connector.state_dict())
    release.update({f"transformer.{k}": v for k, v in transformer.state_dict().items()})
    torch.save(release, paths.checkpoint)
    return paths


# (caption, background, shape colour, shape, width, height): a few images of several aspect ratios.
TINY_IMAGES = [
    ("a red square on a blue background", "blue", "red", "rectangle", 80, 64),
    ("a yellow disc on a green background", "green", "yellow", "ellipse", 64, 64),
    ("a white square on black", "black", "white", "rectangle", 64, 96),
    ("an orange disc on a purple background", "purple", "orange", "ellipse", 96, 64),
    ("a black square on a white background", "white", "black", "rectangle", 64, 80),
    ("a pink disc on a grey background", "grey", "pink", "ellipse", 72, 72),
]


def write_tiny_dataset(root: str | Path) -> Path:
    """A tiny dataset in the reference's layout (`index.json` of {image, annotation}, captions in .txt and .json
    files beside the images), to try `openuni train` on. Returns the index file."""
    import PIL.Image
    import PIL.ImageDraw

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (caption, background, colour, shape, width, height) in enumerate(TINY_IMAGES):
        image = PIL.Image.new("RGB", (width, height), background)
        box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        getattr(PIL.ImageDraw.Draw(image), shape)(box, fill=colour)
        image.save(root / f"{i:04d}.png")
        annotation = f"{i:04d}.{'json' if i % 2 else 'txt'}"  # the reference reads both
        (root / annotation).write_text(json.dumps({"caption": caption}) if i % 2 else caption, encoding="utf-8")
        entries.append({"image": f"{i:04d}.png", "annotation": annotation})
    index = root / "index.json"
    index.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return index


def write_tiny_train_config(tiny: TinyOpenUni, index: Path, output_dir: str | Path) -> Path:
    """A `openuni train` config that finetunes the tiny model on `index` on a CPU in seconds: the finetuning preset
    with the tiny components, its resolution (64 px) and a small batch. Returns the YAML file."""
    import yaml

    values = dict(
        preset="finetune-b-512",
        mllm=str(tiny.mllm.resolve()), transformer=str(tiny.transformer.resolve()), vae=str(tiny.vae.resolve()),
        scheduler=str(tiny.scheduler.resolve()), init_checkpoint=str(tiny.checkpoint.resolve()),
        connector_heads=tiny.connector_heads,
        data=[dict(kind="json", path=str(index.resolve()))],
        resolution=64, batch_size=2, num_workers=0, max_steps=20, lr=1e-4, warmup_ratio=0.1,
        mixed_precision="no", log_with="none", output_dir=str(Path(output_dir).resolve()),
        checkpoint_every=10, keep_checkpoints=1, log_every=5, sample_every=10, sample_steps=4,
    )
    path = tiny.root / "train.yaml"
    path.write_text("# openuni train " + str(path) + " [key=value ...]: the tiny model on the tiny dataset\n"
                    + yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path
