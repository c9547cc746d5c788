"""Generator loading: a diffusers pipeline of a supported family (SD 1.x/2.x, SDXL, FLUX.1) from a name, a
folder, a single-file checkpoint or a config (see ``gal.families``).

``tiny`` / ``tiny-sdxl`` / ``tiny-flux`` build small random-init pipelines from configs with a fixed
seed and no download (the tests' model). ``toy`` is the trained toy world shipped in
``gal/assets/toyworld`` (drawn images a person can judge). Anything else is a hub id or a local
diffusers folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gal import families
from gal.families.base import of

# The tiny models' shared parts live with the families (re-exported for callers of gal.models).
from gal.families.tiny import TINY_CLIP_TEXT, TINY_VAE, clip_tokenizer  # noqa: F401
from gal.placement import place

ASSETS = Path(__file__).parent / "assets"
TOY_PIPELINE = ASSETS / "toyworld" / "pipeline"
TOY_CLIP = ASSETS / "toyworld" / "clip"


def default_model() -> str:
    """The offline default: the trained toy world when its weights are present, else ``tiny``."""
    return "toy" if (TOY_PIPELINE / "model_index.json").exists() else "tiny"


def default_oracle() -> str:
    return "toy" if (TOY_CLIP / "open_clip_config.json").exists() else "tiny"


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """fp32 on CPU (half is slow or unsupported there); on CUDA bf16 where supported, else fp16."""
    if device.type != "cuda" or precision == "no":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_tiny_pipeline(seed: int = 0):
    """The tiny SD pipeline (``tiny``): the SD family's ``build_tiny``."""
    return families.get(families.TINY["tiny"]).build_tiny(seed)


# -- loading -------------------------------------------------------------------------------------


def resolve_model_path(spec: str) -> str:
    """Map a model spec to what ``from_pretrained`` takes, failing fast with the fix when it can't exist.

    The tiny names pass through (they are built, not loaded)."""
    spec = split_single_file(spec)[0]
    if spec in families.TINY:
        return spec
    if spec == "toy":
        if not (TOY_PIPELINE / "model_index.json").exists():
            raise ValueError(f"the toy world's weights are missing from {TOY_PIPELINE}: use --model tiny")
        return str(TOY_PIPELINE)
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") > 1
    if looks_like_path:
        if path.is_file() and path.suffix == ".safetensors":
            return str(path)
        if not (path / "model_index.json").exists():
            raise ValueError(
                f"model folder {spec!r} not found or not a diffusers pipeline (no model_index.json): "
                "pass a folder saved with save_pretrained, a .safetensors checkpoint, a hub id like "
                "'stable-diffusion-v1-5/stable-diffusion-v1-5', or 'tiny' / 'tiny-sdxl' / 'tiny-flux'"
            )
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "model_index.json"), str):
            raise ValueError(
                f"model {spec!r} is not in the local Hugging Face cache "
                "and HF_HUB_OFFLINE=1 forbids a download: "
                "download it once with network access, pass a local folder, or use --model tiny"
            )
    return spec


def model_family(spec: str, config: str | None = None):
    """The family a model spec names, without loading weights (tiny names, folders, files, cached hub ids)."""
    base, config = split_single_file(spec, config)
    if base in families.TINY:
        return families.get(families.TINY[base])
    source = resolve_model_path(base)
    if Path(source).exists():
        return families.detect(source)
    from huggingface_hub import hf_hub_download

    index = hf_hub_download(source, "model_index.json")
    return families.detect(Path(index).parent)


def split_single_file(spec: str, config: str | None = None) -> tuple[str, str | None]:
    """``ckpt.safetensors?config=/folder`` names a single-file checkpoint and the diffusers folder (or hub
    id) whose configs and tokenizers it needs offline."""
    if "?config=" in spec:
        spec, config = spec.split("?config=", 1)
    return spec, config


def load_pipeline(
    spec: str,
    device: torch.device,
    dtype: torch.dtype,
    scheduler: str | None = None,
    *,
    config: str | None = None,
    placement: str | None = None,
):
    """Load a pipeline of any supported family by spec, move it to device/dtype and set its scheduler.
    ``placement`` (``gal.placement``): None puts it on the device whole where it fits, else in parts.

    ``spec``: ``tiny`` / ``tiny-sdxl`` / ``tiny-flux`` (random-init, offline), ``toy``, a hub id, a local
    diffusers folder, or a single-file ``.safetensors`` checkpoint with ``config`` (or
    ``spec?config=folder``): the local diffusers folder of the same family that supplies its configs.
    ``scheduler`` None: the family's default sampler.
    """
    spec, config = split_single_file(spec, config)
    if spec in families.TINY:
        family = families.get(families.TINY[spec])
        pipe = family.build_tiny()
    else:
        source = resolve_model_path(spec)
        try:
            if source.endswith(".safetensors"):
                family = families.detect(source)
                if config is None:
                    raise ValueError(
                        f"single-file checkpoint {spec!r} needs the diffusers folder of its family "
                        "for configs and "
                        f"tokenizers offline: pass '{spec}?config=/path/to/{family.name}-folder'"
                    )
                if Path(config).exists():
                    families.detect(config)  # a refiner/inpainting config fails here with the reason
                pipe = family.load_single_file(source, config, dtype)
            else:
                family = families.detect(source) if Path(source).exists() else None
                if family is None:
                    from diffusers import DiffusionPipeline

                    cls_name = DiffusionPipeline.load_config(source)["_class_name"]
                    family = families.from_class_name(cls_name, spec)
                pipe = family.pipeline_class().from_pretrained(source, dtype=dtype, **family.load_kwargs())
        except OSError as err:
            raise ValueError(
                f"could not load model {spec!r}: {err}. Pass a local folder or check the hub id"
            ) from err
    family.attach(pipe)  # the pipeline carries its family from here on: nothing downstream re-derives it
    if family.denoiser(pipe).dtype != dtype:  # from_pretrained already loaded in dtype; tiny is built in fp32
        pipe.to(dtype=dtype)
    for encoder in family.text_encoders(pipe):
        encoder.eval()
    place(pipe, family, device, placement)
    family.set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_scheduler(pipe, name: str | None) -> None:
    of(pipe).set_scheduler(pipe, name)


def native_resolution(pipe) -> int:
    return of(pipe).native_resolution(pipe)
