"""Training data: readers for the reference's layouts, WebDataset shards and cached latents, and the per-rank
sample stream that mixes them deterministically."""
