"""Model families at full size: parameters per component and LoRA training memory per option. Not a test.

    .venv/bin/python bench/families.py [--measure-cpu] [--cuda]

Targets (issue 14): SD-1.5 LoRA < 8 GB, SDXL LoRA @1024 < 16 GB, FLUX.1 LoRA < 24 GB.

SD-1.5, SDXL base and FLUX.1-dev are built from their published configs (the values of their
``config.json`` files on the hub, written out below) with random weights on the ``meta`` device: nothing is
downloaded and no memory is used. Memory per option is ``gal.families.memory``'s estimate (weights ×
bytes, fp32 LoRA + grads + AdamW state, a transformer-formula activation estimate). ``--measure-cpu``
trains one real SD-1.5 LoRA step at 512 px on this CPU through ``gal.training.train_lora`` (random
weights) and reports s/step and peak RSS. ``--cuda`` runs ``bench/gpu/memory.py`` (every registered family
at full size, per memory option, measured beside this estimate).
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

# The published configs (hub config.json values) live in bench/gpu/fullsize.py, shared with the GPU benches.
from bench.gpu.fullsize import (  # noqa: E402
    CLIP_L,
    FLUX_DEV,
    FLUX_VAE,
    SD15_UNET,
    SDXL_TE2,
    SDXL_UNET,
    T5_XXL,
    VAE_SD,
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--measure-cpu", action="store_true", help="train one real SD-1.5 LoRA step at 512 px on CPU"
    )
    parser.add_argument(
        "--cuda", action="store_true", help="measure every family x option on the GPU (bench/gpu/memory.py)"
    )
    args = parser.parse_args(argv)
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
        from bench.gpu import memory

        sys.exit(memory.main([]))


if __name__ == "__main__":
    main()
