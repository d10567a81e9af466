"""OpenUni's computation: frozen InternVL3 + learned queries + connector + projector -> SANA -> DC-AE.

`OpenUni` is the model: conditioning, the DiT's prediction, decoding and the training forward (per-sample
flow-matching losses). Its module tree holds only what can train, the connector (queries, connector, projector)
and the SANA transformer, so DDP, FSDP, DeepSpeed and training checkpoints deal with those alone; the frozen MLLM
and VAE are held beside it. The pipeline generates with it, the trainer trains it. SPEC "The computation" and the
quirks of parity/README.md are followed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .connector import OpenUniConnector

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class OpenUni(nn.Module):
    def __init__(self, mllm: nn.Module, connector: OpenUniConnector, transformer: nn.Module, vae: nn.Module,
                 train_scheduler=None):
        super().__init__()
        self.connector = connector
        self.transformer = transformer
        self._frozen = (mllm, vae)  # a tuple: not registered as submodules
        self.train_scheduler = train_scheduler  # the training schedule (training.model.training_scheduler)

    def hold_transformer_frozen(self) -> None:
        """Move a SANA that does not train out of the module tree, beside the MLLM and VAE (pretraining): no engine
        wraps, shards or checkpoints it, and `transformer` still reads it."""
        transformer = self._modules.pop("transformer")
        object.__setattr__(self, "transformer", transformer.requires_grad_(False))  # a plain attribute

    @property
    def mllm(self) -> nn.Module:
        return self._frozen[0]

    @property
    def vae(self) -> nn.Module:
        return self._frozen[1]

    @property
    def language_model(self) -> nn.Module:
        return self.mllm.model.language_model

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)

    @property
    def num_image_tokens(self) -> int:
        """Tokens one image tile becomes in the LLM (256 for the real 448 px InternViT)."""
        return self.mllm.config.image_seq_length

    @property
    def vit_input_size(self) -> int:
        return vit_input_size(self.mllm)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(input_ids)

    def embed_with_images(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the `<IMG_CONTEXT>` positions replaced, in row-major order, by `image_embeds`
        ([num_images, num_image_tokens, hidden], from `semantic_features`)."""
        inputs_embeds = self.embed_tokens(input_ids)
        if image_embeds is None:
            return inputs_embeds
        positions = input_ids == self.mllm.config.image_token_id
        flat = image_embeds.reshape(-1, image_embeds.shape[-1]).to(inputs_embeds.dtype)
        if int(positions.sum()) != flat.shape[0]:
            raise ValueError(f"{int(positions.sum())} image tokens in the prompts for {flat.shape[0]} image embeddings")
        return inputs_embeds.masked_scatter(positions.unsqueeze(-1), flat)

    def condition(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (padded, with mask) -> SANA caption embeddings [batch, num_queries, caption_channels]."""
        inputs_embeds = inputs_embeds.to(self.connector.dtype)
        states = self.connector.query_hidden_states(self.language_model, inputs_embeds, attention_mask)
        return self.connector(states.to(self.connector.dtype))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.condition(self.embed_tokens(input_ids), attention_mask)

    def semantic_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> InternViT features as LLM embeddings, `num_image_tokens` per image."""
        return semantic_features(self.mllm, pixel_values)

    def latents_to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, latents)

    def pixels_to_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return encode_pixels(self.vae, pixel_values)

    def predict_velocity(
        self, latents: torch.Tensor, timestep: torch.Tensor, caption_embeds: torch.Tensor
    ) -> torch.Tensor:
        """The SANA transformer's flow prediction (noise - data) for latents at `timestep` (0..1000)."""
        dtype = self.transformer.dtype
        return self.transformer(
            latents.to(dtype),
            encoder_hidden_states=caption_embeds.to(dtype),
            timestep=timestep.float(),  # float32 even in bf16: 999 would round to 1000 there
            return_dict=False,
        )[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, latents: torch.Tensor,
                noise: torch.Tensor, u: torch.Tensor, source_pixels: torch.Tensor | None = None,
                source_features: torch.Tensor | None = None, max_length: int | None = None) -> torch.Tensor:
        """The training forward: per-sample flow-matching losses of a batch of one task. A text-to-image batch
        holds prompts; an image-to-image batch holds edit prompts and its sources, as images in [-1, 1]
        (`source_pixels`) or as cached InternViT features (`source_features`), and cuts at `max_length`."""
        if source_pixels is None and source_features is None:
            caption_embeds = self.encode_text(input_ids, attention_mask)
        else:
            caption_embeds = self.edit_caption_embeds(input_ids, attention_mask, source_pixels, max_length,
                                                      source_features)
        return self.flow_matching_loss(latents, caption_embeds, self.train_scheduler, noise=noise, u=u).per_sample_loss

    def flow_matching_loss(
        self,
        latents: torch.Tensor,
        caption_embeds: torch.Tensor,
        train_scheduler,
        noise: torch.Tensor | None = None,
        u: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> FlowMatchingOutput:
        """Flow-matching MSE of the SANA prediction against `noise - latents` at uniformly drawn scheduler steps.

        `noise` and `u` (in [0, 1), one per sample) are drawn from `generator` when not given; tests feed recorded ones.
        """
        batch = latents.shape[0]
        if u is None:
            u = torch.rand(batch, generator=generator, device=generator.device if generator else "cpu")
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator else "cpu")
        latents, noise = latents.float(), noise.to(latents.device, torch.float32)
        indices = (u.cpu() * train_scheduler.config.num_train_timesteps).long()
        # The table value goes to the DiT unrounded (127.00000762939453, not 127), as in the reference.
        timesteps = train_scheduler.timesteps[indices].to(latents.device, torch.float32)
        sigmas = train_scheduler.sigmas[indices].to(latents.device, torch.float32)
        sigma = sigmas.view(batch, *([1] * (latents.ndim - 1)))
        noisy_latents = (1.0 - sigma) * latents + sigma * noise
        target = noise - latents
        model_pred = self.predict_velocity(noisy_latents, timesteps, caption_embeds).float()
        per_sample = ((model_pred - target) ** 2).reshape(batch, -1).mean(dim=1)
        return FlowMatchingOutput(per_sample.mean(), per_sample, model_pred, target, noisy_latents, timesteps, sigmas)

    def edit_caption_embeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        source_pixels: torch.Tensor | None,
        max_length: int | None = None,
        source_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image-to-image conditioning of a (left-padded) batch: the sources' semantic features at `<IMG_CONTEXT>`,
        computed from `source_pixels` or given as `source_features` (cached by `extract-latents`).

        Beyond `max_length` the sequence is cut from the left, as the reference's `image2image_loss` does.
        """
        if source_features is None:
            source_features = self.semantic_features(source_pixels)
        inputs_embeds = self.embed_with_images(input_ids, source_features)
        if max_length is not None and inputs_embeds.shape[1] > max_length:
            inputs_embeds, attention_mask = inputs_embeds[:, -max_length:], attention_mask[:, -max_length:]
        return self.condition(inputs_embeds, attention_mask)


def vit_input_size(mllm: nn.Module) -> int:
    size = mllm.config.vision_config.image_size
    return size[0] if isinstance(size, (list, tuple)) else size


def semantic_features(mllm: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] -> ImageNet normalisation -> bilinear resize to the ViT's size -> InternViT + projector
    (parity quirk 9); `extract-latents --source-features` caches these."""
    mean = pixel_values.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = pixel_values.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = ((pixel_values + 1) / 2 - mean) / std
    size = vit_input_size(mllm)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    vision_dtype = mllm.model.vision_tower.dtype
    return mllm.model.get_image_features(pixel_values=x.to(vision_dtype), return_dict=True).pooler_output


def encode_pixels(vae: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> scaled DC-AE latents (what SANA sees and training caches)."""
    latents = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent
    return latents * vae.config.scaling_factor


def decode_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (unclamped, as the reference)."""
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8, with the reference's conversion (127.5 x + 128, truncated)."""
    return torch.clamp(127.5 * pixels.float() + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1)


# -- training (SPEC "Training", parity quirk 7) -----------------------------------------------------------------

@dataclass
class FlowMatchingOutput:
    """The loss and what went into it, per sample where it has a batch dimension."""

    loss: torch.Tensor
    per_sample_loss: torch.Tensor
    model_pred: torch.Tensor
    target: torch.Tensor
    noisy_latents: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
