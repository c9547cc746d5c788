"""ComfyUI's own LoRA loading code, run on CPU against our exported files (no ComfyUI install).

The ComfyUI sources are not part of this repository (GPL, and large): a ComfyUI tree at ``GAL_COMFYUI``
(default ``~/.cache/gal-studio/comfyui``, the one ``family_checks.comfy`` imports whole), or just its
LoRA code in the git-ignored ``.comfy/`` folder at the repository root —

    git -C <mirror of Comfy-Org/ComfyUI> archive HEAD comfy/lora.py comfy/weight_adapter | tar -x -C .comfy

plus ``<family>_keymap.py`` in either folder: a family's key map as ComfyUI's own code, for families newer
than the whole tree, written verbatim by ``scripts/comfy_keymaps.py`` from a ComfyUI version that has it
(its source named at the top). The tests that need them skip, naming this, when they are
missing. With a whole tree, ComfyUI's real package is imported (one ``comfy`` per test process, shared with
``family_checks``); with ``.comfy/`` alone,
``comfy.lora.load_lora`` + ``comfy.lora.calculate_weight`` +
``comfy.weight_adapter`` run unchanged and only ``comfy.model_management`` (device casting) and
``comfy.utils``/``comfy.model_base`` (not used on these paths) are stubbed.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from pathlib import Path

import torch
from family_checks import COMFYUI
from safetensors.torch import load_file

import storage
from gal.training import LORA_FILE

LOCAL = Path(__file__).resolve().parents[1] / ".comfy"
ROOTS = (COMFYUI, LOCAL)  # a whole ComfyUI tree first, then the LoRA code alone


def _root() -> Path:
    return next((r for r in ROOTS if (r / "comfy" / "lora.py").exists()), LOCAL)


def _keymap_file(name: str) -> Path:
    return next((r / f"{name}.py" for r in ROOTS if (r / f"{name}.py").exists()), LOCAL / f"{name}.py")


def available(keymap: str) -> str | None:
    """None when ComfyUI's code and the family's key map are there, else what is missing."""
    root = _root()
    for need in (root / "comfy" / "lora.py", root / "comfy" / "weight_adapter"):
        if not need.exists():
            return f"{need} missing (see tests/comfy_shim.py)"
    if not _keymap_file(keymap).exists():
        return (
            f"{_keymap_file(keymap)} missing: write it from a ComfyUI that knows the family with "
            "`python scripts/comfy_keymaps.py <ComfyUI folder> --source <repo@commit>`"
        )
    return None


def comfy_lora():
    """``comfy.lora``: ComfyUI's real package from a whole tree, else ``.comfy/`` with the GPU-management
    module stubbed."""
    if "comfy.lora" in sys.modules:
        return sys.modules["comfy.lora"]
    if (_root() / "comfy" / "model_management.py").exists():
        from family_checks import comfy

        return comfy().lora
    root = _root()
    pkg = types.ModuleType("comfy")
    pkg.__path__ = [str(root / "comfy")]
    mm = types.ModuleType("comfy.model_management")
    mm.cast_to_device = lambda t, device, dtype, copy=False: t.to(device=device, dtype=dtype, copy=copy)
    stubs = {
        "model_management": mm,
        "utils": types.ModuleType("comfy.utils"),
        "model_base": types.ModuleType("comfy.model_base"),
    }
    for name, module in stubs.items():
        setattr(pkg, name, module)
        sys.modules[f"comfy.{name}"] = module
    sys.modules["comfy"] = pkg
    return importlib.import_module("comfy.lora")


def keymap_module(name: str):
    spec = importlib.util.spec_from_file_location(f"comfy_keymap_{name}", _keymap_file(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Missing(logging.Handler):
    def __init__(self):
        super().__init__()
        self.keys: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("lora key not loaded: "):
            self.keys.append(msg.removeprefix("lora key not loaded: "))


def apply(lora: dict[str, torch.Tensor], key_map: dict, weights: dict[str, torch.Tensor], strength=1.0):
    """What ComfyUI does with ``lora``: ``load_lora`` through ``key_map``, then ``calculate_weight`` on each
    patched weight (slices through their offsets). Returns ``(patched weights, dropped lora keys)``."""
    lora_mod = comfy_lora()
    handler = _Missing()
    logging.getLogger().addHandler(handler)
    try:
        patches = lora_mod.load_lora(lora, key_map)
    finally:
        logging.getLogger().removeHandler(handler)
    grouped: dict[str, list] = {}
    for target, adapter in patches.items():  # as ModelPatcher.add_patches files them
        key, offset = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        grouped.setdefault(key, []).append((strength, adapter, 1.0, offset, None))
    out = {}
    for key, plist in grouped.items():
        out[key] = lora_mod.calculate_weight(plist, weights[key].clone().float(), key)
    return out, handler.keys


def native_weights(state: dict[str, torch.Tensor], to_native: dict) -> dict[str, torch.Tensor]:
    """ComfyUI-native weights from a diffusers state dict through ComfyUI's own diffusers->native table
    (``(name, (dim, start, size))`` entries are slices of a fused weight, e.g. q/k/v of ``qkv``)."""
    sizes: dict[str, int] = {}
    for key, target in to_native.items():
        if key in state and isinstance(target, tuple) and isinstance(target[1], tuple):
            name, (dim, start, size) = target
            sizes[name] = max(sizes.get(name, 0), start + size)
    native: dict[str, torch.Tensor] = {}
    for key, target in to_native.items():
        if key not in state:
            continue
        if isinstance(target, tuple) and isinstance(target[1], tuple):
            name, (dim, start, size) = target
            if name not in native:
                native[name] = torch.zeros(sizes[name], *state[key].shape[1:])
            native[name].narrow(dim, start, size).copy_(state[key])
        elif isinstance(target, str):
            native[target] = state[key].clone()
    return native


def check_strength(trained, patched, native, to_native, scale, prefix="transformer"):
    """Each trained module's ΔW in ComfyUI's patched weights (its slice of a fused weight) equals
    B·A·scale; returns the modules checked."""
    modules = {
        k.removeprefix(f"{prefix}.").removesuffix(".lora_A.weight") for k in trained if ".lora_A." in k
    }
    for module in modules:
        delta = trained[f"{prefix}.{module}.lora_B.weight"] @ trained[f"{prefix}.{module}.lora_A.weight"]
        target = to_native[f"{module}.weight"]
        name, offset = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        got = patched[name] - native[name]
        if offset is not None:
            got = got.narrow(*offset)
        torch.testing.assert_close(got, delta.float() * scale, atol=1e-5, rtol=1e-4)
    return modules


def check_file(family, keymap: str, table: str, unet_config: dict, lora, trained, scale: float):
    """ComfyUI's key map ``keymap`` (module in ``.comfy/``: its ``table`` diffusers -> native names and its
    ``<class>_lora_keys``) on the ComfyUI file ``lora`` against ``family``'s tiny transformer: asserts 0 keys
    dropped and ΔW = B·A·``scale`` per ``trained`` module; returns the modules checked."""
    module = keymap_module(keymap)
    (lora_keys,) = [getattr(module, n) for n in dir(module) if n.endswith("_lora_keys")]
    to_native = getattr(module, table)(unet_config, output_prefix="diffusion_model.")
    native = native_weights(family.build_tiny().transformer.state_dict(), to_native)
    key_map = lora_keys(unet_config, {}, sdk=native.keys())
    patched, dropped = apply(lora, key_map, native)
    assert dropped == [], f"ComfyUI drops {dropped}"
    modules = check_strength(trained, patched, native, to_native, scale)
    targets = (to_native[f"{m}.weight"] for m in modules)
    assert set(patched) == {t if isinstance(t, str) else t[0] for t in targets}  # only what was trained
    return modules


def exported_and_trained(finished, out: Path):
    """A finished shared run's ComfyUI file (exported to ``out``), its last round's trained adapter (diffusers
    names) and the adapter's scale alpha/r: what ``check_file`` compares."""
    studio, run_id, train = finished.studio, finished.run_id, finished.config.train
    lora = load_file(str(studio.export(run_id, out, ("kohya",))["kohya"]))
    with storage.open_db(studio.db_path) as db:
        last = storage.list_rounds(db, run_id)[-1]["adapter_path"]
    trained = load_file(str(studio.run_dir(run_id) / last / LORA_FILE))
    return lora, trained, train.lora_alpha / train.rank
