"""From samples to model inputs: prompt formatting, caption dropout, truncation and the reference's padding."""

from __future__ import annotations

import torch

from ..errors import OpenUniError
from ..prompting import MAX_TRAIN_PROMPT_TOKENS, edit_prompt, generation_prompt, unconditional_prompt
from .stream import sample_rng

PAD_ID = 0  # the reference's training collates pad with id 0 (config `pad_index`), not <|endoftext|>


def pad_sequences(sequences: list[list[int]], side: str = "right", value: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists to one length: text-to-image batches pad on the right, image-to-image on the left."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        span = slice(0, len(sequence)) if side == "right" else slice(length - len(sequence), length)
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = True
    return ids, mask


def training_prompts(captions: list[str], indices: list[int], seed: int, caption_dropout: float) -> list[str]:
    """Generation prompts, each replaced by the CFG prompt with probability `caption_dropout` (fixed by seed, index)."""
    return [
        unconditional_prompt() if sample_rng(seed, index, "caption-dropout").random() < caption_dropout
        else generation_prompt(caption)
        for caption, index in zip(captions, indices)
    ]


def tokenize_prompts(tokenizer, prompts: list[str], max_tokens: int = MAX_TRAIN_PROMPT_TOKENS
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-to-image batches: token ids cut to `max_tokens` (the reference's `input_ids[:max_length]`) and
    right-padded."""
    ids = [tokenizer(p, add_special_tokens=False).input_ids[:max_tokens] for p in prompts]
    return pad_sequences(ids, "right")


def truncate_text(tokenizer, text: str, max_tokens: int) -> str:
    """`text` cut after its first `max_tokens` tokens (counted on the text alone); unchanged when shorter."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoding.input_ids) <= max_tokens:
        return text
    return text[: encoding.offset_mapping[max_tokens - 1][1]]


def tokenize_edit_prompts(tokenizer, instructions: list[str], num_image_tokens: int,
                          max_instruction_tokens: int = MAX_TRAIN_PROMPT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-to-image batches: the edit prompts (source image tokens + instruction), left-padded with 0 as the
    reference's `collate_func_img2img`. Only the instruction's text is limited to `max_instruction_tokens`; the
    `num_image_tokens` image tokens and the template around them are never cut (the reference cuts nothing here:
    its whole-sequence limit applies to the embeddings, in `OpenUni.edit_caption_embeds`)."""
    prompts = [edit_prompt(truncate_text(tokenizer, text, max_instruction_tokens), num_image_tokens)
               for text in instructions]
    return pad_sequences([tokenizer(p, add_special_tokens=False).input_ids for p in prompts], "left")


def stack_latents(samples: list[dict], encode) -> torch.Tensor:
    """Latents of a batch in sample order: cached ones as they are, images encoded with `encode` (the frozen VAE)
    in one call."""
    from_pixels = [i for i, s in enumerate(samples) if "pixels" in s]
    latents = [s.get("latents") for s in samples]
    if from_pixels:
        encoded = encode(torch.stack([samples[i]["pixels"] for i in from_pixels]))
        for i, tensor in zip(from_pixels, encoded):
            latents[i] = tensor
    shapes = {tuple(l.shape) for l in latents}
    if len(shapes) > 1:
        raise OpenUniError(f"latents of different sizes in one batch {sorted(shapes)}: cached latents must match "
                           "the training resolution (and aspect buckets cannot mix with cached latents)")
    device = latents[from_pixels[0]].device if from_pixels else torch.device("cpu")
    return torch.stack([l.to(device, torch.float32) for l in latents])
