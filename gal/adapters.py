"""The ``gal`` adapter: its peft config per network (LoRA, DoRA, LoKr, LoHa), attaching it to a denoiser
(and the text encoder), its state, and saving / loading it in diffusers format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gal.config import TrainConfig
from gal.families.base import of, target_modules

ADAPTER = "gal"
# peft's parameter names of LoRA / DoRA (lora_A, lora_B, lora_magnitude_vector), LoKr and LoHa
ADAPTER_PARAMETERS = ("lora_", "lokr_", "hada_")
LORA_FILE = "pytorch_lora_weights.safetensors"


def lora_config(cfg: TrainConfig, family=None, *, text_encoder: bool = False):
    """The peft adapter config of ``cfg.network`` (LoraConfig, with ``use_dora`` for DoRA; LoKrConfig;
    LoHaConfig) on the config's target modules, or the family's when they are left at the SD default.
    The text encoder's adapter is always a plain LoRA."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    targets = list(family.text_encoder_targets if text_encoder else target_modules(cfg, family))
    network = "lora" if text_encoder else getattr(cfg, "network", "lora")
    alpha = cfg.lora_alpha  # the adapter's alpha (the rank when left unset), read in this one place
    if network == "lokr":  # zero-initialised w2: the adapter starts as the base, as LoRA's zero B does
        return LoKrConfig(r=cfg.rank, alpha=alpha, target_modules=targets, init_weights=True)
    if network == "loha":
        return LoHaConfig(r=cfg.rank, alpha=alpha, target_modules=targets, init_weights=True)
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=alpha,
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


def settle_adapter(pipe) -> None:
    """In "parts" placement (``gal.placement``) the adapter's weights, created beside base weights that may
    sit on the CPU, go to the compute device, in place (the optimizer's parameter objects stay the same)."""
    from gal.placement import is_parts

    if not is_parts(pipe):
        return
    device = pipe._gal_device
    for name, p in of(pipe).denoiser(pipe).named_parameters():
        if any(k in name for k in ADAPTER_PARAMETERS) and p.device != device:
            p.data = p.data.to(device)


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
        settle_adapter(pipe)
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
    settle_adapter(pipe)


def add_safetensors_metadata(path: Path, extra: dict[str, str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update({k: str(v) for k, v in extra.items()})
    save_file(tensors, str(path), metadata=meta)
