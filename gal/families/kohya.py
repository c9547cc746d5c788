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
