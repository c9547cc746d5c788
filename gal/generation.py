"""Batched generation with one seed per image, so any image can be regenerated alone.

Images of several prompts share a UNet batch; each image's initial latent comes from its own
``torch.Generator(seed)``, so an image is the same whether drawn alone or in a batch (up to float
rounding of batched kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from gal.config import GenerateConfig
from gal.seeds import image_seed  # noqa: F401  (re-exported: generation's seed rule)
from gal.training import Cancelled


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
    images: list[Image.Image] = []
    total = len(prompts)
    for start in range(0, total, cfg.batch_size):
        if cancel is not None and cancel():
            raise Cancelled(f"generation cancelled after {start}/{total} images")
        batch_prompts = list(prompts[start : start + cfg.batch_size])
        batch_seeds = list(seeds[start : start + cfg.batch_size])
        out = pipe(
            batch_prompts,
            negative_prompt=[cfg.negative_prompt] * len(batch_prompts) if cfg.negative_prompt else None,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            height=resolution,
            width=resolution,
            generator=_generators(batch_seeds, pipe.device),
        ).images
        images.extend(out)
        if on_batch is not None:
            on_batch(start, out)
        if progress is not None:
            progress(min(start + cfg.batch_size, total), total)
    return images
