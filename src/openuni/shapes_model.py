"""The small OpenUni the synthetic-shapes benchmark trains: written to disk in the real formats, as `tiny.py` does.

- Tokenizer: a byte-level BPE in Qwen2's layout trained on the caption vocabulary and the chat template, so every
  caption word is one token (a token's identity then reaches the queries whole).
- MLLM: an InternVL3 of random weights, frozen as OpenUni's always is: a one-layer LLM (hidden 64) whose weights are
  drawn wide (`LLM_INIT_STD`), so that its attention is sharp and the hidden states at the query positions carry the
  prompt's words and their order. With the usual 0.02 they differ between prompts by ~1% (and by 0.02% between "a
  yellow square left of a purple circle" and its swap: a bag of words); a model trained on that ignored the prompt.
  At 0.3 they differ by ~50% (swap: ~40%). Its RoPE base is 100 (`ROPE_THETA`) instead of Qwen2's 1e6: a 16-wide
  head has 8 rotary frequencies, and at 1e6 only 2 of them turn by a radian or more over ten tokens (a caption's
  length), so a query can hardly tell a colour one token before a shape from one five tokens before it; at 100, 5 do.
  Swapping which colour goes with which shape ("a blue square and a green triangle" / "a blue triangle and a green
  square") then moves the states at untrained queries by 59% on average instead of 30% (tests/test_shapes.py), and
  the trained model binds the colours as written (docs/benchmarks.md).
- DC-AE: f8 and lossless, built rather than trained (`pixel_autoencoder`): a latent is the 8 x 8 pixel patch it
  covers (8 x 8 latents of 256 channels per 64 px image), centred, its colours mapped so that the grey axis (the
  silhouette, since the palette is equally dark) outweighs the chroma axes 3 to 1 (`colour_transform`), and scaled
  (`scaling_factor`) to unit variance. Held-out overall 0.155 with the map on the old, unequal palette, 0.742 with
  the equal palette and shifted training sigmas (docs/benchmarks.md).
  The real f32 DC-AE is 312M parameters and would leave a 2 x 2 latent at 64 px; a small DC-AE trained here for ten
  minutes still lost a third of the scorer's ground truth in its reconstructions.
- SANA: 4 blocks 256 wide (4.9M parameters) with sin-cos position embeddings (the released SANA has none and reads
  position from its convolutions; on an 8 x 8 grid an explicit one learns left/right/top/bottom sooner). At least
  as wide as a latent token (256 channels): SANA has no skip from input to output, so a narrower model (128 wide
  was tried) cannot carry the noise it must predict through its width and leaves it in every image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
from transformers import InternVLForConditionalGeneration, Qwen2TokenizerFast

from .data.shapes import caption_vocabulary, draw, training_samples
from .internvl import config_from_original
from .prompting import GENERATION, IMG_CONTEXT, INSTRUCTION, UNCONDITIONAL, generation_prompt
from .tiny import SPECIAL_TOKENS, TINY_VISION, original_mllm_config
from .variants import SANA_SCHEDULER_CONFIG

LLM_INIT_STD = 0.3
ROPE_THETA = 100.0  # see the module's docstring
SHAPES_LLM = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=128, rope_theta=ROPE_THETA)
SHAPES_TRANSFORMER = dict(
    in_channels=256, out_channels=256, num_attention_heads=8, attention_head_dim=32, num_layers=4,
    num_cross_attention_heads=8, cross_attention_head_dim=32, cross_attention_dim=256, caption_channels=128,
    mlp_ratio=2.5, patch_size=1, sample_size=8, attention_bias=False, norm_elementwise_affine=False, norm_eps=1e-6,
    interpolation_scale=1, qk_norm=None,
)
# A lossless f8 DC-AE: the encoder is a pixel-unshuffle (3 colours + 1 empty channel per pixel, 8 x 8 pixels per
# latent: 256 channels), the decoder its inverse. See `pixel_autoencoder`.
SHAPES_VAE = dict(
    in_channels=3, latent_channels=256, attention_head_dim=8,
    encoder_block_types="ResBlock", decoder_block_types="ResBlock",
    encoder_block_out_channels=[16, 16, 64, 256], decoder_block_out_channels=[16, 16, 64, 256],
    encoder_layers_per_block=[0, 1, 1, 1], decoder_layers_per_block=[0, 1, 1, 1],
    encoder_qkv_multiscales=[[]] * 4, decoder_qkv_multiscales=[[]] * 4,
    upsample_block_type="pixel_shuffle", downsample_block_type="pixel_unshuffle", decoder_norm_types="rms_norm",
    decoder_act_fns="silu", scaling_factor=1.0,
)
SPARE_LEVEL = 1.0e4  # see `pixel_autoencoder`
GREY_EMPHASIS = 3.0  # see `colour_transform`; x1, x1.5 and x4.5 scored lower (docs/benchmarks.md)


def build_shapes_tokenizer(path: Path) -> Qwen2TokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    qwen2_split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen2_split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    words = caption_vocabulary()
    template = INSTRUCTION.format(input=GENERATION.format(input=" ".join(words))) + INSTRUCTION.format(input=UNCONDITIONAL)
    # Each word alone and after a space, many times over: BPE merges them into single tokens.
    corpus = [template] * 20 + [" ".join(words)] * 50 + [f"{a} {b}" for a in words for b in words]
    trainer = trainers.BpeTrainer(vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   unk_token=None, bos_token=None, padding_side="right")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.save_pretrained(path)
    return tokenizer


def build_shapes_mllm(path: Path, tokenizer, seed: int) -> None:
    raw = original_mllm_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    raw["llm_config"].update(SHAPES_LLM, rope_scaling=None)
    config = config_from_original(raw, tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():  # (the config's initializer_range does not reach the LLM's init: set its weights here)
        for module in model.model.language_model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, LLM_INIT_STD)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def shapes_text_path(folder: Path, seed: int = 0) -> tuple[Qwen2TokenizerFast, torch.nn.Module]:
    """The shapes tokenizer and frozen LLM, written to `folder` by `build_shapes_mllm` and read back from it."""
    tokenizer = build_shapes_tokenizer(folder)
    build_shapes_mllm(folder, tokenizer, seed)
    language_model = InternVLForConditionalGeneration.from_pretrained(folder).model.language_model.eval()
    return tokenizer, language_model.requires_grad_(False)


def query_states(tokenizer, language_model, connector, captions: list[str]) -> torch.Tensor:
    """The frozen LLM's states at `connector`'s learned queries for captions in the generation template:
    [captions, num_queries, hidden]."""
    tokens = tokenizer([generation_prompt(text) for text in captions], add_special_tokens=False, padding="longest",
                       return_tensors="pt")
    embeds = language_model.get_input_embeddings()(tokens.input_ids)
    return connector.query_hidden_states(language_model, embeds, tokens.attention_mask)


def shapes_pixels(count: int, seed: int) -> torch.Tensor:
    images = np.stack([np.asarray(draw(scene)) for _, scene in training_samples(count, seed)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def colour_transform(emphasis: float) -> torch.Tensor:
    """The 3 x 3 map from a pixel's colours to its latent channels: the grey axis (1, 1, 1) scaled by `emphasis`
    against the two chroma axes. Every object differs from the white canvas along the grey axis, so this axis draws
    the shape's silhouette; the chroma axes tell the colours apart. The loss weighs a latent direction by the square
    of its scale, so with emphasis > 1 a wrong silhouette costs more than a wrong hue."""
    grey = torch.full((3, 3), 1.0 / 3)
    return emphasis * grey + (torch.eye(3) - grey)


def pixel_autoencoder(mean: torch.Tensor, std: float, emphasis: float = 1.0) -> AutoencoderDC:
    """A DC-AE whose latents are the pixels themselves, their colours centred on `mean`, mapped by
    `colour_transform(emphasis)` and scaled by 1 / `std`.

    Every residual branch is zero, so the encoder is its pixel-unshuffle shortcuts: conv_in maps the colours (less
    their mean) into channels 0-2 of 4 and unshuffles by 2, then each stage unshuffles by 2 again. The decoder's
    shuffles invert that exactly; only its final RMSNorm + ReLU need care: the 32 px stage writes SPARE_LEVEL into
    the empty channel, so the norm divides every pixel by the same amount (to within ~1e-6 of it), which the norm's
    weight undoes, and its bias lifts the values above 0 for the ReLU; conv_out inverts the colour map and takes the
    lift and the mean off again. Round trip error: ~1e-4 of one 8-bit level. The shapes are simple enough to be
    drawn in pixels; a trained autoencoder took longer than the whole training budget here to reconstruct them well
    enough for the scorer.
    """
    vae = AutoencoderDC(**SHAPES_VAE)
    forward = colour_transform(emphasis)
    inverse = torch.linalg.inv(forward)
    lift = 2.0 * (emphasis + 1.0)  # above any |latent| of a pixel in [-1, 1]
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.zero_()
        conv_in = vae.encoder.conv_in.conv  # 3 -> 4 channels, then unshuffled
        conv_in.weight[:3, :, 1, 1] = forward
        conv_in.bias[:3] = -forward @ mean
        spare = vae.decoder.up_blocks[1][-1].norm  # the ResBlock at 32 px: channels c * 4 + subpixel
        spare.bias[12:16] = SPARE_LEVEL
        # 12 latent values and 4 x SPARE_LEVEL: the RMS is SPARE_LEVEL / 2 to within 12 x^2 / (8 SPARE_LEVEL^2)
        vae.decoder.norm_out.weight[:12] = SPARE_LEVEL / 2
        vae.decoder.norm_out.bias[:12] = lift
        conv_out = vae.decoder.conv_out.conv  # 16 -> 12 channels (c * 4 + subpixel), then shuffled
        for subpixel in range(4):
            for colour in range(3):
                for source in range(3):
                    conv_out.weight[colour * 4 + subpixel, source * 4 + subpixel, 1, 1] = inverse[colour, source]
                conv_out.bias[colour * 4 + subpixel] = mean[colour] - lift * inverse[colour].sum()
    vae.register_to_config(scaling_factor=float(1.0 / std))
    return vae


def shapes_autoencoder(images: int, seed: int, emphasis: float = GREY_EMPHASIS) -> AutoencoderDC:
    """The pixel autoencoder with its latents of zero mean and unit variance over shapes images (the 64 empty
    channels of each latent count as zeros)."""
    pixels = shapes_pixels(images, seed)
    mean = pixels.mean(dim=(0, 2, 3))
    latents = torch.einsum("ij,njhw->nihw", colour_transform(emphasis), pixels - mean[None, :, None, None])
    std = float(torch.sqrt(latents.square().mean() * 3 / 4))
    return pixel_autoencoder(mean, std, emphasis)


def build_shapes_model(root: str | Path, seed: int = 0, statistics_images: int = 1000) -> dict[str, Path]:
    """Write tokenizer + MLLM, SANA, the trained DC-AE and the scheduler under `root`; returns their paths."""
    root = Path(root)
    paths = {name: root / name for name in ("mllm", "transformer", "vae", "scheduler")}
    tokenizer = build_shapes_tokenizer(paths["mllm"])
    build_shapes_mllm(paths["mllm"], tokenizer, seed)
    torch.manual_seed(seed + 1)
    SanaTransformer2DModel(**SHAPES_TRANSFORMER).save_pretrained(paths["transformer"])
    DPMSolverMultistepScheduler(**SANA_SCHEDULER_CONFIG).save_pretrained(paths["scheduler"])
    shapes_autoencoder(statistics_images, seed).save_pretrained(paths["vae"])
    return paths
