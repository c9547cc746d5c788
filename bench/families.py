"""Model families at full size: parameters per component and LoRA training memory per option. Not a test.

    .venv/bin/python bench/families.py [--measure-cpu] [--cuda]

Targets (issue 14): SD-1.5 LoRA < 8 GB, SDXL LoRA @1024 < 16 GB, FLUX.1 LoRA < 24 GB.

Every registered family, one row each (FLUX.2 per variant): the family's own full-size parts
(``Family.meta_parts``; SD-1.5, SDXL base and FLUX.1-dev from the published configs in
bench/gpu/fullsize.py) on the ``meta`` device: nothing is downloaded and no memory is used. Families without
a full-size config say so. The "24 GB preset" columns are ``Family.preset_24gb`` as training applies it on
CUDA. Memory per option is ``gal.families.memory``'s estimate (weights ×
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
from gal.families.memory import activations_of, count, lora_params_of, swap_count, training_bytes  # noqa: E402

GIB = 2**30

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


ROWS = (  # label, family, meta_parts variant, the peers' published LoRA figures (issue 22; GB)
    ("SD-1.5", "sd", "", "target < 8 (issue 14)"),
    ("SDXL base", "sdxl", "", "target < 16 (issue 14)"),
    ("FLUX.1-dev", "flux", "", "target < 24 (issue 14)"),
    ("SD3.5 Large", "sd3", "large", "—"),
    ("SD3.5 Medium", "sd3", "medium", "—"),
    ("Z-Image", "zimage", "", "32-40 bf16 / 16-24 int8 / 10-12 nf4"),
    ("FLUX.2 klein 4B", "flux2", "klein-4b", "~12 bf16 / 8 int8"),
    ("FLUX.2 klein 9B", "flux2", "klein-9b", "~22 bf16 / 14 int8"),
    ("FLUX.2 dev", "flux2", "dev", "~40 all-int8"),
    ("Qwen-Image", "qwenimage", "", "42 bf16 / 30 fp8 / 24 +16 swapped / 12 +45 swapped"),
    ("Chroma", "chroma", "", "~28 bf16 / 16 int8 / 11 int4 / 8 nf4"),
    ("Krea 2", "krea2", "", "—"),
)
CARD_FREE = 23 * GIB  # what a 24 GB card leaves a run (CUDA context, display): the preset's sized swap
SWAP = 16  # the block-swap column: int8 base + this many blocks on the CPU (as Qwen-Image's peers)
OPTIONS = [  # cumulative, in the order the memory advice suggests them
    ("bf16", dict(base="bf16")),
    ("+ ckpt", dict(gradient_checkpointing=True)),
    ("+ TE off", dict(offload_text_encoders=True)),
    ("+ 8-bit AdamW", dict(optimizer="adamw8bit")),
    ("+ int8 base", dict(quantize_base="int8")),
    (f"+ {SWAP} swapped", dict(blocks_to_swap=SWAP)),
]


def meta_parts(name: str, variant: str) -> dict[str, torch.nn.Module] | None:
    """The family's own full-size parts (``Family.meta_parts``); SD-1.5/SDXL/FLUX.1 from the configs in
    bench/gpu/fullsize.py; None where there is no full-size config."""
    family = families.get(name)
    try:
        return family.meta_parts(variant) if variant else family.meta_parts()
    except NotImplementedError:
        return build_meta(name) if name in ("sd", "sdxl", "flux") else None


def preset_options(family) -> dict:
    """The family's 24 GB preset as training resolves it on CUDA (``resolve_memory`` + ``flag``)."""
    from gal.config import TrainConfig
    from gal.families.base import flag, resolve_memory

    cuda = torch.device("cuda")
    cfg = resolve_memory(TrainConfig(), family, cuda)
    d = family.defaults
    return dict(
        base="bf16",
        quantize_base=cfg.quantize_base,
        blocks_to_swap=cfg.blocks_to_swap,
        optimizer=cfg.optimizer,
        offload_text_encoders=flag(cfg.offload_text_encoders, d.offload_text_encoders, cuda),
        gradient_checkpointing=cfg.blocks_to_swap > 0
        or flag(cfg.gradient_checkpointing, d.gradient_checkpointing, cuda),
    )


def estimate_table() -> list[str]:
    """One row per family (and FLUX.2 variant): parameters per component and GiB per cumulative option."""
    from gal.blockswap import swappable_blocks
    from gal.families.base import describe_preset

    lines = [
        "LoRA at the family's default rank and native resolution, batch 1; GiB, estimate (±30 %).",
        f"Options are cumulative left to right; '+ {SWAP} swapped' keeps {SWAP} transformer blocks on CPU.",
        f"24 GB preset: the family's preset; where it is over {CARD_FREE / GIB:.0f} GiB (a 24 GB card's free "
        "memory), the blocks_to_swap training sizes when it is left empty.",
        "",
        "| model | px | denoiser | text enc. | VAE | "
        + " | ".join(label for label, _ in OPTIONS)
        + " | 24 GB preset | preset GiB | peers (GB) |",
        "|---|---|---|---|---|" + "---|" * len(OPTIONS) + "---|---|---|",
    ]
    seen = {row[1] for row in ROWS}
    rows = list(ROWS) + [(families.get(n).label, n, "", "—") for n in families.FAMILIES if n not in seen]
    for label, name, variant, peers in rows:
        family = families.get(name)
        recipe = describe_preset(family.preset_24gb)
        parts = meta_parts(name, variant)
        if parts is None:
            blanks = " | ".join("—" for _ in OPTIONS)
            lines.append(f"| {label} | — | no full-size config | — | — | {blanks} | {recipe} | — | {peers} |")
            continue
        denoiser = parts[family.denoiser_name]
        tes = [m for k, m in parts.items() if k.startswith("text_encoder")]
        res = 512 if name == "sd" else 1024
        vae = parts["vae"]  # the Qwen-Image VAE (Wan-style) has no block_out_channels: 8x by its downsamples
        vae_scale = getattr(vae, "spatial_compression_ratio", None) or 2 ** (
            len(vae.config.block_out_channels) - 1
        )
        full, ckpt = activations_of(family, denoiser, res, 1, vae_scale)
        blocks = swappable_blocks(denoiser) if family.denoiser_name == "transformer" else []
        sizes = dict(
            denoiser_params=count(denoiser),
            text_encoder_params=sum(map(count, tes)),
            vae_params=count(parts["vae"]),
            lora_params=lora_params_of(denoiser, family.defaults.target_modules, family.defaults.rank),
            activations_16bit=full,
            activations_ckpt_16bit=ckpt,
            blocks=len(blocks),
            block_params=sum(map(count, blocks)) / max(1, len(blocks)),
        )
        cells, opts = [], {}
        for _, more in OPTIONS:
            opts.update(more)
            if opts.get("blocks_to_swap") and len(blocks) <= SWAP:
                cells.append("—")
                continue
            cells.append(f"{training_bytes(**sizes, **opts)['total'] / GIB:.1f}")
        opts = preset_options(family)
        need = training_bytes(**sizes, **opts)
        n = swap_count(need, CARD_FREE, opts["blocks_to_swap"]) if need["total"] > CARD_FREE else None
        if n is not None:  # what training does with blocks_to_swap left empty: enough streamed to fit
            need = training_bytes(**sizes, **dict(opts, blocks_to_swap=n, gradient_checkpointing=True))
            recipe += f"; {n} blocks swapped, sized to fit"
        preset = need["total"] / GIB
        lines.append(
            f"| {label} | {res} | {sizes['denoiser_params'] / 1e9:.2f} B | "
            f"{sizes['text_encoder_params'] / 1e9:.2f} B | {sizes['vae_params'] / 1e9:.2f} B | "
            + " | ".join(cells)
            + f" | {recipe} | {preset:.1f} | {peers} |"
        )
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
    print("# LoRA training memory per family and option (estimate), beside the peers' published figures")
    print("\n".join(estimate_table()))
    print()
    print(f"CUDA: {'available' if torch.cuda.is_available() else 'not available in this session'}")
    if args.measure_cpu:
        print(measure_sd15_cpu_step())
    if args.cuda:
        from bench.gpu import memory

        sys.exit(memory.main([]))


if __name__ == "__main__":
    main()
