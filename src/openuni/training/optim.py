"""AdamW with weight decay on matrices only, and the reference's warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split so that weight decay reaches only those with >= 2 dimensions."""
    decay, no_decay = [], []
    for parameter in module.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine_factor(step: int, max_steps: int, warmup_steps: int, start_factor: float) -> float:
    """LR multiplier: linear from `start_factor` to 1 over `warmup_steps`, then cosine down to 0 at `max_steps`."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(module: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    groups = parameter_groups(module, weight_decay)
    if not any(group["params"] for group in groups):
        raise ValueError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def build_lr_scheduler(optimizer, max_steps: int, warmup_ratio: float, start_factor: float):
    warmup_steps = max(1, round(max_steps * warmup_ratio)) if warmup_ratio > 0 else 0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, max_steps, warmup_steps, start_factor)
    )
