"""The learned queries, the connector and the projector: everything OpenUni trains on top of the frozen MLLM.

Parameter names follow the reference (`meta_queries`, `connector.layers.{i}...`, `projector.*`), so a
released checkpoint's non-transformer keys are this module's state dict as they are.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .errors import OpenUniError
from .variants import ConnectorGeometry


class ConnectorAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)

        # Bidirectional and unmasked: every query sees every other query.
        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, hidden))


class ConnectorMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference's connector uses the tanh approximation (`gelu_pytorch_tanh`), unlike InternViT.
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ConnectorLayer(nn.Module):
    """A pre-norm ViT encoder layer."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_heads: int, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.self_attn = ConnectorAttention(hidden_size, num_heads)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = ConnectorMLP(hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ConnectorEncoder(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(
            ConnectorLayer(hidden_size, intermediate_size, num_heads, eps) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x  # no final norm, as the reference


class OpenUniConnector(ModelMixin, ConfigMixin):
    """Learned queries appended to the prompt, and the map from their LLM states to SANA caption embeddings."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        hidden_size: int = 896,
        intermediate_size: int = 3072,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 14,
        num_queries: int = 256,
        caption_channels: int = 2304,
        layer_norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.meta_queries = nn.Parameter(torch.randn(num_queries, hidden_size) / hidden_size**0.5)
        self.connector = ConnectorEncoder(
            hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, layer_norm_eps
        )
        self.projector = nn.Linear(hidden_size, caption_channels)

    def forward(self, query_hidden_states: torch.Tensor) -> torch.Tensor:
        """LLM states at the query positions -> SANA caption embeddings."""
        return self.projector(self.connector(query_hidden_states))

    def query_hidden_states(
        self, language_model: nn.Module, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor
    ) -> torch.Tensor:
        """Run the frozen LLM over [prompt tokens (padded), queries] and return its final states at the queries.

        The queries go after the padding; position ids continue right after each row's last real token.
        """
        batch = prompt_embeds.shape[0]
        num_queries = self.config.num_queries
        queries = self.meta_queries.to(prompt_embeds.dtype).expand(batch, -1, -1)
        inputs_embeds = torch.cat([prompt_embeds, queries], dim=1)
        mask = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(batch, num_queries, dtype=torch.bool)], dim=1)
        position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        output = language_model(inputs_embeds=inputs_embeds, attention_mask=mask.long(), position_ids=position_ids)
        return output.last_hidden_state[:, -num_queries:]

    # -- sizing: from a variant's geometry, or read off a checkpoint's shapes -----------------------------------

    @classmethod
    def fresh(cls, geometry: ConnectorGeometry, num_queries: int, caption_channels: int,
              overrides: dict | None = None) -> "OpenUniConnector":
        """An untrained connector of `geometry` (a variant's), with `overrides` of its sizes (models of other sizes).
        The queries are drawn from torch's global generator: seed it first for a reproducible connector."""
        config = dict(asdict(geometry), num_queries=num_queries)
        unknown = set(overrides or {}) - set(config)
        if unknown:
            raise OpenUniError(f"unknown connector setting {sorted(unknown)[0]!r}; known: {', '.join(config)}")
        config.update(overrides or {})
        if config["hidden_size"] % config["num_attention_heads"]:
            raise OpenUniError(f"{config['num_attention_heads']} connector heads do not divide the hidden size "
                               f"{config['hidden_size']}")
        return cls(**config, caption_channels=caption_channels)

    @classmethod
    def for_state_dict(cls, state: dict[str, torch.Tensor], geometry: ConnectorGeometry, num_queries: int,
                       num_attention_heads: int | None = None, what: str = "the variant") -> "OpenUniConnector":
        """A connector shaped to hold a release state dict: the variant's geometry when the shapes are its own,
        else the shapes plus an explicit head count (which shapes do not record)."""
        found = geometry_of_state_dict(state)
        expected = dict(hidden_size=geometry.hidden_size, intermediate_size=geometry.intermediate_size,
                        num_hidden_layers=geometry.num_hidden_layers, num_queries=num_queries)
        if num_attention_heads is None:
            differing = [(key, want, found[key]) for key, want in expected.items() if found[key] != want]
            if differing:
                key, want, got = differing[0]
                raise OpenUniError(
                    f"the checkpoint's connector has {key}={got}, {what} has {want}: pass the right --variant, "
                    "or --connector-heads N to load a checkpoint of another size"
                )
            num_attention_heads = geometry.num_attention_heads
        if num_attention_heads < 1 or found["hidden_size"] % num_attention_heads:
            raise OpenUniError(f"--connector-heads {num_attention_heads} does not divide the hidden size "
                               f"{found['hidden_size']}")
        return cls(**found, num_attention_heads=num_attention_heads)


def geometry_of_state_dict(state: dict[str, torch.Tensor]) -> dict:
    """Connector sizes read off a release state dict's shapes (the head count is not recorded in them)."""
    needed = ("meta_queries", "projector.weight", "connector.layers.0.mlp.fc1.weight")
    missing = [key for key in needed if key not in state]
    if missing:
        raise OpenUniError(f"checkpoint lacks the trainable key {missing[0]!r}: it is not an OpenUni checkpoint")
    layers = {int(key.split(".")[2]) for key in state if key.startswith("connector.layers.")}
    num_queries, hidden_size = state["meta_queries"].shape
    return dict(
        hidden_size=hidden_size,
        intermediate_size=state["connector.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=max(layers) + 1,
        num_queries=num_queries,
        caption_channels=state["projector.weight"].shape[0],
    )
