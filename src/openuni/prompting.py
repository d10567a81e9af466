"""The InternVL3 chat template and the prompts OpenUni builds from it (SPEC "The computation")."""

from __future__ import annotations

INSTRUCTION = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
GENERATION = "Generate an image: {input}"
UNCONDITIONAL = "Generate an image."
EDIT_UNCONDITIONAL = "Keep the image as it is."

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"

# Prompts are truncated to this many tokens in training (the text of an edit instruction, never its image tokens).
MAX_TRAIN_PROMPT_TOKENS = 128
# Image-to-image training cuts the embedded sequence from the left beyond this many positions: the reference
# model's `max_length` (its constructor default, which no config changes), applied in its `image2image_loss`.
MAX_EDIT_SEQUENCE_TOKENS = 2048
# The instruction of reconstruction samples (the reference's `ReconstructDataset`), the same text as the
# unconditional branch of editing.
RECONSTRUCTION_INSTRUCTION = EDIT_UNCONDITIONAL


def generation_prompt(prompt: str) -> str:
    """The conditional prompt for text-to-image."""
    return INSTRUCTION.format(input=GENERATION.format(input=prompt.strip())) + IMG_START


def unconditional_prompt(negative_prompt: str | None = None) -> str:
    """The CFG branch: "Generate an image." or, with a user's negative prompt, that prompt wrapped like a positive one."""
    if negative_prompt is None:
        return INSTRUCTION.format(input=UNCONDITIONAL) + IMG_START
    return generation_prompt(negative_prompt)


def image_tokens(num_image_tokens: int) -> str:
    return IMG_START + IMG_CONTEXT * num_image_tokens + IMG_END


def edit_prompt(instruction: str, num_image_tokens: int) -> str:
    """Image-to-image: the source image's tokens, then the raw instruction (no GENERATION wrapper)."""
    return INSTRUCTION.format(input=image_tokens(num_image_tokens) + "\n" + instruction) + IMG_START
