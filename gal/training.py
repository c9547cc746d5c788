"""DreamBooth-LoRA training with per-sample loss weights (the Balance scheme's Δ, paper Eq. 2 and 9).

LoRA (peft) on the UNet attention projections; the VAE and text encoder stay frozen, so reference
latents' moments and prompt embeddings are computed once per round, not once per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gal.config import TrainConfig

ADAPTER = "gal"
LORA_FILE = "pytorch_lora_weights.safetensors"


class Cancelled(RuntimeError):
    """Raised inside a long step when the caller's cancel() returned True."""


@dataclass
class TrainExample:
    image: Image.Image
    prompt: str
    weight: float  # real references 1.0; synthetic ones the Δ of the round that added them
    added: bool = False  # added by a GAL round (synthetic), not one of the person's references


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        init_lora_weights="gaussian",
        target_modules=list(cfg.target_modules),
    )


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize the short side to ``resolution``, centre-crop, scale to [-1, 1]. ``-> [3, H, W]``."""
    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def remove_adapter(unet) -> None:
    if getattr(unet, "peft_config", None) and ADAPTER in unet.peft_config:
        unet.delete_adapters(ADAPTER)


def adapter_state(unet) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER).items()}


def attach_adapter(
    unet, cfg: TrainConfig, state: dict[str, torch.Tensor] | None = None, *, seed: int = 0
) -> list[torch.nn.Parameter]:
    """(Re)create the ``gal`` adapter, optionally from a saved state; return its trainable parameters (fp32)."""
    from peft.utils import set_peft_model_state_dict

    remove_adapter(unet)
    unet.requires_grad_(False)
    # peft draws LoRA's initial A matrices from the global RNG: seed it in a fork, so the same config gives
    # the same adapter whatever ran before in this process (and the caller's RNG state is left alone).
    with torch.random.fork_rng(devices=[unet.device] if unet.device.type == "cuda" else []):
        torch.manual_seed(seed)
        unet.add_adapter(lora_config(cfg), adapter_name=ADAPTER)
    if state is not None:
        incompatible = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER)
        unexpected = getattr(incompatible, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"saved adapter does not fit this model: {len(unexpected)} unexpected keys")
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        # LoRA weights train in fp32 even when the base runs in fp16/bf16 (as diffusers' scripts do).
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


@torch.no_grad()
def _encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


@torch.no_grad()
def _latent_moments(pipe, images: list[Image.Image], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    vae = pipe.vae
    pixels = torch.stack([image_to_tensor(im, resolution) for im in images]).to(vae.device, vae.dtype)
    means, stds = [], []
    for start in range(0, len(pixels), 8):
        dist = vae.encode(pixels[start : start + 8]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def lr_factor(step: int, total: int, schedule: str) -> float:
    """The learning-rate multiplier at ``step``: 1 for ``constant``; ``cosine`` warms up linearly over the
    first 5 % of the steps, then decays along a half cosine to 0 at ``total``."""
    if schedule == "constant":
        return 1.0
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def draw_batch(examples: list[TrainExample], cfg: TrainConfig, generator: torch.Generator, *, n_class: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's sample indices and their loss coefficients (the loss is ``Σ coef · weight · mse``).

    ``pooled`` draws ``batch_size`` from all references: the loss estimates ``mean_i w_i ℓ_i`` over
    them, so each added image dilutes the real ones. ``real-rate`` draws ``batch_size`` real references
    as round 1 does plus ``max(1, batch_size // 2)`` added ones, scaled by ``n_added / n_real``: the
    loss estimates ``Σ_i w_i ℓ_i / n_real``, so real references keep their round-1 gradient and an added
    image contributes its weight's worth on top. Class images (prior preservation) are appended one per
    instance sample and the instance and class halves averaged, as in DreamBooth.
    """
    b = cfg.batch_size
    real = [i for i, e in enumerate(examples) if not e.added]
    added = [i for i, e in enumerate(examples) if e.added]
    if cfg.reference_sampling == "real-rate" and real and added:
        real_idx = torch.tensor(real)[torch.randint(0, len(real), (b,), generator=generator)]
        b_added = max(1, b // 2)
        added_idx = torch.tensor(added)[torch.randint(0, len(added), (b_added,), generator=generator)]
        batch = torch.cat([real_idx, added_idx])
        coef = torch.cat([torch.full((b,), 1.0 / b), torch.full((b_added,), len(added) / (len(real) * b_added))])
    else:
        batch = torch.randint(0, len(examples), (b,), generator=generator)
        coef = torch.full((b,), 1.0 / b)
    if n_class:
        # Prior preservation: pair each instance sample with a class sample (DreamBooth).
        n = len(batch)
        batch = torch.cat([batch, len(examples) + torch.randint(0, n_class, (n,), generator=generator)])
        coef = torch.cat([coef, torch.full((n,), 1.0 / n)]) / 2
    return batch, coef


def train_lora(
    pipe,
    examples: list[TrainExample],
    cfg: TrainConfig,
    *,
    resolution: int,
    seed: int,
    init_state: dict[str, torch.Tensor] | None = None,
    class_examples: list[TrainExample] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train the ``gal`` LoRA adapter on ``pipe.unet``; on return the adapter is active for generation.

    Loss = mean over the batch of (per-sample MSE × the sample's weight); the target is the noise
    (epsilon models) or the velocity (v-prediction models), read from the scheduler config.
    """
    from diffusers import DDPMScheduler

    # 1. check inputs
    if not examples:
        raise ValueError("no references to train on: add at least one reference image")
    weights = torch.tensor([float(e.weight) for e in examples], dtype=torch.float32)
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("reference weights must be finite and >= 0")
    device, dtype = pipe.unet.device, pipe.unet.dtype
    started = time.perf_counter()

    # 2. cache what the frozen parts produce
    all_examples = examples + list(class_examples or [])
    moments_mean, moments_std = _latent_moments(pipe, [e.image for e in all_examples], resolution)
    # The noising arithmetic runs in fp32 even when the VAE runs in half precision; autocast casts for the UNet.
    moments_mean, moments_std = moments_mean.float(), moments_std.float()
    prompts = sorted({e.prompt for e in all_examples})
    embeds = _encode_prompts(pipe, prompts)
    prompt_index = torch.tensor([prompts.index(e.prompt) for e in all_examples], device=device)
    sample_weight = torch.tensor(
        [float(e.weight) for e in examples] + [cfg.prior_loss_weight] * len(class_examples or []),
        dtype=torch.float32,
        device=device,
    )
    vae_cfg = pipe.vae.config
    scaling = float(vae_cfg.scaling_factor)
    shift = float(getattr(vae_cfg, "shift_factor", None) or 0.0)

    # 3. adapter and optimiser
    params = attach_adapter(pipe.unet, cfg, init_state, seed=seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg.steps, cfg.lr_schedule))
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    generator = torch.Generator(device="cpu").manual_seed(seed)
    autocast = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    pipe.unet.train()

    # 4. train
    result = TrainResult()
    try:
        for step in range(cfg.steps):
            if cancel is not None and cancel():
                raise Cancelled(f"training cancelled at step {step}/{cfg.steps}")
            batch, coef = draw_batch(examples, cfg, generator, n_class=len(class_examples or []))
            batch, coef = batch.to(device), coef.to(device)
            eps = torch.randn(moments_mean[batch].shape, generator=generator).to(device, moments_mean.dtype)
            latents = (moments_mean[batch] + moments_std[batch] * eps - shift) * scaling
            noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=generator).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            if prediction_type == "epsilon":
                target = noise
            elif prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, t)
            else:
                raise ValueError(f"unsupported prediction type {prediction_type!r}")
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                pred = pipe.unet(noisy, t, encoder_hidden_states=embeds[prompt_index[batch]]).sample
            per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # [b]
            loss = (per_sample * sample_weight[batch] * coef).sum()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            result.losses.append(float(loss.detach()))
            result.steps = step + 1
            if progress is not None:
                progress(step + 1, cfg.steps, result.losses[-1])
    finally:
        pipe.unet.eval()
        for p in params:
            p.requires_grad_(False)
        if autocast:  # generation runs the adapter in the pipeline's dtype
            for p in params:
                p.data = p.data.to(dtype)
    result.seconds = time.perf_counter() - started
    return result


def save_adapter(pipe, folder: str | Path, cfg: TrainConfig, metadata: dict[str, str] | None = None) -> Path:
    """Save the active adapter in diffusers format (loads with ``pipe.load_lora_weights``)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = convert_state_dict_to_diffusers(adapter_state(pipe.unet))
    state = {k: v.to(torch.float32).contiguous() for k, v in state.items()}
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=state, unet_lora_adapter_metadata=lora_config(cfg).to_dict()
    )
    path = folder / LORA_FILE
    if metadata:
        add_safetensors_metadata(path, metadata)
    return path


def load_adapter(pipe, folder: str | Path) -> None:
    """Load a saved round adapter as the active ``gal`` adapter (used on resume)."""
    remove_adapter(pipe.unet)
    pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name=ADAPTER)


def add_safetensors_metadata(path: Path, extra: dict[str, str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update({k: str(v) for k, v in extra.items()})
    save_file(tensors, str(path), metadata=meta)

