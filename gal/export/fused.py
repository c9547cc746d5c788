"""The fused export: the base pipeline with the round's LoRA merged in, saved as a diffusers folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def fused_pipeline(pipe):
    """The pipeline with the active LoRA merged in, for saving: components holding a LoRA are copied (to the
    CPU) and merged, the others are shared; the live pipeline keeps its adapter."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    parts = {}
    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module) and any(isinstance(m, BaseTunerLayer) for m in part.modules()):
            part = copy.deepcopy(part).to("cpu")
            for mod_name, mod in list(part.named_modules()):
                if isinstance(mod, BaseTunerLayer):  # merge W + scale * B A, then drop the LoRA wrapper
                    mod.merge(adapter_names=list(mod.active_adapters))
                    parent_name, _, child = mod_name.rpartition(".")
                    setattr(
                        part.get_submodule(parent_name) if parent_name else part, child, mod.get_base_layer()
                    )
            for attr in ("peft_config", "_hf_peft_config_loaded"):
                if attr in vars(part):
                    delattr(part, attr)
            if any(isinstance(m, BaseTunerLayer) for m in part.modules()):
                raise ValueError(f"could not merge the LoRA into the pipeline's {name}")
        parts[name] = part
    if "requires_safety_checker" in _init_params(type(pipe)):
        parts["requires_safety_checker"] = False
    fused = type(pipe)(**parts)
    fused.set_progress_bar_config(disable=True)
    return fused


def _init_params(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def save_fused_folder(fused, folder: Path, configs_only: bool = False) -> None:
    """A diffusers folder; ``configs_only`` keeps only configs and tokenizers (for from_single_file)."""
    fused.save_pretrained(folder)
    index = folder / "model_index.json"
    data = json.loads(index.read_text())
    if "requires_safety_checker" in data or "safety_checker" in data:
        data["requires_safety_checker"] = False
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if configs_only:
        for path in list(folder.rglob("*")):
            if path.is_file() and path.suffix in (".safetensors", ".bin", ".ckpt", ".pt"):
                path.unlink()
