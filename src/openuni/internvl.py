"""Loading the frozen InternVL3 through transformers' native `InternVLForConditionalGeneration`.

Two layouts exist on the Hub: the original OpenGVLab one (`OpenGVLab/InternVL3-1B`: remote code, `internvl_chat`
config, `vision_model.*` / `mlp1.*` / `language_model.model.*` keys, fused `attn.qkv`) and the converted `-hf` one.
The `-hf` layout loads as it is. The original layout needs two things: a conversion of its weight names registered
with transformers, and an `InternVLConfig` built by hand from its `vision_config`/`llm_config` (without `config=`,
transformers would silently build a default multi-billion-parameter model).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import Chunk, WeightConverter, WeightRenaming

from .devices import default_dtype_kept
from .errors import OpenUniError, reason
from .prompting import IMG_CONTEXT

# (original regex, native name): applied in order, so the more specific names come first.
ORIGINAL_TO_NATIVE_RENAMES = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
    (r"^vision_model\.embeddings\.class_embedding", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    (r"^vision_model\.encoder\.layers\.", "model.vision_tower.encoder.layer."),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.q_norm\.", ".attention.q_norm."),
    (r"\.attn\.k_norm\.", ".attention.k_norm."),
    (r"\.ls1", ".lambda_1"),
    (r"\.ls2", ".lambda_2"),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
]


class OriginalLayoutInternVL(InternVLForConditionalGeneration):
    """Loading-only alias: its class name keys the registered weight conversion for the original layout.

    `load_mllm` turns the loaded model back into a plain `InternVLForConditionalGeneration`, so saving it writes
    the native layout.
    """


def _original_layout_conversion() -> list:
    renames = [WeightRenaming(source, target) for source, target in ORIGINAL_TO_NATIVE_RENAMES]
    split_qkv = WeightConverter(
        source_patterns=r"\.attn\.qkv\.",
        target_patterns=[".attention.q_proj.", ".attention.k_proj.", ".attention.v_proj."],
        operations=[Chunk(dim=0)],
    )
    return [*renames, split_qkv]


register_checkpoint_conversion_mapping(OriginalLayoutInternVL.__name__, _original_layout_conversion(), overwrite=True)


def is_original_layout(config: dict) -> bool:
    return config.get("model_type") == "internvl_chat" or "llm_config" in config


def config_from_original(config: dict, image_token_id: int) -> InternVLConfig:
    """Build the native config from an OpenGVLab `internvl_chat` config.json."""
    vision, llm = config["vision_config"], config["llm_config"]
    if llm.get("model_type", "qwen2") != "qwen2":
        raise OpenUniError(f"only Qwen2-based InternVL3 models are supported, this one has a {llm['model_type']!r} LLM")
    image_size = config.get("force_image_size") or vision["image_size"]
    vision_config = InternVLVisionConfig(
        hidden_size=vision["hidden_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        intermediate_size=vision["intermediate_size"],
        image_size=image_size,
        patch_size=vision["patch_size"],
        attention_bias=vision.get("qkv_bias", True),
        use_qk_norm=vision.get("qk_normalization", False),
        norm_type=vision.get("norm_type", "layer_norm"),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        hidden_act=vision.get("hidden_act", "gelu"),
        use_mean_pooling=True,  # InternViT has no final norm: its last_hidden_state is the last layer's output
    )
    rope = dict(llm.get("rope_scaling") or {"rope_type": "default"})
    rope.pop("type", None)
    rope.setdefault("rope_type", "default")
    rope["rope_theta"] = llm.get("rope_theta", 1_000_000.0)
    text_config = Qwen2Config(
        hidden_size=llm["hidden_size"],
        intermediate_size=llm["intermediate_size"],
        num_hidden_layers=llm["num_hidden_layers"],
        num_attention_heads=llm["num_attention_heads"],
        num_key_value_heads=llm.get("num_key_value_heads", llm["num_attention_heads"]),
        vocab_size=llm["vocab_size"],
        max_position_embeddings=llm.get("max_position_embeddings", 32768),
        rms_norm_eps=llm.get("rms_norm_eps", 1e-6),
        hidden_act=llm.get("hidden_act", "silu"),
        rope_parameters=rope,
        tie_word_embeddings=llm.get("tie_word_embeddings", False),
        bos_token_id=llm.get("bos_token_id"),
        eos_token_id=llm.get("eos_token_id"),
    )
    ratio = config.get("downsample_ratio", 0.5)
    patches_per_side = image_size // vision_config.patch_size[0]
    return InternVLConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=image_token_id,
        image_seq_length=int(patches_per_side**2 * ratio**2),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=config.get("select_layer", -1),
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,  # InternVL3's lm_head is its own
    )


def config_from_geometry(geometry: dict, image_token_id: int = 151667) -> InternVLConfig:
    """A native config from a variant's geometry table (for meta-device instantiation)."""
    vision, llm = geometry["vision"], dict(geometry["llm"])
    original = dict(
        vision_config=vision,
        llm_config=dict(llm, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
        downsample_ratio=geometry["downsample_ratio"],
        force_image_size=vision["image_size"],
    )
    return config_from_original(original, image_token_id)


def read_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise OpenUniError(f"{path} is not an InternVL3 model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OpenUniError(f"{config_file}: unreadable ({reason(error)})") from None
    if not isinstance(config, dict):
        raise OpenUniError(f"{config_file}: expected a JSON object of settings, got a {type(config).__name__}")
    return config


@default_dtype_kept()
def load_mllm(
    path: str | Path, tokenizer, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> InternVLForConditionalGeneration:
    """Load an InternVL3 directory in either layout; the model comes back frozen and in eval mode."""
    path = Path(path)
    raw_config = read_config(path)
    try:
        if is_original_layout(raw_config):
            config = config_from_original(raw_config, tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
            model, info = OriginalLayoutInternVL.from_pretrained(path, config=config, dtype=dtype,
                                                                 output_loading_info=True, ignore_mismatched_sizes=True,
                                                                 trust_remote_code=False)
            # From here on it is an ordinary native model (and saves as one).
            model.__class__ = InternVLForConditionalGeneration
            model._weight_conversions = None
        elif raw_config.get("model_type") == "internvl":
            model, info = InternVLForConditionalGeneration.from_pretrained(
                path, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True, trust_remote_code=False)
        else:
            raise OpenUniError(
                f"{path} holds a {raw_config.get('model_type')!r} model; expected an InternVL3 checkpoint "
                "(OpenGVLab 'internvl_chat' layout or the transformers '-hf' layout)"
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        # missing, truncated or damaged weight files; a config.json lacking settings
        raise OpenUniError(f"cannot load the InternVL3 weights in {path}: {reason(error)}") from None
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda entry: entry[0])
    if mismatched:
        key, stored, expected = mismatched[0]
        raise OpenUniError(f"{path}: weight {key!r} is {tuple(stored)} but config.json makes it {tuple(expected)} "
                           f"({len(mismatched)} tensors differ): the config.json and the weights do not belong "
                           "together")
    model.config.tie_word_embeddings = False
    missing = sorted(info.get("missing_keys", ()))
    if missing == ["lm_head.weight"]:
        # An LLM with tied embeddings ships no lm_head: generation (chat) reads its logits off the embeddings.
        model.lm_head.weight = model.get_input_embeddings().weight
    elif missing:
        raise OpenUniError(f"{path}: the InternVL3 weights lack {missing[0]!r} ({len(missing)} tensors missing); "
                           "is the download complete?")
    return model.to(device).eval().requires_grad_(False)
