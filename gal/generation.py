"""Batched generation with one seed per image, so any image can be regenerated alone.

Each family draws with its own pipeline and arguments (``gal.families``: negative prompt and CFG for
SD/SDXL, distilled guidance and the T5 length for FLUX.1). Images of several prompts share a batch;
each image's initial latent comes from its own ``torch.Generator(seed)``, so an image is the same
whether drawn alone or in a batch (up to float rounding of batched kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from gal import placement
from gal.config import GenerateConfig
from gal.families.base import flag, of
from gal.seeds import image_seed  # noqa: F401  (re-exported: generation's seed rule)
from gal.training import Cancelled, place_for_generation


def _generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    # Latents are drawn on the CPU generator so the same seed gives the same image on CPU and CUDA.
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    cfg: GenerateConfig,
    *,
    resolution: int,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    on_batch: Callable[[int, list[Image.Image]], None] | None = None,
) -> list[Image.Image]:
    """Generate one image per (prompt, seed), ``cfg.batch_size`` at a time.

    ``on_batch(start, images)`` is called after each batch (the engine saves as it goes, so a killed
    run keeps what it drew).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    family = of(pipe)
    place_for_generation(pipe, family, resolution)
    apply_memory_options(pipe, family, cfg)
    prepare_for_cuda(pipe, family, cfg)
    images: list[Image.Image] = []
    total = len(prompts)
    batch_size = cfg.batch_size
    start = 0
    while start < total:
        if cancel is not None and cancel():
            raise Cancelled(f"generation cancelled after {start}/{total} images")
        batch_prompts = list(prompts[start : start + batch_size])
        batch_seeds = list(seeds[start : start + batch_size])
        try:
            out = pipe(
                prompt=batch_prompts,  # FLUX.2 pipelines take an image first
                **family.pipe_kwargs(cfg, len(batch_prompts)),
                **family.call_kwargs(pipe),
                height=getattr(cfg, "height", None) or resolution,  # square at ``resolution`` unless set
                width=getattr(cfg, "width", None) or resolution,
                generator=_generators(batch_seeds, pipe.device),
            ).images
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            # The largest batch that fits: halve and draw this batch again (each image keeps its own seed,
            # so the images are the same at any batch size).
            batch_size = max(1, batch_size // 2)
            torch.cuda.empty_cache()
            continue
        images.extend(out)
        if on_batch is not None:
            on_batch(start, out)
        start += len(batch_prompts)
        if progress is not None:
            progress(start, total)
    return images


def prepare_for_cuda(pipe, family, cfg: GenerateConfig) -> None:
    """diffusers' fast path on a GPU: the denoiser in channels-last memory layout (SDPA attention is
    diffusers' default) and, with ``generate.compile``, compiled once (off by default: compiling costs a
    minute and an adapter swap recompiles). Nothing changes on CPU."""
    denoiser = family.denoiser(pipe)
    if placement.compute_device(pipe, family).type != "cuda" or getattr(pipe, "_gal_cuda_ready", False):
        return
    if family.channels_last:  # 4-D convolutions gain from channels-last; transformers do not
        denoiser.to(memory_format=torch.channels_last)
    if getattr(cfg, "compile", False):
        denoiser.compile()
    pipe._gal_cuda_ready = True


def apply_memory_options(pipe, family, cfg: GenerateConfig) -> None:
    """VAE tiling/slicing and model CPU offload (None: the family's need on CUDA, off on CPU).

    Without offload, text encoders that training moved to the CPU after caching come back to the device."""
    offloaded = getattr(pipe, "_gal_offloaded", None)
    device = offloaded or placement.compute_device(pipe, family)

    def on(name: str) -> bool:
        return flag(getattr(cfg, name, None), getattr(family.defaults, name, False), device)

    pipe.vae.enable_tiling() if on("vae_tiling") else pipe.vae.disable_tiling()
    pipe.vae.enable_slicing() if on("vae_slicing") else pipe.vae.disable_slicing()
    if offloaded or placement.is_parts(pipe):  # parts: gal.placement already moves what runs
        return
    if on("cpu_offload"):
        if device.type != "cuda":
            raise ValueError("generate.cpu_offload needs the model on a CUDA GPU: turn it off on CPU")
        pipe.enable_model_cpu_offload(device=device)
        pipe._gal_offloaded = device  # training undoes it (gal.training.undo_cpu_offload)
        return
    for encoder in family.text_encoders(pipe):
        if encoder.device != device:
            encoder.to(device)
