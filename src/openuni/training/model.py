"""Preparing OpenUni for training: what trains (connector, SANA fully or through LoRA), the training schedule,
and folding LoRA adapters back into SANA's weights for export."""

from __future__ import annotations

import torch

from ..model import OpenUni

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def training_scheduler(sampling_scheduler_config, shift: float = 1.0) -> "FlowMatchEulerDiscreteScheduler":
    """The reference's training schedule: a flow-match Euler scheduler read from the sampling scheduler's config.

    That config has `flow_shift` but no `shift`, so the training sigmas are unshifted: sigma = (1000 - i) / 1000.
    `shift` other than 1 trains on shifted sigmas instead (SPEC: keep it configurable; parity quirk 7).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(dict(sampling_scheduler_config), shift=shift)


def configure_trainable(model: OpenUni, train_transformer: bool, lora_rank: int, lora_alpha: float | None,
                        activation_checkpointing: bool) -> None:
    """Freeze the MLLM and VAE, train the connector, and SANA fully, through LoRA, or not at all."""
    model.mllm.requires_grad_(False)
    model.vae.requires_grad_(False).eval()
    model.connector.requires_grad_(True).train()
    model.transformer.requires_grad_(train_transformer and lora_rank == 0)
    if lora_rank > 0:
        from peft import LoraConfig

        model.transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank,
                                                 init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    model.transformer.train()
    if activation_checkpointing:
        # The frozen LLM still carries gradients to the queries, so its activations are worth recomputing too;
        # transformers checkpoints only in train mode (the LLM has no dropout, so train mode changes nothing else).
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.language_model.train()
        model.transformer.enable_gradient_checkpointing()


def merge_lora(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A SANA state dict with peft LoRA adapters folded into the base weights: W + scaling * B @ A, plain keys."""
    merged = {}
    for key, tensor in state.items():
        if "lora_" in key:
            continue
        if ".base_layer." in key and key.endswith(".weight"):
            prefix = key[: -len(".base_layer.weight")]
            lora_a, lora_b = state[f"{prefix}.lora_A.default.weight"], state[f"{prefix}.lora_B.default.weight"]
            tensor = tensor + scaling * (lora_b.float() @ lora_a.float()).to(tensor.dtype)
        merged[key.replace(".base_layer.", ".")] = tensor
    return merged
