"""The released OpenUni variants, as data: where each component lives and how big it is."""

from __future__ import annotations

from dataclasses import dataclass, field

RELEASE_REPO = "wusize/openuni"
VAE_REPO = "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers"
STAGES = ("finetune", "pretrain")

# The SANA repos' sampling scheduler (SPEC "Real component geometry"); the training scheduler is read from it too.
SANA_SCHEDULER_CONFIG = dict(
    algorithm_type="dpmsolver++",
    beta_end=0.02,
    beta_schedule="linear",
    beta_start=0.0001,
    final_sigmas_type="zero",
    flow_shift=3.0,
    lower_order_final=True,
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    solver_order=2,
    solver_type="midpoint",
    timestep_spacing="linspace",
    use_flow_sigmas=True,
)


@dataclass(frozen=True)
class ConnectorGeometry:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int


@dataclass(frozen=True)
class Variant:
    name: str
    mllm_repo: str  # original OpenGVLab layout; the "-hf" repo of the same name is accepted too
    transformer_repo: str  # a diffusers SANA repo: transformer/ and scheduler/ subfolders
    checkpoint_stem: str  # release file = f"{checkpoint_stem}_{text2image23m|blip3o60k}.pth"
    resolution: int
    connector: ConnectorGeometry
    # Geometry of the real components, for meta-device instantiation (no download needed).
    mllm_geometry: dict = field(repr=False)
    transformer_geometry: dict = field(repr=False)
    vae_repo: str = VAE_REPO
    num_queries: int = 256

    def checkpoint_filename(self, stage: str = "finetune") -> str:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        suffix = "blip3o60k" if stage == "finetune" else "text2image23m"
        return f"{self.checkpoint_stem}_{suffix}.pth"


INTERN_VIT_300M = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    image_size=448,
    patch_size=14,
    qkv_bias=True,
    qk_normalization=False,
    norm_type="layer_norm",
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)

QWEN25_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151674,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
)

QWEN25_15B = dict(QWEN25_05B, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, intermediate_size=8960)

SANA_COMMON = dict(
    in_channels=32,
    out_channels=32,
    caption_channels=2304,
    mlp_ratio=2.5,
    patch_size=1,
    attention_bias=False,
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    interpolation_scale=None,
    qk_norm=None,
)

SANA_600M_512 = dict(
    SANA_COMMON,
    num_layers=28,
    num_attention_heads=36,
    attention_head_dim=32,
    num_cross_attention_heads=16,
    cross_attention_head_dim=72,
    cross_attention_dim=1152,
    sample_size=16,
)

SANA_1600M_512 = dict(
    SANA_COMMON,
    num_layers=20,
    num_attention_heads=70,
    attention_head_dim=32,
    num_cross_attention_heads=20,
    cross_attention_head_dim=112,
    cross_attention_dim=2240,
    sample_size=16,
)

SANA15_1600M_1024 = dict(SANA_1600M_512, sample_size=32, qk_norm="rms_norm_across_heads")

# mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers (312M parameters), shared by all variants.
DC_AE_F32C32 = dict(
    in_channels=3,
    latent_channels=32,
    attention_head_dim=32,
    encoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    decoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    encoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
    decoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
    encoder_layers_per_block=[2, 2, 2, 3, 3, 3],
    decoder_layers_per_block=[3, 3, 3, 3, 3, 3],
    encoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    downsample_block_type="Conv",
    upsample_block_type="interpolate",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.41407,
)


def _mllm(llm: dict) -> dict:
    return dict(vision=INTERN_VIT_300M, llm=llm, downsample_ratio=0.5)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="openuni-b-512",
            mllm_repo="OpenGVLab/InternVL3-1B",
            transformer_repo="Efficient-Large-Model/Sana_600M_512px_diffusers",
            checkpoint_stem="openuni_b_internvl3_1b_sana_0_6b_512_hf",
            resolution=512,
            connector=ConnectorGeometry(896, 3072, 6, 14),
            mllm_geometry=_mllm(QWEN25_05B),
            transformer_geometry=SANA_600M_512,
        ),
        Variant(
            name="openuni-l-512",
            mllm_repo="OpenGVLab/InternVL3-2B",
            transformer_repo="Efficient-Large-Model/Sana_1600M_512px_diffusers",
            checkpoint_stem="openuni_l_internvl3_2b_sana_1_6b_512_hf",
            resolution=512,
            connector=ConnectorGeometry(1536, 8960, 6, 24),
            mllm_geometry=_mllm(QWEN25_15B),
            transformer_geometry=SANA_1600M_512,
        ),
        Variant(
            name="openuni-l-1024",
            mllm_repo="OpenGVLab/InternVL3-2B",
            transformer_repo="Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers",
            checkpoint_stem="openuni_l_internvl3_2b_sana_1_6b_1024_hf",
            resolution=1024,
            connector=ConnectorGeometry(1536, 8960, 6, 24),
            mllm_geometry=_mllm(QWEN25_15B),
            transformer_geometry=SANA15_1600M_1024,
        ),
    )
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}") from None
