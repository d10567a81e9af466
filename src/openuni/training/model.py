"""What accelerate wraps for training: the trainable modules, with the frozen MLLM and VAE alongside."""

from __future__ import annotations

import torch
from torch import nn

from ..model import OpenUni

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class TrainableOpenUni(nn.Module):
    """Connector (queries, connector, projector) and SANA as submodules; the frozen MLLM and VAE are held outside
    the module tree so that DDP/FSDP/DeepSpeed and checkpoints deal only with what can train."""

    def __init__(self, model: OpenUni, train_scheduler):
        super().__init__()
        self.connector = model.connector
        self.transformer = model.transformer
        self.frozen = (model.mllm, model.vae)  # a tuple: not registered as submodules
        self.train_scheduler = train_scheduler

    def openuni(self) -> OpenUni:
        mllm, vae = self.frozen
        return OpenUni(mllm, self.connector, self.transformer, vae)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, latents: torch.Tensor,
                noise: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Per-sample flow-matching losses of a text-to-image batch."""
        model = self.openuni()
        caption_embeds = model.encode_text(input_ids, attention_mask)
        return model.flow_matching_loss(latents, caption_embeds, self.train_scheduler, noise=noise, u=u).per_sample_loss


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
