"""DreamBooth-LoRA training with per-sample loss weights (the Balance scheme's Δ, paper Eq. 2 and 9).

LoRA (peft) on the denoiser (UNet or Flux transformer, through ``gal.families``); the VAE and text
encoders stay frozen (unless ``train_text_encoder``), so reference latents' moments and prompt
embeddings are computed once per round, not once per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gal import blockswap
from gal.config import TrainConfig
from gal.families.base import flag, of, resolve_memory, target_modules  # noqa: F401  (flag, target_modules: re-exported)

ADAPTER = "gal"
# peft's parameter names of LoRA / DoRA (lora_A, lora_B, lora_magnitude_vector), LoKr and LoHa
ADAPTER_PARAMETERS = ("lora_", "lokr_", "hada_")
LORA_FILE = "pytorch_lora_weights.safetensors"
TRAINING_SET = "training_set.json"  # beside the adapter: each reference's file, caption, weight and source


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
    lrs: list[float] = field(default_factory=list)  # the learning rate each step used
    seconds: float = 0.0
    steps: int = 0


def lora_config(cfg: TrainConfig, family=None, *, text_encoder: bool = False):
    """The peft adapter config of ``cfg.network`` (LoraConfig, with ``use_dora`` for DoRA; LoKrConfig;
    LoHaConfig) on the config's target modules, or the family's when they are left at the SD default.
    The text encoder's adapter is always a plain LoRA."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    targets = list(family.text_encoder_targets if text_encoder else target_modules(cfg, family))
    network = "lora" if text_encoder else getattr(cfg, "network", "lora")
    if network == "lokr":  # zero-initialised w2: the adapter starts as the base, as LoRA's zero B does
        return LoKrConfig(r=cfg.rank, alpha=cfg.lora_alpha, target_modules=targets, init_weights=True)
    if network == "loha":
        return LoHaConfig(r=cfg.rank, alpha=cfg.lora_alpha, target_modules=targets, init_weights=True)
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.lora_alpha,
        init_lora_weights="gaussian",
        target_modules=targets,
        use_dora=network == "dora",
    )


def _denoiser(pipe_or_module) -> torch.nn.Module:
    """The LoRA'd model of a pipeline (its family's UNet or transformer), or the module itself."""
    if isinstance(pipe_or_module, torch.nn.Module):
        return pipe_or_module
    family = of(pipe_or_module)
    return family.denoiser(pipe_or_module)


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize the short side to ``resolution``, centre-crop, scale to [-1, 1]. ``-> [3, H, W]``."""
    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize(
        (max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC
    )
    w, h = image.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def remove_adapter(pipe) -> None:
    """Drop the ``gal`` adapter from a pipeline (denoiser and text encoder) or from one module."""
    modules = [_denoiser(pipe)]
    if not isinstance(pipe, torch.nn.Module):
        modules += [m for m in (getattr(pipe, "text_encoder", None),) if m is not None]
    for module in modules:
        if getattr(module, "peft_config", None) and ADAPTER in module.peft_config:
            if hasattr(module, "delete_adapters"):
                module.delete_adapters(ADAPTER)
            else:  # a text encoder (peft-injected here, or loaded by diffusers through transformers)
                from diffusers.utils.peft_utils import delete_adapter_layers

                delete_adapter_layers(module, ADAPTER)
                config = getattr(module, "peft_config", None)
                if config is not None:
                    config.pop(ADAPTER, None)


def adapter_state(pipe) -> dict[str, torch.Tensor]:
    """The ``gal`` adapter's weights of a pipeline's denoiser (or of a module), detached copies."""
    from peft.utils import get_peft_model_state_dict

    module = _denoiser(pipe)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(module, adapter_name=ADAPTER).items()}


def attach_adapter(
    unet, cfg: TrainConfig, state: dict[str, torch.Tensor] | None = None, *, seed: int = 0, family=None
) -> list[torch.nn.Parameter]:
    """(Re)create the ``gal`` adapter on a denoiser (or a pipeline's), optionally from a saved state;
    return its trainable parameters (fp32)."""
    from peft.utils import set_peft_model_state_dict

    unet = _denoiser(unet)
    remove_adapter(unet)
    _unwrap_empty(unet)
    unet.requires_grad_(False)
    # peft draws LoRA's initial A matrices from the global RNG: seed it in a fork, so the same config gives
    # the same adapter whatever ran before in this process (and the caller's RNG state is left alone).
    with torch.random.fork_rng(devices=[unet.device] if unet.device.type == "cuda" else []):
        torch.manual_seed(seed)
        unet.add_adapter(lora_config(cfg, family), adapter_name=ADAPTER)
    if state is not None:
        incompatible = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER)
        unexpected = getattr(incompatible, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"saved adapter does not fit this model: {len(unexpected)} unexpected keys")
    return _trainable(unet)


def _unwrap_empty(module) -> None:
    """With no adapter left, put the base layers back in place of peft's empty wrappers: a LoKr after a LoRA
    (another run's network on the shared pipeline) then wraps the base layer, not an empty LoRA layer."""
    if getattr(module, "peft_config", None):
        return
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(module)


def _trainable(module) -> list[torch.nn.Parameter]:
    params = [p for n, p in module.named_parameters() if any(k in n for k in ADAPTER_PARAMETERS)]
    for p in params:
        # LoRA weights train in fp32 even when the base runs in fp16/bf16 (as diffusers' scripts do).
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def attach_text_encoder_adapter(pipe, cfg: TrainConfig, family, *, seed: int) -> list[torch.nn.Parameter]:
    """A LoRA on the (first) CLIP text encoder's attention, as diffusers' ``--train_text_encoder``.

    ``peft.inject_adapter_in_model``: transformers 5's ``add_adapter`` demands a newer peft than ours."""
    from peft import inject_adapter_in_model

    if not family.text_encoder_targets:
        raise ValueError(
            f"{family.label}: text-encoder LoRA is not supported here; turn train.train_text_encoder off"
        )
    te = pipe.text_encoder
    te.requires_grad_(False)
    with torch.random.fork_rng(devices=[te.device] if te.device.type == "cuda" else []):
        torch.manual_seed(seed + 1)
        inject_adapter_in_model(lora_config(cfg, family, text_encoder=True), te, adapter_name=ADAPTER)
    te.peft_config = {ADAPTER: lora_config(cfg, family, text_encoder=True)}
    return _trainable(te)


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


def check_memory(pipe, family, cfg: TrainConfig, resolution: int) -> None:
    """On CUDA, refuse before training when the estimate exceeds free memory, naming the option to turn on."""
    device = family.denoiser(pipe).device
    if device.type != "cuda":
        return
    from gal.families.memory import advice, estimate_from_pipe

    free, _ = torch.cuda.mem_get_info(device)
    need = estimate_from_pipe(pipe, family, cfg, resolution)
    message = advice(need, free, cfg, family)
    if message:
        raise ValueError(message)


@torch.no_grad()
def _latent_moments(pipe, images: list[Image.Image], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    vae = pipe.vae
    pixels = torch.stack([image_to_tensor(im, resolution) for im in images]).to(vae.device, vae.dtype)
    means, stds = [], []
    for start in range(0, len(pixels), 8):
        mean, std = of(pipe).latent_dist(pipe, pixels[start : start + 8])
        means.append(mean)
        stds.append(std)
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


def draw_batch(
    examples: list[TrainExample], cfg: TrainConfig, generator: torch.Generator, *, n_class: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
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
        coef = torch.cat(
            [torch.full((b,), 1.0 / b), torch.full((b_added,), len(added) / (len(real) * b_added))]
        )
    else:
        batch = torch.randint(0, len(examples), (b,), generator=generator)
        coef = torch.full((b,), 1.0 / b)
    if n_class:
        # Prior preservation: pair each instance sample with a class sample (DreamBooth).
        n = len(batch)
        batch = torch.cat([batch, len(examples) + torch.randint(0, n_class, (n,), generator=generator)])
        coef = torch.cat([coef, torch.full((n,), 1.0 / n)]) / 2
    return batch, coef


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
    device, dtype = denoiser.device, denoiser.dtype
    cfg = resolve_memory(cfg, family, device)  # unset memory options: the family's 24 GB preset on CUDA
    train_te = bool(getattr(cfg, "train_text_encoder", False))
    if train_te and not family.text_encoder_targets:
        raise ValueError(
            f"{family.label}: text-encoder LoRA is not supported here; turn train.train_text_encoder off"
        )
    check_memory(pipe, family, cfg, resolution)
    started = time.perf_counter()

    # 2. cache what the frozen parts produce
    all_examples = examples + list(class_examples or [])
    moments_mean, moments_std = _latent_moments(pipe, [e.image for e in all_examples], resolution)
    # The noising arithmetic runs in fp32 even when the VAE runs in half precision;
    # autocast casts for the model.
    moments_mean, moments_std = moments_mean.float(), moments_std.float()
    prompts = sorted({e.prompt for e in all_examples})
    _move_text_encoders(pipe, family, device)
    cond = family.encode(pipe, prompts, resolution)  # {name: [n_prompts, ...]}
    offload = flag(getattr(cfg, "offload_text_encoders", None), family.defaults.offload_text_encoders, device)
    if offload and not train_te:
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
    quantize_base(pipe, family, getattr(cfg, "quantize_base", None))
    params = attach_adapter(denoiser, cfg, init_state, seed=seed, family=family)
    if train_te:
        params = params + attach_text_encoder_adapter(pipe, cfg, family, seed=seed)
    optimizer = make_optimizer(params, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.steps, cfg.lr_schedule)
    )
    noise_scheduler = family.noise_scheduler(pipe)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    autocast = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    swap = blockswap.start(denoiser, getattr(cfg, "blocks_to_swap", 0), device)  # streams the last N blocks
    checkpointing = swap is not None or flag(
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
            batch, coef = draw_batch(examples, cfg, generator, n_class=len(class_examples or []))
            batch, coef = batch.to(device), coef.to(device)
            eps = torch.randn(moments_mean[batch].shape, generator=generator).to(device, moments_mean.dtype)
            latents = (moments_mean[batch] + moments_std[batch] * eps - shift) * scaling
            if train_te:  # the text encoder changes every step: encode this batch's prompts with gradients
                with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                    step_cond = family.encode_with_grad(
                        pipe, [prompts[i] for i in prompt_index[batch].tolist()], resolution
                    )
            else:
                step_cond = {k: v[prompt_index[batch]] for k, v in cond.items()}
            optimizer.zero_grad(set_to_none=True)
            if processes.many:  # this process's slice of the batch; the random draws cover all of it
                rows = processes.batch_slice(len(batch))  # may be empty: the draws are consumed all the same
                per_sample = family.per_sample_loss(
                    pipe, noise_scheduler, latents, step_cond, generator, cfg, autocast, rows=rows
                )
                part = (per_sample * sample_weight[batch][rows] * coef[rows]).sum()
                if part.requires_grad:
                    part.backward()
                loss = torch.tensor(processes.sum(float(part.detach())))
                processes.sum_gradients(params)
            else:
                per_sample = family.per_sample_loss(
                    pipe, noise_scheduler, latents, step_cond, generator, cfg, autocast
                )
                loss = (per_sample * sample_weight[batch] * coef).sum()  # [b] -> scalar
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


def save_adapter(pipe, folder: str | Path, cfg: TrainConfig, metadata: dict[str, str] | None = None) -> Path:
    """Save the active adapter in diffusers format (loads with ``pipe.load_lora_weights``): the denoiser's
    layers under the family's prefix (``unet.`` / ``transformer.``) and, when trained, ``text_encoder.``."""
    from peft.utils import get_peft_model_state_dict

    family = of(pipe)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = lambda state: {k: v.to(torch.float32).contiguous() for k, v in state.items()}  # noqa: E731
    layers = {family.lora_prefix: fp32(adapter_state(pipe))}
    meta = {family.lora_prefix: lora_config(cfg, family).to_dict()}
    te = getattr(pipe, "text_encoder", None)
    if te is not None and getattr(te, "peft_config", None) and ADAPTER in te.peft_config:
        layers["text_encoder"] = fp32(get_peft_model_state_dict(te, adapter_name=ADAPTER))
        meta["text_encoder"] = lora_config(cfg, family, text_encoder=True).to_dict()
    family.save_lora(pipe, folder, layers, meta)
    path = folder / LORA_FILE
    if metadata:
        add_safetensors_metadata(path, metadata)
    return path


def saved_network(path: str | Path, prefix: str) -> dict | None:
    """The peft config (a dict) a saved adapter file's header records for ``prefix``, or None."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    try:
        adapter = json.loads(header.get("lora_adapter_metadata", "{}"))
    except ValueError:
        return None
    config = {k[len(prefix) + 1 :]: v for k, v in adapter.items() if k.startswith(prefix + ".")}
    return config or None


def load_adapter(pipe, folder: str | Path) -> None:
    """Load a saved round adapter as the active ``gal`` adapter (used on resume). LoRA and DoRA load through
    diffusers; LoKr / LoHa (which diffusers' LoRA loader does not read) through peft, from the config the
    file's header records."""
    remove_adapter(pipe)
    family = of(pipe)
    _unwrap_empty(family.denoiser(pipe))  # another network's empty wrappers go
    path = Path(folder) / LORA_FILE
    config = saved_network(path, family.lora_prefix)
    if config is None or config.get("peft_type") not in ("LOKR", "LOHA"):
        pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name=ADAPTER)
        return
    from peft import LoHaConfig, LoKrConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    kind = LoKrConfig if config["peft_type"] == "LOKR" else LoHaConfig
    known = set(kind.__dataclass_fields__)
    peft_config = kind(**{k: v for k, v in config.items() if k in known and k != "peft_type"})
    denoiser = family.denoiser(pipe)
    dtype = denoiser.dtype
    denoiser.add_adapter(peft_config, adapter_name=ADAPTER)
    head = family.lora_prefix + "."
    state = {k[len(head) :]: v for k, v in load_file(str(path)).items() if k.startswith(head)}
    result = set_peft_model_state_dict(denoiser, state, adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{path}: {len(result.unexpected_keys)} keys do not fit this model")
    for name, p in denoiser.named_parameters():
        if any(k in name for k in ADAPTER_PARAMETERS):
            p.data = p.data.to(dtype)  # generation runs the adapter in the pipeline's dtype
            p.requires_grad_(False)


def add_safetensors_metadata(path: Path, extra: dict[str, str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update({k: str(v) for k, v in extra.items()})
    save_file(tensors, str(path), metadata=meta)
