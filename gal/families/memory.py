"""Training-memory estimate per option (pure arithmetic), and the message naming the option to turn on.

Weights: parameters × bytes of their storage. LoRA: fp32 weights + fp32 grads (8 B/param) and AdamW's two
fp32 moments (8 B/param; 8-bit AdamW: 2 B/param). Activations: the transformer estimate of Korthikanti et
al. (2022) with fused attention, ``34 · tokens · width`` bytes per block in 16-bit, summed over blocks (for a
UNet over its resolution levels); gradient checkpointing keeps only each block's input (``2 · tokens ·
width``) plus one block being recomputed. Coarse (±30 %), meant to say *which* option helps, not to budget
to the megabyte.
"""

from __future__ import annotations

import math

BYTES = {"fp32": 4.0, "no": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "fp8": 1.0, "nf4": 0.5}
CUDA_OVERHEAD = 1.0 * 2**30  # CUDA context + allocator slack
# Multiplies the activation term; 1.0 = uncalibrated. bench/gpu/memory.py measures it on a GPU (its table ends
# with the value that makes the estimate meet the measured step peaks).
ACTIVATION_SCALE = 1.0


def training_bytes(
    *,
    denoiser_params: int,
    text_encoder_params: int,
    vae_params: int,
    lora_params: int,
    activations_16bit: float,
    activations_ckpt_16bit: float,
    base: str = "bf16",
    quantize_base: str | None = None,
    offload_text_encoders: bool = False,
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
    blocks: int = 0,
    block_params: float = 0.0,
    blocks_to_swap: int = 0,
    activation_scale: float | None = None,
) -> dict[str, float]:
    """Bytes per part of one LoRA training step; ``total`` sums them. ``blocks``/``block_params``: the
    denoiser's transformer blocks and their mean size; ``blocks_to_swap`` of them stay on the CPU
    (``gal.blockswap``: about two are on the device at a time). ``block_bytes`` and ``blocks`` are returned
    beside the parts (not in ``total``) so ``advice`` can size the swap. ``activation_scale`` (None:
    ``ACTIVATION_SCALE``) calibrates the activation term."""
    base_bytes = BYTES[base]
    weight_bytes = BYTES[quantize_base] if quantize_base else base_bytes
    act = activations_ckpt_16bit if gradient_checkpointing else activations_16bit
    resident = denoiser_params
    if blocks_to_swap:
        resident -= block_params * (min(blocks_to_swap, blocks) - min(2, blocks_to_swap))
    parts = {
        "denoiser": resident * weight_bytes,
        "text_encoders": 0.0 if offload_text_encoders else text_encoder_params * base_bytes,
        "vae": vae_params * base_bytes,
        "lora_and_grads": lora_params * 8.0,
        "optimizer": lora_params * (2.0 if optimizer == "adamw8bit" else 8.0),
        "activations": act
        * base_bytes
        / 2.0
        * (ACTIVATION_SCALE if activation_scale is None else activation_scale),
        "overhead": CUDA_OVERHEAD,
    }
    parts["total"] = sum(parts.values())
    parts["block_bytes"] = block_params * weight_bytes
    parts["blocks"] = float(blocks)
    return parts


def transformer_activations(tokens: int, width: int, blocks: int, batch: int = 1) -> tuple[float, float]:
    """(without, with gradient checkpointing) activation bytes in 16-bit of ``blocks`` transformer blocks."""
    per_block = 34.0 * tokens * width * batch
    return per_block * blocks, 2.0 * tokens * width * batch * blocks + per_block


def unet_activations(
    latent_side: int, channels: list[int], layers_per_block: int, batch: int = 1
) -> tuple[float, float]:
    """The same for a UNet: each level has ``2·layers_per_block + 1`` (down + up) resnet/attention blocks at
    ``(latent_side / 2^level)^2`` positions of ``channels[level]`` width."""
    full, ckpt, biggest = 0.0, 0.0, 0.0
    for level, width in enumerate(channels):
        tokens = (latent_side // 2**level) ** 2
        n = 3 * layers_per_block + 1
        per_block = 34.0 * tokens * width * batch
        full += per_block * n
        ckpt += 2.0 * tokens * width * batch * n
        biggest = max(biggest, per_block)
    return full, ckpt + biggest


def lora_params_of(module, targets: list[str], rank: int) -> int:
    """LoRA parameters ``rank · (in + out)`` over the linears whose name ends with a target
    (as peft matches)."""
    import torch

    total = 0
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (sub.in_features + sub.out_features)
    return total


def count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def activations_of(family, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
    """The family's activation estimate (each family knows its denoiser's blocks)."""
    return family.activations(denoiser, resolution, batch, vae_scale)


def estimate_from_pipe(pipe, family, cfg, resolution: int) -> dict[str, float]:
    """``training_bytes`` for a loaded pipeline and a TrainConfig
    (options resolved as training resolves them)."""
    from gal.families.base import flag, target_modules
    from gal.placement import compute_device

    denoiser = family.denoiser(pipe)
    device = compute_device(pipe, family)
    dtype = str(denoiser.dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
    dtype = dtype.replace("float16", "fp16")
    full, ckpt = activations_of(family, denoiser, resolution, cfg.batch_size, int(pipe.vae_scale_factor))
    from gal.blockswap import swappable_blocks

    blocks = swappable_blocks(denoiser)
    return training_bytes(
        blocks=len(blocks),
        block_params=sum(count(b) for b in blocks) / max(1, len(blocks)),
        blocks_to_swap=int(getattr(cfg, "blocks_to_swap", 0) or 0),
        denoiser_params=count(denoiser),
        text_encoder_params=sum(count(m) for m in family.text_encoders(pipe)),
        vae_params=count(pipe.vae),
        lora_params=lora_params_of(denoiser, target_modules(cfg, family), cfg.rank),
        activations_16bit=full,
        activations_ckpt_16bit=ckpt,
        base=dtype,
        quantize_base=cfg.quantize_base,
        offload_text_encoders=flag(cfg.offload_text_encoders, family.defaults.offload_text_encoders, device),
        optimizer=cfg.optimizer,
        gradient_checkpointing=flag(
            cfg.gradient_checkpointing, family.defaults.gradient_checkpointing, device
        ),
    )


# The app's setting and ``gal run``'s flag for ``train.blocks_to_swap`` (its row in gal/fields.py; a test
# holds the two together — gal.fields is not imported here: it would close an import circle).
SWAP_SETTING = "Blocks swapped to the CPU"
SWAP_FLAG = "--blocks-to-swap"


def swap_option(n: int) -> str:
    """How the refusal names block swap: the config key, the app's setting and ``gal run``'s flag."""
    return f"train.blocks_to_swap={n} (Set up: '{SWAP_SETTING}' = {n}; gal run {SWAP_FLAG} {n})"


def swap_count(need: dict[str, float], free_bytes: float, swapped: int = 0) -> int | None:
    """How many blocks to keep on the CPU so that ``need`` (``training_bytes`` at ``swapped`` blocks
    swapped) fits in ``free_bytes``: enough blocks to cover the shortfall, plus the two streamed in at a
    time when none were swapped yet. None when the denoiser has no swappable blocks or swapping all but one
    would still not do."""
    if not need.get("block_bytes") or swapped >= need.get("blocks", 0) - 1:
        return None
    n = swapped + math.ceil((need["total"] - free_bytes) / need["block_bytes"]) + (0 if swapped else 2)
    return n if n <= need["blocks"] - 1 else None


def advice(need: dict[str, float], free_bytes: float, cfg, family) -> str | None:
    """None when ``need['total']`` fits in ``free_bytes``; else a message naming the options still off."""
    if need["total"] <= free_bytes:
        return None

    def on(name: str) -> bool:  # None: the family's default (advice is for CUDA, where defaults apply)
        value = getattr(cfg, name)
        return bool(getattr(family.defaults, name)) if value is None else bool(value)

    options = []
    if not on("gradient_checkpointing"):
        options.append("train.gradient_checkpointing=true")
    if not on("offload_text_encoders"):
        options.append("train.offload_text_encoders=true")
    if not cfg.quantize_base:
        options.append("train.quantize_base='int8'")
    if cfg.optimizer != "adamw8bit":
        options.append("train.optimizer='adamw8bit'")
    n = swap_count(need, free_bytes, int(getattr(cfg, "blocks_to_swap", 0) or 0))
    if n is not None:
        options.append(swap_option(n))
    gib = 2**30
    fix = (
        f"turn on {', '.join(options)}"
        if options
        else "lower train.resolution, train.batch_size or train.rank"
    )
    return (
        f"{family.label} LoRA training needs about {need['total'] / gib:.1f} GiB "
        f"but {free_bytes / gib:.1f} GiB "
        f"are free: {fix}"
    )
