"""Model families: what differs between model families, behind one object each (``gal.families.base``).

Adding a family: one file with a ``Family`` subclass and one line in ``FAMILIES`` below.

``detect(source)`` names a family from a diffusers folder's ``model_index.json`` or a single-file
checkpoint's keys; ``family_of(pipe)`` from a loaded pipeline; ``defaults(name)`` gives what the app
and CLI fill in (resolution, lr, rank, steps, guidance, sampler, memory options).
"""

from __future__ import annotations

import json
from pathlib import Path

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.chroma import ChromaFamily
from gal.families.flux import FluxFamily
from gal.families.flux2 import Flux2Family
from gal.families.hidream import HiDreamFamily
from gal.families.ideogram4 import Ideogram4Family
from gal.families.krea2 import Krea2Family
from gal.families.lumina2 import Lumina2Family
from gal.families.qwenimage import QwenImageFamily
from gal.families.sana import SanaFamily
from gal.families.sd import SDFamily
from gal.families.sd3 import SD3Family
from gal.families.sdxl import SDXLFamily
from gal.families.zimage import ZImageFamily

# The registry: one line per family.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        SDFamily(),
        SDXLFamily(),
        FluxFamily(),
        SD3Family(),
        ChromaFamily(),
        QwenImageFamily(),
        ZImageFamily(),
        Flux2Family(),
        Krea2Family(),
        Lumina2Family(),
        SanaFamily(),
        HiDreamFamily(),
        Ideogram4Family(),
    )
}
TINY = {f.tiny_name: f.name for f in FAMILIES.values()}  # random-init test models per family

# Pipelines of no family's lineage that people try, with why: named in the error.
_UNSUPPORTED = {
    "StableVideoDiffusionPipeline": "Stable Video Diffusion (video)",
    "TextToVideoSDPipeline": "text-to-video",
    "AnimateDiffPipeline": "AnimateDiff (video)",
}


def supported() -> str:
    return ", ".join(f"{f.pipeline_classes[0]} ({f.label})" for f in FAMILIES.values())


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def defaults(name: str) -> FamilyDefaults:
    """The family's defaults (resolution, lr, rank, steps, guidance, sampler, memory options)."""
    return get(name).defaults


def config_defaults(name: str) -> dict[str, dict]:
    """The family's defaults in RunConfig's shape (``{"train": {...}, "generate": {...}}``), for the app/CLI
    to merge under what the person set explicitly (full-size models; the tiny ones keep the tests'
    settings)."""
    d = get(name).defaults
    return {
        "train": {
            "learning_rate": d.learning_rate,
            "rank": d.rank,
            "alpha": None,  # alpha = rank (scale 1), also when the rank is changed after
            "target_modules": list(d.target_modules),
        },
        "generate": {"steps": d.steps, "guidance_scale": d.guidance_scale, "scheduler": d.scheduler},
    }


def from_class_name(class_name: str, where: str = "") -> Family:
    for family in FAMILIES.values():
        if class_name in family.pipeline_classes:
            return family
    unsupported = dict(_UNSUPPORTED)
    for family in FAMILIES.values():
        unsupported.update(family.unsupported)
    what = unsupported.get(class_name) or ("video" if "Video" in class_name else None)
    reason = f" ({what})" if what else ""
    raise ValueError(
        f"{where or 'model'} is a {class_name}{reason}, which GAL Studio cannot train: use a {supported()}"
    )


def family_of(pipe) -> Family:
    """The family of a pipeline by its class (subclasses of a supported pipeline work too). Called where a
    model is loaded or built (``gal.models``); everything after reads ``pipe.gal_family``."""
    for cls in type(pipe).__mro__:
        for family in FAMILIES.values():
            if cls.__name__ in family.pipeline_classes:
                return family
    return from_class_name(type(pipe).__name__)


def detect(source: str | Path) -> Family:
    """The family of a diffusers folder (``model_index.json`` ``_class_name``) or a ``.safetensors`` file."""
    path = Path(source).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.exists():
            raise ValueError(
                f"{path} has no model_index.json: pass a diffusers pipeline folder or a .safetensors file"
            )
        try:
            class_name = json.loads(index.read_text())["_class_name"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{index} is not a diffusers model index ({err}): re-save it with save_pretrained"
            ) from err
        family = from_class_name(class_name, str(path))
        family.check_folder(path, json.loads(index.read_text()))
        return family
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            shapes = {k: f.get_slice(k).get_shape() for k in keys if k.endswith(_shape_keys())}
        return detect_keys(keys, shapes, str(path))
    raise ValueError(f"{source} is neither a diffusers folder nor a .safetensors checkpoint")


def detect_keys(
    keys: list[str], shapes: dict[str, list[int]] | None = None, where: str = "checkpoint"
) -> Family:
    """The family of a single-file checkpoint from its tensor names (original or diffusers layout): each
    family looks in ``detect_priority`` order (specific layouts before the generic UNet)."""
    shapes = shapes or {}
    strip = [k.removeprefix("model.diffusion_model.") for k in keys]
    if any("time_stack" in k or "temporal" in k for k in strip):
        raise ValueError(f"{where} is a video model, which GAL Studio cannot train: use a {supported()}")
    for family in sorted(FAMILIES.values(), key=lambda f: f.detect_priority):
        try:
            if family.claims_keys(strip, shapes, where):
                return family
        except ValueError as err:
            raise ValueError(f"{err}: use a {supported()}") from err
    raise ValueError(
        f"{where}: no UNet or transformer weights of a supported family found; use a {supported()} checkpoint"
    )


def _shape_keys() -> tuple[str, ...]:
    return tuple(k for f in FAMILIES.values() for k in f.shape_keys)


__all__ = [
    "FAMILIES",
    "TINY",
    "ExportFacts",
    "Family",
    "FamilyDefaults",
    "defaults",
    "detect",
    "detect_keys",
    "family_of",
    "get",
]
