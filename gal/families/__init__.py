"""Model families: what differs between SD 1.x/2.x, SDXL and FLUX.1, behind one small object each.

``detect(source)`` names a family from a diffusers folder's ``model_index.json`` or a single-file
checkpoint's keys; ``family_of(pipe)`` from a loaded pipeline; ``defaults(name)`` gives what the app
and CLI fill in (resolution, lr, rank, steps, guidance, sampler, memory options).
"""

from __future__ import annotations

import json
from pathlib import Path

from gal.families.flux import FluxFamily
from gal.families.sd import Family, FamilyDefaults
from gal.families.sdxl import SDXLFamily

FAMILIES: dict[str, Family] = {f.name: f for f in (Family(), SDXLFamily(), FluxFamily())}
TINY = {"tiny": "sd", "tiny-sdxl": "sdxl", "tiny-flux": "flux"}  # random-init test models per family

# Pipelines people try that this app cannot train, with why: named in the error.
_UNSUPPORTED = {
    "StableDiffusionXLImg2ImgPipeline": "the SDXL refiner (img2img only, no text-to-image base)",
    "StableDiffusionXLInpaintPipeline": "SDXL inpainting",
    "StableDiffusionInpaintPipeline": "SD inpainting",
    "StableDiffusionImg2ImgPipeline": "SD img2img",
    "FluxFillPipeline": "FLUX.1 Fill (inpainting)",
    "FluxImg2ImgPipeline": "FLUX.1 img2img",
    "FluxKontextPipeline": "FLUX.1 Kontext (editing)",
    "StableVideoDiffusionPipeline": "Stable Video Diffusion (video)",
    "TextToVideoSDPipeline": "text-to-video",
    "AnimateDiffPipeline": "AnimateDiff (video)",
}


def supported() -> str:
    return (
        "StableDiffusionPipeline (SD 1.x/2.x), StableDiffusionXLPipeline (SDXL base), FluxPipeline (FLUX.1)"
    )


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
            "alpha": float(d.rank),
            "target_modules": list(d.target_modules),
        },
        "generate": {"steps": d.steps, "guidance_scale": d.guidance_scale, "scheduler": d.scheduler},
    }


def from_class_name(class_name: str, where: str = "") -> Family:
    for family in FAMILIES.values():
        if class_name in family.pipeline_classes:
            return family
    what = _UNSUPPORTED.get(class_name) or ("video" if "Video" in class_name else None)
    reason = f" ({what})" if what else ""
    raise ValueError(
        f"{where or 'model'} is a {class_name}{reason}, which GAL Studio cannot train: use a {supported()}"
    )


def family_of(pipe) -> Family:
    """The family of a loaded pipeline (by class, so subclasses of a supported pipeline work too)."""
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
        _check_not_refiner(path, family)
        return family
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            shapes = {k: f.get_slice(k).get_shape() for k in keys if k.endswith(_SHAPE_KEYS)}
        return detect_keys(keys, shapes, str(path))
    raise ValueError(f"{source} is neither a diffusers folder nor a .safetensors checkpoint")


_SHAPE_KEYS = ("input_blocks.0.0.weight", "conv_in.weight", "x_embedder.weight", "img_in.weight")


def detect_keys(
    keys: list[str], shapes: dict[str, list[int]] | None = None, where: str = "checkpoint"
) -> Family:
    """The family of a single-file checkpoint from its tensor names (LDM/BFL original or diffusers layout)."""
    shapes = shapes or {}
    strip = [k.removeprefix("model.diffusion_model.") for k in keys]
    if any(k.startswith(("double_blocks.", "single_blocks.")) for k in strip) or any(
        k.startswith("single_transformer_blocks.") for k in strip
    ):
        if any("img_in" in k or "x_embedder" in k for k in strip):
            width = next(
                (s[1] for k, s in shapes.items() if k.endswith(("img_in.weight", "x_embedder.weight"))), 64
            )
            if width != 64 and width > 16:  # FLUX.1 takes 16 ch × 2×2 patches; Fill/Depth/Kontext take more
                raise ValueError(
                    f"{where} is a FLUX.1 variant with {width} input channels (Fill/Depth/Redux?), "
                    f"which GAL Studio cannot train: use a {supported()}"
                )
        return FAMILIES["flux"]
    if any("time_stack" in k or "temporal" in k for k in strip):
        raise ValueError(f"{where} is a video model, which GAL Studio cannot train: use a {supported()}")
    unet_like = any(k.startswith(("input_blocks.", "down_blocks.")) for k in strip)
    if not unet_like:
        raise ValueError(
            f"{where}: no UNet or Flux transformer weights found; use a {supported()} checkpoint"
        )
    in_channels = next(
        (
            s[1]
            for k, s in shapes.items()
            if k.endswith(("input_blocks.0.0.weight", "conv_in.weight"))
            and "vae" not in k
            and "first_stage" not in k
        ),
        4,
    )
    if in_channels not in (4,):
        raise ValueError(
            f"{where} has a {in_channels}-channel UNet input (inpainting?), which GAL Studio cannot "
            f"train: use a {supported()}"
        )
    if any(k.startswith("conditioner.embedders.1.") for k in keys) or any(
        k.startswith("add_embedding.") for k in strip
    ):
        return FAMILIES["sdxl"]
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise ValueError(
            f"{where} looks like the SDXL refiner (one OpenCLIP embedder, img2img only), "
            "which GAL Studio cannot train: use the SDXL base"
        )
    return FAMILIES["sd"]


def _check_not_refiner(folder: Path, family: Family) -> None:
    if family.name != "sdxl":
        return
    index = json.loads((folder / "model_index.json").read_text())
    if index.get("text_encoder") in (None, [None, None]) or index.get("requires_aesthetics_score"):
        raise ValueError(
            f"{folder} is an SDXL refiner config (no first text encoder / aesthetics score): "
            "use the SDXL base"
        )


__all__ = [
    "FAMILIES",
    "TINY",
    "Family",
    "FamilyDefaults",
    "defaults",
    "detect",
    "detect_keys",
    "family_of",
    "get",
]
