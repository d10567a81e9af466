"""Benchmarks OpenUni is judged on: GenEval, DPG-Bench and WISE.

`prompts` reads (or fetches at a pinned commit) each benchmark's prompt files, `generate` writes images in the layout
each official scorer reads, and `geneval`, `dpg`, `wise` score them; `report` writes the summaries.
"""

# Default checkpoints of the scorers (the user may name others).
DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_JUDGE = "Qwen/Qwen2.5-VL-7B-Instruct"
