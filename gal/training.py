"""DreamBooth-LoRA training with per-sample loss weights (the Balance scheme's Δ, paper Eq. 2 and 9).

LoRA (peft) on the denoiser (UNet or Flux transformer, through ``gal.families``); the VAE and text
encoders stay frozen (unless ``train_text_encoder``), so reference latents' moments and prompt
embeddings are computed once per round, not once per step. The training set (references as tensors,
batches) lives in ``gal.dataset``, the adapter (peft configs, attach, save, load) in ``gal.adapters``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gal import blockswap, placement
from gal.adapters import (  # noqa: F401  (the adapter's names, re-exported: gal.training was their home)
    ADAPTER,
    ADAPTER_PARAMETERS,
    LORA_FILE,
    adapter_state,
    add_safetensors_metadata,
    attach_adapter,
    attach_text_encoder_adapter,
    load_adapter,
    lora_config,
    remove_adapter,
    save_adapter,
    saved_network,
    settle_adapter,
)
from gal.config import TrainConfig
from gal.dataset import (  # noqa: F401  (TRAINING_SET, TrainExample, image_to_tensor: re-exported)
    TRAINING_SET,
    TrainExample,
    bucket_step,
    crop_facts,
    draw_batch,
    draw_bucketed,
    image_to_tensor,
    latent_moments,
    loss_masks,
    make_buckets,
)
from gal.families.base import (  # noqa: F401  (flag, target_modules: re-exported)
    LOSS_MASK,
    flag,
    of,
    resolve_memory,
    target_modules,
    with_options,
)

log = logging.getLogger(__name__)


class Cancelled(RuntimeError):
    """Raised inside a long step when the caller's cancel() returned True."""


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # the learning rate each step used
    seconds: float = 0.0
    steps: int = 0


def quantize_base(pipe, family, mode: str | None) -> None:
    """Quantize the frozen denoiser's weights in place (torchao int8 weight-only works on CPU and CUDA;
    fp8 needs a CUDA GPU with fp8 support). Idempotent; a different mode on the same pipeline is refused."""
    if not mode:
        return
    done = getattr(pipe, "_gal_quantized", None)
    if done == mode:
        return
    if done:
        raise ValueError(f"this pipeline's base is already quantized to {done}: restart to use {mode}")
    if mode == "nf4":
        raise ValueError(
            "quantize_base='nf4' needs loading through bitsandbytes on CUDA, not wired here yet: "
            "use quantize_base='int8'"
        )
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as err:
        raise ValueError(f"quantize_base={mode!r} needs torchao: pip install 'gal-studio[quant]'") from err
    denoiser = family.denoiser(pipe)
    if mode == "fp8":
        if denoiser.device.type != "cuda":
            raise ValueError(
                "quantize_base='fp8' needs a CUDA GPU (compute capability >= 8.9): use 'int8' on CPU"
            )
        config = Float8WeightOnlyConfig()
    else:
        config = Int8WeightOnlyConfig()
    # Only the frozen base linears; LoRA layers added later wrap the quantized weights
    # (peft TorchaoLoraLinear).
    quantize_(
        denoiser, config, filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and "lora_" not in name
    )
    pipe._gal_quantized = mode


def make_optimizer(params, cfg: TrainConfig, device: torch.device):
    name = getattr(cfg, "optimizer", "adamw")
    if name == "adamw8bit":
        if device.type != "cuda":
            raise ValueError(
                "optimizer 'adamw8bit' (bitsandbytes) needs a CUDA GPU: use optimizer 'adamw' on CPU"
            )
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ValueError("optimizer 'adamw8bit' needs bitsandbytes: pip install bitsandbytes") from err
        return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-2)


def check_memory(pipe, family, cfg: TrainConfig, resolution: int, *, size_swap: bool = False, free=None):
    """On CUDA (or with ``free`` bytes given), refuse before training when the estimate exceeds free memory,
    naming the option to turn on. With ``size_swap`` (the person left ``train.blocks_to_swap`` empty) a run
    that block swap makes fit is not refused: the returned config swaps that many blocks (the 24 GB
    preset sized to this model and this card; block swap trains the same adapter). Returns ``cfg``
    otherwise."""
    device = placement.compute_device(pipe, family)
    if device.type != "cuda" and free is None:
        return cfg
    from gal.families.memory import advice, estimate_from_pipe, swap_count

    if free is None:
        # what the pipeline already holds on the device is the estimate's to use again
        free = placement.free_bytes(device) + sum(
            placement.module_bytes(m, device) for m in placement.pipeline_modules(pipe).values()
        )
    need = estimate_from_pipe(pipe, family, cfg, resolution)
    if size_swap and need["total"] > free:
        n = swap_count(need, free, int(cfg.blocks_to_swap or 0))
        if n is not None:
            sized = with_options(cfg, blocks_to_swap=n)
            if estimate_from_pipe(pipe, family, sized, resolution)["total"] <= free:
                log.info(
                    "%s: about %.1f GiB needed, %.1f GiB free: %d blocks swapped to the CPU "
                    "(train.blocks_to_swap was empty; set it to choose)",
                    family.label,
                    need["total"] / 2**30,
                    free / 2**30,
                    n,
                )
                return sized
    message = advice(need, free, cfg, family)
    if message:
        raise ValueError(message)
    return cfg


def place_for_generation(pipe, family, resolution: int) -> None:
    """A pipeline placed in parts (``gal.placement``) that draws before it has trained: its denoiser placed
    by the family's 24 GB preset, the block swap sized to this card (a later training keeps it)."""
    if not placement.is_parts(pipe) or pipe._gal_placed is not None:
        return
    cfg = resolve_memory(TrainConfig(), family, placement.compute_device(pipe, family))
    cfg = check_memory(pipe, family, cfg, resolution, size_swap=True)
    placement.place_denoiser(pipe, family, cfg.blocks_to_swap, cfg.quantize_base)


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


def undo_cpu_offload(pipe) -> None:
    """Generation's model CPU offload moves modules on and off the GPU per call:
    training needs them placed."""
    device = getattr(pipe, "_gal_offloaded", None)
    if device:
        pipe.remove_all_hooks()
        pipe.to(device)
        pipe._gal_offloaded = None


def _move_text_encoders(pipe, family, device) -> None:
    for encoder in family.text_encoders(pipe):
        if encoder.device != torch.device(device):
            encoder.to(device)


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
    processes=None,
    state=None,
) -> TrainResult:
    """Train the ``gal`` LoRA adapter on the pipeline's denoiser (its family's UNet or transformer); on return
    the adapter is active for generation.

    Loss = Σ over the batch of (per-sample loss × the sample's weight × its draw coefficient); the
    per-sample loss is the family's: MSE to the noise / velocity (SD, SDXL) or the weighted flow-matching
    MSE to ``noise - latents`` (FLUX.1).

    ``processes`` (``gal.distributed.Processes``): several processes split each step's batch — every one
    draws the same batch, noise and timesteps, computes its slice, and the LoRA gradients are summed — so
    they train the adapter one process would.

    ``state`` (``gal.trainstate.TrainState``): resume from its saved step when one matches this round,
    save every ``state.every`` steps and on a cancel; the rest of the round is the one an uninterrupted
    run trains, bit for bit.
    """
    from gal.distributed import Processes

    processes = processes or Processes()

    # 1. check inputs
    if not examples:
        raise ValueError("no references to train on: add at least one reference image")
    weights = torch.tensor([float(e.weight) for e in examples], dtype=torch.float32)
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("reference weights must be finite and >= 0")
    family = of(pipe)
    undo_cpu_offload(pipe)
    denoiser = family.denoiser(pipe)
    device, dtype = placement.compute_device(pipe, family), denoiser.dtype
    in_parts = placement.is_parts(pipe)  # the pipeline is placed in parts (gal.placement): it stays so
    swap_unset = getattr(cfg, "blocks_to_swap", None) is None
    cfg = resolve_memory(cfg, family, device)  # unset memory options: the family's 24 GB preset on CUDA
    if in_parts and pipe._gal_placed is not None:  # the placement stays: estimate what it is, not the request
        cfg = with_options(cfg, blocks_to_swap=pipe._gal_placed[0], quantize_base=pipe._gal_placed[1])
        swap_unset = False
    train_te = bool(getattr(cfg, "train_text_encoder", False))
    if train_te and not family.text_encoder_targets:
        raise ValueError(
            f"{family.label}: text-encoder LoRA is not supported here; turn train.train_text_encoder off"
        )
    if train_te and in_parts:
        raise ValueError(
            f"{family.label} is placed in parts (it does not fit this GPU whole): its text encoder visits "
            "the GPU only to encode, so it cannot train; turn train.train_text_encoder off"
        )
    cfg = check_memory(pipe, family, cfg, resolution, size_swap=swap_unset)
    started = time.perf_counter()

    # 2. cache what the frozen parts produce
    all_examples = examples + list(class_examples or [])
    step_px = bucket_step(resolution, getattr(pipe, "vae_scale_factor", 8)) if cfg.bucketing else None
    buckets = make_buckets(all_examples, resolution, step_px)  # bucketing off: one square bucket of all
    for bucket in buckets:
        images = [all_examples[i].image for i in bucket.members]
        mean, std = latent_moments(pipe, images, bucket.size)
        # The noising arithmetic runs in fp32 even when the VAE runs in half precision;
        # autocast casts for the model.
        bucket.mean, bucket.std = mean.float(), std.float()
        bucket.masks = loss_masks([all_examples[i] for i in bucket.members], bucket.size, bucket.mean)
        if step_px is not None:  # each image's true original size and crop (SDXL's micro-conditioning)
            facts = [crop_facts(image, bucket.size) for image in images]
            image_cond = family.image_cond(pipe, *(list(f) for f in zip(*facts, strict=True)))
            bucket.image_cond = {k: v.to(device) for k, v in image_cond.items()}  # parts: made on the CPU
    bucket_of = torch.empty(len(all_examples), dtype=torch.long)
    row_of = torch.empty(len(all_examples), dtype=torch.long)
    for b, bucket in enumerate(buckets):
        bucket_of[bucket.members] = b
        row_of[bucket.members] = torch.arange(len(bucket.members))
    prompts = sorted({e.prompt for e in all_examples})
    if not in_parts:  # in parts the encoders visit the device while they run
        _move_text_encoders(pipe, family, device)
    cond = family.encode(pipe, prompts, resolution)  # {name: [n_prompts, ...]}
    cond = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    offload = flag(getattr(cfg, "offload_text_encoders", None), family.defaults.offload_text_encoders, device)
    if offload and not train_te and not in_parts:
        _move_text_encoders(pipe, family, "cpu")  # cached: the encoders' memory goes to the denoiser
        if device.type == "cuda":
            torch.cuda.empty_cache()
    prompt_index = torch.tensor([prompts.index(e.prompt) for e in all_examples], device=device)
    sample_weight = torch.tensor(
        [float(e.weight) for e in examples] + [cfg.prior_loss_weight] * len(class_examples or []),
        dtype=torch.float32,
        device=device,
    )
    vae_cfg = pipe.vae.config
    # FLUX.2's VAE has no scaling factor: its family normalises the patchified latents itself (BatchNorm).
    scaling = float(getattr(vae_cfg, "scaling_factor", None) or 1.0)
    shift = float(getattr(vae_cfg, "shift_factor", None) or 0.0)

    # 3. adapter and optimiser
    if in_parts:  # the denoiser placed once: the swapped blocks stream, the rest quantized on the device
        placement.place_denoiser(pipe, family, cfg.blocks_to_swap, getattr(cfg, "quantize_base", None))
    else:
        quantize_base(pipe, family, getattr(cfg, "quantize_base", None))
    params = attach_adapter(denoiser, cfg, init_state, seed=seed, family=family)
    settle_adapter(pipe)  # parts: LoRA beside a CPU base weight goes to the device
    if train_te:
        params = params + attach_text_encoder_adapter(pipe, cfg, family, seed=seed)
    optimizer = make_optimizer(params, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.steps, cfg.lr_schedule)
    )
    noise_scheduler = family.noise_scheduler(pipe)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    autocast = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if in_parts:  # the placement's swap, kept for generation after training
        swap, streaming = None, pipe._gal_swap is not None
    else:
        swap = blockswap.start(denoiser, getattr(cfg, "blocks_to_swap", 0), device)  # the last N blocks
        streaming = swap is not None
    checkpointing = streaming or flag(
        getattr(cfg, "gradient_checkpointing", None), family.defaults.gradient_checkpointing, device
    )
    if checkpointing:
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    if train_te:
        pipe.text_encoder.train()

    # 4. train
    result = TrainResult()
    first = 0
    # The main process reads the saved state and hands it to the others: they resume at its step together.
    saved = processes.broadcast(state.load() if processes.is_main else None) if state is not None else None
    if saved is not None:
        first = state.restore(saved, params, optimizer, scheduler, generator)
        result.losses, result.steps = list(saved["losses"]), first
        if state.on_resume is not None:
            state.on_resume(first)
    try:
        for step in range(first, cfg.steps):
            if cancel is not None and cancel():
                if state is not None and state.every > 0 and step > first:  # keep what this session trained
                    state.save(step, params, optimizer, scheduler, generator, result.losses)
                raise Cancelled(f"training cancelled at step {step}/{cfg.steps}")
            n_class = len(class_examples or [])
            if step_px is None:
                batch, coef = draw_batch(examples, cfg, generator, n_class=n_class)
            else:  # a batch of one bucket's references (their class images may sit in another)
                batch, coef = draw_bucketed(buckets, examples, cfg, generator, n_class=n_class)
            optimizer.zero_grad(set_to_none=True)
            parts = []
            for b in dict.fromkeys(bucket_of[batch].tolist()):  # each bucket of the batch: one forward
                at = (bucket_of[batch] == b).nonzero().flatten()
                bucket, idx = buckets[b], batch[at]
                rows = row_of[idx].to(bucket.mean.device)
                idx, c = idx.to(device), coef[at].to(device)
                eps = torch.randn(bucket.mean[rows].shape, generator=generator).to(device, bucket.mean.dtype)
                latents = (bucket.mean[rows] + bucket.std[rows] * eps - shift) * scaling
                if (
                    train_te
                ):  # the text encoder changes every step: encode this batch's prompts with gradients
                    with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                        step_cond = family.encode_with_grad(
                            pipe, [prompts[i] for i in prompt_index[idx].tolist()], resolution
                        )
                else:
                    step_cond = {k: v[prompt_index[idx]] for k, v in cond.items()}
                step_cond.update({k: v[rows] for k, v in bucket.image_cond.items()})
                if bucket.masks is not None:  # the family's loss weighs each sample's error by its mask
                    step_cond[LOSS_MASK] = bucket.masks[rows]
                if processes.many:  # this process's slice of the batch; the random draws cover all of it
                    part_rows = processes.batch_slice(
                        len(idx)
                    )  # may be empty: the draws are consumed all the same
                    per_sample = family.per_sample_loss(
                        pipe, noise_scheduler, latents, step_cond, generator, cfg, autocast, rows=part_rows
                    )
                    parts.append((per_sample * sample_weight[idx][part_rows] * c[part_rows]).sum())
                else:
                    per_sample = family.per_sample_loss(
                        pipe, noise_scheduler, latents, step_cond, generator, cfg, autocast
                    )
                    parts.append((per_sample * sample_weight[idx] * c).sum())  # [b] -> scalar
            part = parts[0] if len(parts) == 1 else torch.stack(parts).sum()
            if processes.many:
                if part.requires_grad:
                    part.backward()
                loss = torch.tensor(processes.sum(float(part.detach())))
                processes.sum_gradients(params)
            else:
                loss = part
                loss.backward()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower the learning rate")
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            result.lrs.append(float(optimizer.param_groups[0]["lr"]))
            scheduler.step()
            result.losses.append(float(loss.detach()))
            result.steps = step + 1
            if progress is not None:
                progress(step + 1, cfg.steps, result.losses[-1])
            if state is not None and state.due(step + 1, cfg.steps):
                state.save(step + 1, params, optimizer, scheduler, generator, result.losses)
    finally:
        if swap is not None:
            swap.close()
        denoiser.eval()
        if checkpointing:
            denoiser.disable_gradient_checkpointing()
        if train_te:
            pipe.text_encoder.eval()
        for p in params:
            p.requires_grad_(False)
        if autocast:  # generation runs the adapter in the pipeline's dtype
            for p in params:
                p.data = p.data.to(dtype)
    result.seconds = time.perf_counter() - started
    return result
