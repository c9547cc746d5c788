"""peft DoRA / LoKr / LoHa adapters -> the kohya/LyCORIS keys ComfyUI and A1111/Forge read, at the trained
strength (checked against ComfyUI's ``comfy/weight_adapter/{lora,lokr,loha}.py`` and ``weight_decompose``
in ``tests/test_lycoris.py``).

- DoRA: ``lora_down``/``lora_up``/``alpha`` as a LoRA plus ``dora_scale`` [out, 1]. peft scales each output
  row of ``W + s·B·A`` to the magnitude ``m`` (norm of ``W + s·B·A``); ComfyUI, given a ``dora_scale`` on the
  output axis, divides by the norm of the *base* ``W``. So ``dora_scale = m · ‖W‖ / ‖W + s·B·A‖`` per row:
  the same weight in both (the base weights are read from the model at export).
- LoKr: ``lokr_w1``/``lokr_w2`` (or their ``_a``/``_b`` factors, ``lokr_t2``) as peft names them; ΔW =
  s · w1 ⊗ w2 in peft, while ComfyUI scales by ``alpha / dim`` only when a factor is decomposed: ``s`` is
  folded into w1 and ``alpha`` = ``dim`` (scale 1) where ComfyUI reads one.
- LoHa: ``hada_w1_a``/``hada_w1_b``/``hada_w2_a``/``hada_w2_b``; ΔW = s · (w1a·w1b) ⊙ (w2a·w2b) in both,
  ComfyUI's ``alpha / r`` = peft's ``s`` with ``alpha`` = the trained alpha.
"""

from __future__ import annotations

import torch

LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


def _by_module(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """peft keys (``<module>.<kind>[.weight]``) grouped by module path."""
    kinds = ("lora_A", "lora_B", "lora_magnitude_vector", *LOKR_KEYS, *LOHA_KEYS)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        parts = key.removesuffix(".weight").split(".")
        if parts[-1] not in kinds:
            raise ValueError(f"unexpected adapter key {key!r}: re-save the adapter with gal")
        out.setdefault(".".join(parts[:-1]), {})[parts[-1]] = value.float()
    return out


def lycoris_state_dict(
    state: dict[str, torch.Tensor],
    network: str,
    alpha: float,
    rank: int,
    base_weights: dict[str, torch.Tensor],
    prefix: str = "lora_unet",
) -> dict[str, torch.Tensor]:
    """``state``: the denoiser's peft adapter (keys without the ``unet.`` part); ``base_weights``: module
    path -> its frozen weight (DoRA needs it). Returns kohya/LyCORIS keys ``<prefix>_<module with _>.*``."""
    if network not in ("lora", "dora", "lokr", "loha"):
        raise ValueError(f"network {network!r}: choose lora, dora, lokr or loha")
    scale = float(alpha) / float(rank)
    out: dict[str, torch.Tensor] = {}
    for module, kinds in _by_module(state).items():
        name = f"{prefix}_{module.replace('.', '_')}"
        if network in ("lora", "dora"):
            down, up = kinds["lora_A"], kinds["lora_B"]
            out[f"{name}.lora_down.weight"] = down.contiguous()
            out[f"{name}.lora_up.weight"] = up.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
            if network == "dora":
                if module not in base_weights:
                    raise ValueError(f"DoRA export needs the base weight of {module}")
                weight = base_weights[module].float()
                norm = weight.norm(dim=1)
                merged = (weight + scale * (up @ down)).norm(dim=1)
                magnitude = kinds["lora_magnitude_vector"]
                out[f"{name}.dora_scale"] = (magnitude * norm / merged).unsqueeze(1).contiguous()
        elif network == "lokr":
            first = "lokr_w1" if "lokr_w1" in kinds else "lokr_w1_a"
            for kind, value in kinds.items():
                out[f"{name}.{kind}"] = (value * scale if kind == first else value).contiguous()
            dim = kinds["lokr_w2_b"].shape[0] if "lokr_w2_b" in kinds else None
            if dim is None and "lokr_w1_b" in kinds:
                dim = kinds["lokr_w1_b"].shape[0]
            if dim is not None:
                out[f"{name}.alpha"] = torch.tensor(float(dim))
        else:
            for kind in LOHA_KEYS:
                out[f"{name}.{kind}"] = kinds[kind].contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out
