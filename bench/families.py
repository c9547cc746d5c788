"""Model families at full size: parameters per component and LoRA training memory per option. Not a test.

    .venv/bin/python bench/families.py [--measure-cpu] [--cuda]

Targets (issue 14): SD-1.5 LoRA < 8 GB, SDXL LoRA @1024 < 16 GB, FLUX.1 LoRA < 24 GB.

SD-1.5, SDXL base and FLUX.1-dev are built from their published configs (the values of their
``config.json`` files on the hub, written out below) with random weights on the ``meta`` device: nothing is
downloaded and no memory is used. Memory per option is ``gal.families.memory``'s estimate (weights ×
bytes, fp32 LoRA + grads + AdamW state, a transformer-formula activation estimate). ``--measure-cpu``
trains one real SD-1.5 LoRA step at 512 px on this CPU through ``gal.training.train_lora`` (random
weights) and reports s/step and peak RSS. ``--cuda`` (on a GPU) measures peak allocated memory and
s/step per option at 512 and 1024 px with the same code path.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gal import families  # noqa: E402
from gal.families.memory import activations_of, count, lora_params_of, training_bytes  # noqa: E402

GIB = 2**30
TARGETS = {"sd": 8, "sdxl": 16, "flux": 24}  # GB, issue 14

# -- published configs (hub config.json values) ------------------------------------------------------
CLIP_L = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    vocab_size=49408,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)
VAE_SD = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
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
SDXL_TE2 = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    vocab_size=49408,
    max_position_embeddings=77,
    projection_dim=1280,
    hidden_act="gelu",
)
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
FLUX_VAE = dict(VAE_SD, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
T5_XXL = dict(
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_heads=64,
    num_layers=24,
    vocab_size=32128,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
)


def build_meta(name: str) -> dict[str, torch.nn.Module]:
    """The full-size components of a family on the meta device (shapes only)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    with init_empty_weights():
        if name == "sd":
            return {
                "unet": UNet2DConditionModel(**SD15_UNET),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                "vae": AutoencoderKL(**VAE_SD),
            }
        if name == "sdxl":
            return {
                "unet": UNet2DConditionModel(**SDXL_UNET),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TE2)),
                "vae": AutoencoderKL(**VAE_SD),
            }
        t5 = T5EncoderModel(T5Config(**T5_XXL))
        parts = {
            "transformer": FluxTransformer2DModel(**FLUX_DEV),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            "text_encoder_2": t5,
            "vae": AutoencoderKL(**FLUX_VAE),
        }
    # Tied in the checkpoint; a config build leaves a copy (tied outside init_empty_weights,
    # which re-wraps it).
    t5.encoder.embed_tokens.weight = t5.shared.weight
    return parts


OPTIONS = [  # cumulative, in the order the memory advice suggests them
    ("fp32 base, fp32 LoRA", dict(base="fp32")),
    ("bf16 base + fp32 LoRA", dict(base="bf16")),
    ("+ gradient checkpointing", dict(base="bf16", gradient_checkpointing=True)),
    ("+ text encoders offloaded", dict(base="bf16", gradient_checkpointing=True, offload_text_encoders=True)),
    (
        "+ 8-bit AdamW",
        dict(base="bf16", gradient_checkpointing=True, offload_text_encoders=True, optimizer="adamw8bit"),
    ),
    (
        "+ int8 base (torchao)",
        dict(
            base="bf16",
            gradient_checkpointing=True,
            offload_text_encoders=True,
            optimizer="adamw8bit",
            quantize_base="int8",
        ),
    ),
    (
        "+ nf4 base (estimate only)",
        dict(
            base="bf16",
            gradient_checkpointing=True,
            offload_text_encoders=True,
            optimizer="adamw8bit",
            quantize_base="nf4",
        ),
    ),
]


def estimate_table(resolutions: dict[str, list[int]]) -> list[str]:
    lines = []
    for name in ("sd", "sdxl", "flux"):
        family = families.get(name)
        parts = build_meta(name)
        denoiser = parts[family.denoiser_name]
        tes = [m for k, m in parts.items() if k.startswith("text_encoder")]
        rank = family.defaults.rank
        lora = lora_params_of(denoiser, family.defaults.target_modules, rank)
        counts = ", ".join(f"{k} {count(m) / 1e6:,.0f} M" for k, m in parts.items())
        lines += [
            "",
            f"## {family.label} — {counts}; LoRA rank {rank} on {len(family.defaults.target_modules)} "
            f"module kinds: {lora / 1e6:.1f} M params. Target < {TARGETS[name]} GB",
            "",
            "| option | " + " | ".join(f"{r} px (GB)" for r in resolutions[name]) + " |",
            "|---|" + "---|" * len(resolutions[name]),
        ]
        vae_scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
        for label, opts in OPTIONS:
            cells = []
            for res in resolutions[name]:
                full, ckpt = activations_of(family, denoiser, res, 1, vae_scale)
                need = training_bytes(
                    denoiser_params=count(denoiser),
                    text_encoder_params=sum(map(count, tes)),
                    vae_params=count(parts["vae"]),
                    lora_params=lora,
                    activations_16bit=full,
                    activations_ckpt_16bit=ckpt,
                    **opts,
                )
                ok = "✓" if need["total"] / 1e9 < TARGETS[name] else " "
                cells.append(f"{need['total'] / 1e9:.1f} {ok}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def measure_sd15_cpu_step(steps: int = 2) -> str:
    """One real SD-1.5 LoRA training step at 512 px on this CPU (random weights), through train_lora."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModel

    from gal.config import TrainConfig
    from gal.models import clip_tokenizer
    from gal.training import TrainExample, train_lora

    torch.manual_seed(0)
    started = time.perf_counter()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**VAE_SD),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)).eval(),
        tokenizer=clip_tokenizer(),
        unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    built = time.perf_counter() - started
    image = Image.new("RGB", (512, 512), (120, 80, 200))
    stamps = []
    train_lora(
        pipe,
        [TrainExample(image, "a <sks> star", 1.0)],
        TrainConfig(steps=steps),
        resolution=512,
        seed=0,
        progress=lambda s, n, loss: stamps.append(time.perf_counter()),
    )
    per_step = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return (
        f"SD-1.5 LoRA (rank 8, fp32, batch 1) at 512 px on CPU ({torch.get_num_threads()} threads): "
        f"{per_step:.1f} s/step, peak RSS {rss:.1f} GiB (build {built:.0f} s)"
    )


def measure_cuda(resolutions=(512, 1024)) -> list[str]:  # pragma: no cover - needs a GPU
    """Peak allocated memory and s/step per option for SD-1.5 / SDXL / FLUX.1 on CUDA (random weights)."""
    from PIL import Image

    from gal.config import TrainConfig
    from gal.training import TrainExample, train_lora

    lines = ["| family | px | option | peak GB | s/step |", "|---|---|---|---|---|"]
    for name in ("sd", "sdxl", "flux"):
        for label, opts in OPTIONS[1:6]:
            for res in resolutions:
                pipe = build_real(name, torch.bfloat16)
                torch.cuda.reset_peak_memory_stats()
                cfg = TrainConfig(
                    steps=3,
                    gradient_checkpointing=opts.get("gradient_checkpointing", False),
                    offload_text_encoders=opts.get("offload_text_encoders", False),
                    optimizer=opts.get("optimizer", "adamw"),
                    quantize_base=opts.get("quantize_base"),
                )
                stamps = []
                try:
                    train_lora(
                        pipe,
                        [TrainExample(Image.new("RGB", (res, res)), "a <sks> star", 1.0)],
                        cfg,
                        resolution=res,
                        seed=0,
                        progress=lambda s, n, loss, stamps=stamps: stamps.append(time.perf_counter()),
                    )
                    peak = torch.cuda.max_memory_allocated() / 1e9
                    lines.append(
                        f"| {name} | {res} | {label} | {peak:.1f} | {(stamps[-1] - stamps[0]) / 2:.2f} |"
                    )
                except (torch.cuda.OutOfMemoryError, ValueError) as err:
                    lines.append(f"| {name} | {res} | {label} | OOM/refused: {str(err)[:60]} | – |")
                del pipe
                torch.cuda.empty_cache()
    return lines


def build_real(name: str, dtype):  # pragma: no cover - needs a GPU
    """Full-size random-weight pipeline on CUDA (tokenizers offline)."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from gal.families.flux import t5_tokenizer
    from gal.models import clip_tokenizer

    with torch.device("cuda"):
        te = CLIPTextModel(CLIPTextConfig(**CLIP_L)).to(dtype).eval()
        sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        if name == "sd":
            return StableDiffusionPipeline(
                vae=AutoencoderKL(**VAE_SD).to(dtype),
                text_encoder=te,
                tokenizer=clip_tokenizer(),
                unet=UNet2DConditionModel(**SD15_UNET).to(dtype),
                scheduler=sched,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        if name == "sdxl":
            return StableDiffusionXLPipeline(
                vae=AutoencoderKL(**VAE_SD).to(dtype),
                text_encoder=te,
                text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TE2)).to(dtype).eval(),
                tokenizer=clip_tokenizer(),
                tokenizer_2=clip_tokenizer(),
                unet=UNet2DConditionModel(**SDXL_UNET).to(dtype),
                scheduler=sched,
                add_watermarker=False,
            )
        t5 = T5EncoderModel(T5Config(**dict(T5_XXL, vocab_size=len(t5_tokenizer(512))))).to(dtype).eval()
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
            vae=AutoencoderKL(**FLUX_VAE).to(dtype),
            text_encoder=te,
            tokenizer=clip_tokenizer(),
            text_encoder_2=t5,
            tokenizer_2=t5_tokenizer(512),
            transformer=FluxTransformer2DModel(**FLUX_DEV).to(dtype),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--measure-cpu", action="store_true", help="train one real SD-1.5 LoRA step at 512 px on CPU"
    )
    parser.add_argument("--cuda", action="store_true", help="measure every option on the GPU")
    args = parser.parse_args()
    print(
        "# LoRA training memory per option (estimate; ✓ = under the issue-14 target: "
        "SD-1.5 < 8 GB, SDXL @1024 < 16 GB, FLUX.1 < 24 GB)"
    )
    print("\n".join(estimate_table({"sd": [512], "sdxl": [1024], "flux": [512, 1024]})))
    print()
    print(f"CUDA: {'available' if torch.cuda.is_available() else 'not available in this session'}")
    if args.measure_cpu:
        print(measure_sd15_cpu_step())
    if args.cuda:
        print("\n".join(measure_cuda()))


if __name__ == "__main__":
    main()
