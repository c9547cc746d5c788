"""The diffusers-format LoRA of an export: the round's adapter file with the provenance in its header and
the LoRA scale folded into the weights, so that every loader draws it at the trained strength.

diffusers reads alpha from the adapter metadata in the header; ComfyUI, Forge and A1111 read no header and
take a LoRA without ``.alpha`` tensors at scale 1. Folding ``alpha / r`` into each ``lora_B`` and writing
``alpha = r`` makes ΔW = B·A in every loader (the same ΔW = B·A·alpha/r the adapter trained)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gal.training import add_safetensors_metadata

ADAPTER_METADATA = "lora_adapter_metadata"  # diffusers' header key of the peft LoRA configs


def fold_lora_scale(state: dict[str, torch.Tensor], header: dict[str, str]) -> tuple[dict, dict]:
    """(state, header) with ``lora_B *= alpha / r`` per part and the part's ``lora_alpha = r``."""
    try:
        adapter = json.loads(header.get(ADAPTER_METADATA, "{}"))
    except ValueError:
        adapter = {}
    state = dict(state)
    for part in {k.partition(".")[0] for k in state}:
        alpha, rank = adapter.get(f"{part}.lora_alpha"), adapter.get(f"{part}.r")
        if alpha is None or rank is None or float(alpha) == float(rank):
            continue
        if adapter.get(f"{part}.alpha_pattern") or adapter.get(f"{part}.rank_pattern"):
            raise ValueError(f"the {part} adapter uses per-layer alpha/rank patterns: export cannot fold")
        scale = float(alpha) / float(rank)
        for key, value in state.items():
            if key.startswith(f"{part}.") and key.endswith("lora_B.weight"):
                state[key] = (value.float() * scale).to(value.dtype).contiguous()
        adapter[f"{part}.lora_alpha"] = rank
    header = {**header, ADAPTER_METADATA: json.dumps(adapter)} if adapter else dict(header)
    return state, header


def write_diffusers(source: Path, out: Path, provenance: dict) -> None:
    """The adapter file at ``out``, its scale folded in, with ``provenance`` added to its header."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), "pt") as f:
        header = f.metadata() or {}
    state, header = fold_lora_scale(load_file(str(source)), header)
    save_file(state, str(out), metadata=header)
    add_safetensors_metadata(out, provenance)
