"""Full-size pipelines with random weights, built from the published ``config.json`` values, for benches.

Nothing is downloaded. ``build(family, device, dtype)`` builds a registered family at full size directly
in ``dtype`` on ``device`` (``common.built_directly``: no fp32 transient). A family can carry its own
full-size builder as ``family.build_full(device, dtype)``; the ones below cover SD-1.5, SDXL and FLUX.1.
A family with neither is reported as "no full-size config" (``FullSizeMissing``), never skipped silently.
``--cpu-smoke`` builds ``family.build_tiny()`` instead: the same bench code on tiny models.
"""

from __future__ import annotations

import torch

from bench.gpu.common import built_directly
from gal.families.published import CLIP_G, CLIP_L, T5_XXL  # noqa: F401  (shared with the memory table)

# -- published configs (hub config.json values) ------------------------------------------------------
VAE_SD = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
VAE_SDXL = dict(VAE_SD, scaling_factor=0.13025)
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_TE2 = CLIP_G  # OpenCLIP bigG: SDXL's second encoder, SD3.5's too
FLUX_DEV = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
# FLUX.1's VAE (black-forest-labs/FLUX.1-dev vae/config.json): 16 latent channels, no quant convs, and the
# shift the pipeline subtracts before scaling (without shift_factor, FluxPipeline's decode raises).
FLUX_VAE = dict(
    VAE_SD,
    latent_channels=16,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=0.3611,
    shift_factor=0.1159,
)
NATIVE = {"sd": 512, "sdxl": 1024, "flux": 1024}  # published native resolution per family


class FullSizeMissing(LookupError):
    """The family has no full-size config here (neither ``family.build_full`` nor one below)."""


def native_resolution(family) -> int:
    return int(NATIVE.get(family.name) or family.defaults.resolution)


def has_full_size(family) -> bool:
    return hasattr(family, "build_full") or family.name in _BUILDERS


def build(family, device: torch.device, dtype: torch.dtype, *, smoke: bool = False):
    """The family's pipeline: full size in ``dtype`` on ``device``, or its tiny model when ``smoke``."""
    if smoke:
        pipe = family.build_tiny()
        pipe.to(device=device, dtype=dtype)
    elif hasattr(family, "build_full"):
        pipe = family.build_full(device, dtype)
    elif family.name in _BUILDERS:
        torch.manual_seed(0)
        pipe = _BUILDERS[family.name](device, dtype)
    else:
        raise FullSizeMissing(
            f"{family.label}: no full-size config (give the family a build_full(device, dtype) method)"
        )
    for encoder in family.text_encoders(pipe):
        encoder.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd(device, dtype):
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from gal.models import clip_tokenizer

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    tokenizer = clip_tokenizer()
    with built_directly(device, dtype):
        parts = dict(
            vae=AutoencoderKL(**VAE_SD),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            unet=UNet2DConditionModel(**SD15_UNET),
        )
    return StableDiffusionPipeline(
        **parts,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(device, dtype):
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from gal.models import clip_tokenizer

    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    tokenizer_2.pad_token = "!"  # real SDXL's second tokenizer pads with "!" (id 0)
    with built_directly(device, dtype):
        parts = dict(
            vae=AutoencoderKL(**VAE_SDXL),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TE2)),
            unet=UNet2DConditionModel(**SDXL_UNET),
        )
    return StableDiffusionXLPipeline(
        **parts, tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler, add_watermarker=False
    )


def _flux(device, dtype):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from gal.families.flux import t5_tokenizer
    from gal.models import clip_tokenizer

    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer(512)
    with built_directly(device, dtype):
        t5 = T5EncoderModel(T5Config(**dict(T5_XXL, vocab_size=len(tokenizer_2))))
        parts = dict(
            vae=AutoencoderKL(**FLUX_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            text_encoder_2=t5,
            transformer=FluxTransformer2DModel(**FLUX_DEV),
        )
    return FluxPipeline(**parts, tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler)


_BUILDERS = {"sd": _sd, "sdxl": _sdxl, "flux": _flux}
