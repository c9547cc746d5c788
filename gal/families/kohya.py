"""kohya/A1111 LoRA key naming for families whose original layout keeps diffusers' module paths
(``lora_unet_<module path with _>``, ``lora_te…``): what diffusers' ``convert_state_dict_to_kohya`` and
kohya's SD1/SDXL loaders name, and what ComfyUI's ``model_lora_keys_unet`` maps for UNet families."""

from __future__ import annotations

import torch


def module_kohya_state_dict(
    diffusers_state: dict[str, torch.Tensor],
    scales: dict[str, tuple[float, int | None]],
    prefixes: dict[str, str],
    what: str,
    rename=None,
) -> dict[str, torch.Tensor]:
    """diffusers LoRA keys -> kohya keys with ``.alpha`` tensors = the trained alpha (not the rank).

    ``prefixes``: diffusers part (``unet``, ``text_encoder``, ...) -> kohya prefix. ``rename(part, module)``
    maps a diffusers module path to the original one (default: unchanged). Text encoder: transformers 5
    flattened CLIPTextModel (no ``text_model.``); kohya and ComfyUI expect it, so it is put back."""
    from diffusers.utils import convert_all_state_dict_to_peft

    by_component: dict[str, dict] = {}
    for key, value in diffusers_state.items():
        by_component.setdefault(key.partition(".")[0], {})[key] = value
    peft = {}
    for part in by_component.values():  # one at a time: the converter guesses one key style per dict
        peft.update(convert_all_state_dict_to_peft(part))
    out: dict[str, torch.Tensor] = {}
    for key, value in peft.items():
        component, _, rest = key.partition(".")
        if component not in prefixes:
            raise ValueError(
                f"the LoRA holds {component}.* weights, which the kohya export of {what} cannot name"
            )
        module, _, kind = rest.rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise ValueError(f"unexpected LoRA key {key!r}: re-save the adapter with diffusers")
        if component.startswith("text_encoder") and not module.startswith("text_model."):
            module = f"text_model.{module}"
        if rename is not None:
            module = rename(component, module)
        name = f"{prefixes[component]}_{module.replace('.', '_')}"
        out[f"{name}.{'lora_down' if kind == 'A.weight' else 'lora_up'}.weight"] = value.contiguous()
        if kind == "A.weight":
            alpha, rank = scales.get(component, (float(value.shape[0]), None))
            if rank is not None and int(rank) != value.shape[0]:
                raise ValueError(
                    f"{key} has rank {value.shape[0]} but the adapter says r={rank}: re-export the round"
                )
            out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def folded_state_dict(
    diffusers_state: dict[str, torch.Tensor],
    scales: dict[str, tuple[float, int | None]],
    part: str,
    prefix: str,
    label: str,
    alpha_tensors: bool = True,
) -> dict[str, torch.Tensor]:
    """``<part>.<module>.lora_A/B.weight`` -> ``<prefix>.<module>.lora_A/B.weight`` with ``lora_B ·= alpha/r``
    and ``<prefix>.<module>.alpha = r`` (per module: ΔW = B·A·alpha/r unchanged; loaders that read the
    ``.alpha`` tensor and those that default to scale 1 agree, and so does kohya's ``ss_network_alpha``).
    ``alpha_tensors=False`` leaves them out (diffusers' FLUX.2 loader refuses ``.alpha`` keys beside
    ``transformer.…lora_A/B``)."""
    alpha, rank = scales.get(part, (None, None))
    out: dict[str, torch.Tensor] = {}
    for key, value in diffusers_state.items():
        head, _, rest = key.partition(".")
        if head != part:
            raise ValueError(f"the {label} LoRA holds {key!r}: only the {part} is adapted here")
        module, _, kind = rest.rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise ValueError(f"unexpected LoRA key {key!r}: re-save the adapter with diffusers")
        if kind == "B.weight":
            r = value.shape[1]
            if rank is not None and int(rank) != r:
                raise ValueError(f"{key} has rank {r} but the adapter says r={rank}: re-export the round")
            value = value.float() * (float(alpha if alpha is not None else r) / r)
            if alpha_tensors:  # scale 1 stated per module: kohya's header (read from the tensors) agrees
                out[f"{prefix}.{module}.alpha"] = torch.tensor(float(r))
        out[f"{prefix}.{module}.lora_{kind}"] = value.contiguous()
    return out
