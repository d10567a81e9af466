"""The three released variants instantiate with the real geometry (on the meta device: no download, no memory)."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from transformers import InternVLForConditionalGeneration

from openuni.connector import OpenUniConnector
from openuni.internvl import config_from_geometry
from openuni.variants import DC_AE_F32C32, VARIANTS, get_variant


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_components_have_the_published_shapes(name):
    variant = get_variant(name)
    with torch.device("meta"):
        mllm = InternVLForConditionalGeneration(config_from_geometry(variant.mllm_geometry))
        transformer = SanaTransformer2DModel(**variant.transformer_geometry)
        connector = OpenUniConnector(**vars(variant.connector), num_queries=variant.num_queries, caption_channels=2304)
    llm_hidden = mllm.config.text_config.hidden_size
    assert connector.meta_queries.shape == (256, llm_hidden)
    assert connector.projector.weight.shape == (transformer.config.caption_channels, llm_hidden)
    assert len(connector.connector.layers) == 6
    assert connector.connector.layers[0].mlp.fc1.weight.shape == (variant.connector.intermediate_size, llm_hidden)
    assert mllm.config.image_seq_length == 256  # 448 px tile, patch 14, pixel shuffle 0.5
    assert transformer.config.sample_size * 32 == variant.resolution


def test_parameter_counts_match_spec():
    b512 = get_variant("openuni-b-512")
    with torch.device("meta"):
        mllm = InternVLForConditionalGeneration(config_from_geometry(b512.mllm_geometry))
        sana = SanaTransformer2DModel(**b512.transformer_geometry)
    assert round(count(sana) / 1e6, 1) == 591.7
    assert round(count(mllm) / 1e6) == 938
    assert b512.connector.hidden_size == 896 and b512.connector.num_attention_heads == 14
    with torch.device("meta"):
        vae = AutoencoderDC(**DC_AE_F32C32)
    assert round(count(vae) / 1e6) == 312
    assert 2 ** (len(vae.config.encoder_block_out_channels) - 1) == 32


def test_checkpoint_file_names_and_unknown_names():
    variant = get_variant("openuni-l-1024")
    assert variant.checkpoint_filename("finetune") == "openuni_l_internvl3_2b_sana_1_6b_1024_hf_blip3o60k.pth"
    assert variant.checkpoint_filename("pretrain") == "openuni_l_internvl3_2b_sana_1_6b_1024_hf_text2image23m.pth"
    with pytest.raises(ValueError, match="stage"):
        variant.checkpoint_filename("midtrain")
    with pytest.raises(ValueError, match="openuni-b-512"):
        get_variant("openuni-xl")
