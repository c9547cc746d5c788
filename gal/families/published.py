"""The full-size published configs of every family (the ``config.json`` values of the released checkpoints),
and the parameter totals their publishers state, for the meta-device memory table and its test.

``parts(family, variant)`` builds a family's full-size components on the ``meta`` device (shapes only:
nothing is downloaded, no memory is used). ``PUBLISHED`` holds, per (family, variant), the totals the
model cards / papers state, in parameters, with where they are stated; tests/test_fullsize_configs.py
checks the built models against them (``TOLERANCE``: the published figures are rounded, e.g. "6B").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gal.families.encoder_configs import (  # noqa: F401  (re-exported: the benches import them from here)
    CLIP_G,
    CLIP_L,
    GEMMA2_2B,
    LLAMA31_8B,
    MISTRAL_SMALL_TEXT,
    PIXTRAL_VISION,
    QWEN3_4B,
    QWEN3_8B,
    QWEN3_VL_4B_TEXT,
    QWEN3_VL_4B_VISION,
    QWEN3_VL_8B_TEXT,
    QWEN3_VL_8B_VISION,
    QWEN25_VL_7B_TEXT,
    QWEN25_VL_7B_VISION,
    T5_XXL,
)

# The published figures are rounded to one or two significant digits ("6B", "2.6B", "8.9B"): a built
# model within 10 % of the figure is the published model; a wrong width or depth misses by far more.
TOLERANCE = 0.10

# -- VAEs ----------------------------------------------------------------------------------------------
# FLUX.1's 16-channel VAE (also SD3.5's, Z-Image's, Chroma's and Lumina 2's)
FLUX1_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    use_quant_conv=False,
    use_post_quant_conv=False,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)

# -- denoisers -----------------------------------------------------------------------------------------
SD35_LARGE = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=4096,
    caption_projection_dim=2432,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)
SD35_MEDIUM = dict(
    SD35_LARGE,
    num_layers=24,
    num_attention_heads=24,
    caption_projection_dim=1536,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
)
ZIMAGE_TRANSFORMER = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=3840,
    n_layers=30,
    n_refiner_layers=2,
    n_heads=30,
    n_kv_heads=30,
    qk_norm=True,
    cap_feat_dim=2560,
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=[32, 48, 48],
    axes_lens=[1536, 512, 512],
)
FLUX2_VARIANTS = {
    "klein-4b": dict(
        num_layers=5,
        num_single_layers=20,
        num_attention_heads=24,
        joint_attention_dim=7680,
        guidance_embeds=False,
    ),
    "klein-9b": dict(
        num_layers=8,
        num_single_layers=24,
        num_attention_heads=32,
        joint_attention_dim=12288,
        guidance_embeds=False,
    ),
    "dev": dict(
        num_layers=8,
        num_single_layers=48,
        num_attention_heads=48,
        joint_attention_dim=15360,
        guidance_embeds=True,
    ),
}
QWEN_IMAGE = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=60,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)
CHROMA = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    axes_dims_rope=(16, 56, 56),
    approximator_num_channels=64,
    approximator_hidden_dim=5120,
    approximator_layers=5,
)
KREA2 = dict(
    in_channels=64,
    num_layers=28,
    attention_head_dim=128,
    num_attention_heads=48,
    num_key_value_heads=12,
    intermediate_size=16384,
    text_hidden_dim=2560,
    num_text_layers=12,
)  # diffusers' defaults
LUMINA2 = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    hidden_size=2304,
    num_layers=26,
    num_refiner_layers=2,
    num_attention_heads=24,
    num_kv_heads=8,
    multiple_of=256,
    norm_eps=1e-5,
    scaling_factor=1.0,
    axes_dim_rope=(32, 32, 32),
    axes_lens=(300, 512, 512),
    cap_feat_dim=2304,
)

# Efficient-Large-Model/Sana_1600M_1024px_diffusers: SanaTransformer2DModel's defaults are this config
SANA_1600M = dict(
    in_channels=32,
    out_channels=32,
    num_attention_heads=70,
    attention_head_dim=32,
    num_layers=20,
    num_cross_attention_heads=20,
    cross_attention_head_dim=112,
    cross_attention_dim=2240,
    caption_channels=2304,
    mlp_ratio=2.5,
    sample_size=32,
    patch_size=1,
)
# ideogram-ai/ideogram-4 transformer (and its unconditional twin): Ideogram4Transformer2DModel's defaults are
# this config (34 layers, 18 heads x 256, 13 x 4096 = 53248 text features)
IDEOGRAM4 = dict(
    in_channels=128,
    num_layers=34,
    attention_head_dim=256,
    num_attention_heads=18,
    intermediate_size=12288,
    adaln_dim=512,
    llm_features_dim=53248,
    rope_theta=5_000_000,
    mrope_section=(24, 20, 20),
)
# HiDream-ai/HiDream-I1-Full (-Dev, -Fast: the same transformer config): transformer/config.json, the values
# ComfyUI's model_detection also sets for HiDream; its CLIP-L/G are long CLIPs (248 positions)
HIDREAM_I1 = dict(
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=16,
    num_single_layers=32,
    attention_head_dim=128,
    num_attention_heads=20,
    caption_channels=[4096, 4096],
    text_emb_dim=2048,
    num_routed_experts=4,
    num_activated_experts=2,
    axes_dims_rope=(64, 32, 32),
    max_resolution=(128, 128),
    llama_layers=list(range(32)) + [31] * 16,
)
# mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers (Sana's 32x, 32-channel DC-AE)
DC_AE_F32C32 = dict(
    in_channels=3,
    latent_channels=32,
    attention_head_dim=32,
    encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
    decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    upsample_block_type="interpolate",
    downsample_block_type="Conv",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.41407,
)


@dataclass(frozen=True)
class Published:
    """What a model's publisher states: parameters per component (None: not stated) and where."""

    denoiser: float | None
    text_encoders: float | None
    source: str
    tolerance: float = TOLERANCE


B = 1e9
PUBLISHED: dict[tuple[str, str], Published] = {
    ("sd3", "large"): Published(8.1 * B, None, "stabilityai/stable-diffusion-3.5-large card: 8.1B MMDiT"),
    # the card says 2.5B; its transformer checkpoint (the config below) holds 2.24B: 10.4 % under
    ("sd3", "medium"): Published(
        2.5 * B, None, "stabilityai/stable-diffusion-3.5-medium card: 2.5B MMDiT-X", 0.12
    ),
    ("zimage", ""): Published(6 * B, 4.0 * B, "Tongyi-MAI/Z-Image card: 6B; Qwen/Qwen3-4B: 4.0B"),
    ("flux2", "klein-4b"): Published(4 * B, 4.0 * B, "black-forest-labs/FLUX.2-klein-4B: 4B; Qwen3-4B"),
    ("flux2", "klein-9b"): Published(9 * B, 8.2 * B, "black-forest-labs/FLUX.2-klein-9B: 9B; Qwen3-8B: 8.2B"),
    ("flux2", "dev"): Published(32 * B, 24 * B, "black-forest-labs/FLUX.2-dev: 32B; Mistral Small 3.1: 24B"),
    ("qwenimage", ""): Published(20 * B, 8.3 * B, "Qwen/Qwen-Image: 20B MMDiT; Qwen2.5-VL-7B: 8.29B"),
    ("chroma", ""): Published(8.9 * B, 4.7 * B, "lodestones/Chroma: 8.9B; T5-XXL encoder 4.7B"),
    ("krea2", ""): Published(None, 4.4 * B, "no published size for Krea 2's transformer; Qwen3-VL-4B: 4.4B"),
    ("lumina2", ""): Published(
        2.6 * B, 2.6 * B, "Alpha-VLLM/Lumina-Image-2.0: 2.6B; google/gemma-2-2b: 2.6B"
    ),
    ("sana", ""): Published(
        1.6 * B, 2.6 * B, "Efficient-Large-Model/Sana_1600M_1024px: 1.6B; google/gemma-2-2b: 2.6B"
    ),
    # "text" here: Qwen3-VL-8B (8.8B with its 0.62B LM head, which the pipeline does not load: 8.2B) and
    # the unconditional transformer (the same 9.3B config): the frozen parts Ideogram4Family.text_encoders
    # offloads
    ("ideogram4", ""): Published(
        9.3 * B,
        (8.8 - 0.62 + 9.3) * B,
        "ideogram-oss/ideogram4 README: 9.3B DiT (+ an unconditional twin); Qwen/Qwen3-VL-8B-Instruct: 8.8B",
    ),
    ("hidream", ""): Published(
        17 * B,
        13.5 * B,
        "HiDream-ai/HiDream-I1-Full: 17B; Llama-3.1-8B 8.03B + T5-XXL enc. 4.7B + CLIP-L/G 0.12B/0.69B",
    ),
}
VARIANTS = {"sd3": ("large", "medium"), "flux2": tuple(FLUX2_VARIANTS)}


def parts(family: str, variant: str = "") -> dict[str, torch.nn.Module]:
    """The full-size components of ``family`` (``variant`` for SD3.5 and FLUX.2) on the meta device:
    ``transformer``, ``text_encoder*``, ``vae``. Tied embeddings are tied again (``init_empty_weights``
    leaves T5's and Qwen3-4B's input/output embeddings as two tensors: +0.13 B / +0.39 B)."""
    built = _parts(family, variant)
    for module in built.values():
        if hasattr(module, "tie_weights"):
            module.tie_weights()
    return built


def _parts(family: str, variant: str) -> dict[str, torch.nn.Module]:
    import diffusers
    import transformers as tf
    from accelerate import init_empty_weights

    variant = variant or (VARIANTS.get(family) or ("",))[0]
    if (family, variant) not in PUBLISHED:
        raise ValueError(f"no published full-size config for {family!r} variant {variant!r}")
    # buffers on the meta device too: SD3.5's positional table alone takes ~20 s to compute for real
    with init_empty_weights(include_buffers=True):
        if family == "sd3":
            denoiser = diffusers.SD3Transformer2DModel(**(SD35_LARGE if variant == "large" else SD35_MEDIUM))
            return {
                "transformer": denoiser,
                "text_encoder": tf.CLIPTextModelWithProjection(tf.CLIPTextConfig(**CLIP_L)),
                "text_encoder_2": tf.CLIPTextModelWithProjection(tf.CLIPTextConfig(**CLIP_G)),
                "text_encoder_3": tf.T5EncoderModel(tf.T5Config(**T5_XXL)),
                "vae": diffusers.AutoencoderKL(**FLUX1_VAE),
            }
        if family == "zimage":
            return {
                "transformer": diffusers.ZImageTransformer2DModel(**ZIMAGE_TRANSFORMER),
                "text_encoder": tf.Qwen3Model(tf.Qwen3Config(**QWEN3_4B)),
                "vae": diffusers.AutoencoderKL(**FLUX1_VAE),
            }
        if family == "flux2":
            if variant == "dev":
                text_encoder = tf.Mistral3ForConditionalGeneration(
                    tf.Mistral3Config(
                        text_config=tf.MistralConfig(**MISTRAL_SMALL_TEXT),
                        vision_config=tf.PixtralVisionConfig(**PIXTRAL_VISION),
                        tie_word_embeddings=False,  # Mistral Small's lm_head is its own (0.67 B)
                    )
                )
            else:
                text_encoder = tf.Qwen3ForCausalLM(
                    tf.Qwen3Config(**(QWEN3_4B if variant == "klein-4b" else QWEN3_8B))
                )
            return {
                "transformer": diffusers.Flux2Transformer2DModel(**FLUX2_VARIANTS[variant]),
                "text_encoder": text_encoder,
                "vae": diffusers.AutoencoderKLFlux2(),
            }
        if family == "qwenimage":
            config = tf.Qwen2_5_VLConfig(text_config=QWEN25_VL_7B_TEXT, vision_config=QWEN25_VL_7B_VISION)
            return {
                "transformer": diffusers.QwenImageTransformer2DModel(**QWEN_IMAGE),
                "text_encoder": tf.Qwen2_5_VLForConditionalGeneration(config),
                "vae": diffusers.AutoencoderKLQwenImage(),
            }
        if family == "chroma":
            return {
                "transformer": diffusers.ChromaTransformer2DModel(**CHROMA),
                "text_encoder": tf.T5EncoderModel(tf.T5Config(**T5_XXL)),
                "vae": diffusers.AutoencoderKL(**FLUX1_VAE),
            }
        if family == "krea2":
            config = tf.Qwen3VLConfig(text_config=QWEN3_VL_4B_TEXT, vision_config=QWEN3_VL_4B_VISION)
            return {
                "transformer": diffusers.Krea2Transformer2DModel(**KREA2),
                "text_encoder": tf.Qwen3VLModel(config),
                "vae": diffusers.AutoencoderKLQwenImage(),
            }
        if family == "lumina2":
            return {
                "transformer": diffusers.Lumina2Transformer2DModel(**LUMINA2),
                "text_encoder": tf.Gemma2Model(tf.Gemma2Config(**GEMMA2_2B)),
                "vae": diffusers.AutoencoderKL(**FLUX1_VAE),
            }
        if family == "sana":
            return {
                "transformer": diffusers.SanaTransformer2DModel(**SANA_1600M),
                "text_encoder": tf.Gemma2Model(tf.Gemma2Config(**GEMMA2_2B)),
                "vae": diffusers.AutoencoderDC(**DC_AE_F32C32),
            }
        if family == "ideogram4":
            config = tf.Qwen3VLConfig(text_config=QWEN3_VL_8B_TEXT, vision_config=QWEN3_VL_8B_VISION)
            return {
                "transformer": diffusers.Ideogram4Transformer2DModel(**IDEOGRAM4),
                "text_encoder": tf.Qwen3VLModel(config),
                # the unconditional transformer: frozen, offloaded with the text encoder (the family's
                # text_encoders), so the memory table counts it where it lives
                "text_encoder_2": diffusers.Ideogram4Transformer2DModel(**IDEOGRAM4),
                "vae": diffusers.AutoencoderKLFlux2(),
            }
        if family == "hidream":
            return {
                "transformer": diffusers.HiDreamImageTransformer2DModel(**HIDREAM_I1),
                "text_encoder": tf.CLIPTextModelWithProjection(
                    tf.CLIPTextConfig(**{**CLIP_L, "max_position_embeddings": 248})
                ),
                "text_encoder_2": tf.CLIPTextModelWithProjection(
                    tf.CLIPTextConfig(**{**CLIP_G, "max_position_embeddings": 248})
                ),
                "text_encoder_3": tf.T5EncoderModel(tf.T5Config(**T5_XXL)),
                "text_encoder_4": tf.LlamaForCausalLM(tf.LlamaConfig(**LLAMA31_8B)),
                "vae": diffusers.AutoencoderKL(**FLUX1_VAE),
            }
    raise AssertionError(family)
