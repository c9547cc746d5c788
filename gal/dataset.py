"""The training set: reference images as tensors, their cached latent moments and each step's batch.

``TrainExample`` is one reference (a person's, an added one or a class image) with its caption, loss
weight and optional loss mask; ``image_to_tensor`` resizes and crops it (``loss_masks`` its mask);
``latent_moments`` encodes the references once per round; ``draw_batch`` draws one step's indices and
loss coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from gal.config import TrainConfig
from gal.families.base import fit_mask, of

TRAINING_SET = "training_set.json"  # beside the adapter: each reference's file, caption, weight and source


@dataclass
class TrainExample:
    image: Image.Image
    prompt: str
    weight: float  # real references 1.0; synthetic ones the Δ of the round that added them
    added: bool = False  # added by a GAL round (synthetic), not one of the person's references
    mask: Image.Image | None = None  # where the loss counts fully (white); elsewhere ``train.mask_floor``


def _square(image: Image.Image, resolution: int, resample) -> Image.Image:
    """Resize the short side to ``resolution`` and centre-crop a square."""
    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), resample)
    w, h = image.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize the short side to ``resolution``, centre-crop, scale to [-1, 1]. ``-> [3, H, W]``."""
    image = _square(image.convert("RGB"), resolution, Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def mask_to_tensor(mask: Image.Image, resolution: int) -> torch.Tensor:
    """A mask cropped as its image is (``image_to_tensor``), scaled to [0, 1]. ``-> [1, H, W]``."""
    array = np.asarray(_square(mask.convert("L"), resolution, Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]


def loss_masks(examples: list[TrainExample], resolution: int, latents: torch.Tensor) -> torch.Tensor | None:
    """Each example's mask at the latents' size ``[n, 1, h, w]`` (area-averaged; an example without a mask,
    as every added or class image, is all ones), or None when no example has one (the plain loss)."""
    if all(e.mask is None for e in examples):
        return None
    ones = torch.ones(1, resolution, resolution)
    pixels = torch.stack([ones if e.mask is None else mask_to_tensor(e.mask, resolution) for e in examples])
    return fit_mask(pixels, latents).to(latents.device)


@torch.no_grad()
def latent_moments(pipe, images: list[Image.Image], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    vae = pipe.vae
    pixels = torch.stack([image_to_tensor(im, resolution) for im in images]).to(vae.device, vae.dtype)
    means, stds = [], []
    for start in range(0, len(pixels), 8):
        mean, std = of(pipe).latent_dist(pipe, pixels[start : start + 8])
        means.append(mean)
        stds.append(std)
    return torch.cat(means), torch.cat(stds)


def draw_batch(
    examples: list[TrainExample], cfg: TrainConfig, generator: torch.Generator, *, n_class: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's sample indices and their loss coefficients (the loss is ``Σ coef · weight · mse``).

    ``pooled`` draws ``batch_size`` from all references: the loss estimates ``mean_i w_i ℓ_i`` over
    them, so each added image dilutes the real ones. ``real-rate`` draws ``batch_size`` real references
    as round 1 does plus ``max(1, batch_size // 2)`` added ones, scaled by ``n_added / n_real``: the
    loss estimates ``Σ_i w_i ℓ_i / n_real``, so real references keep their round-1 gradient and an added
    image contributes its weight's worth on top. Class images (prior preservation) are appended one per
    instance sample and the instance and class halves averaged, as in DreamBooth.
    """
    b = cfg.batch_size
    real = [i for i, e in enumerate(examples) if not e.added]
    added = [i for i, e in enumerate(examples) if e.added]
    if cfg.reference_sampling == "real-rate" and real and added:
        real_idx = torch.tensor(real)[torch.randint(0, len(real), (b,), generator=generator)]
        b_added = max(1, b // 2)
        added_idx = torch.tensor(added)[torch.randint(0, len(added), (b_added,), generator=generator)]
        batch = torch.cat([real_idx, added_idx])
        coef = torch.cat(
            [torch.full((b,), 1.0 / b), torch.full((b_added,), len(added) / (len(real) * b_added))]
        )
    else:
        batch = torch.randint(0, len(examples), (b,), generator=generator)
        coef = torch.full((b,), 1.0 / b)
    if n_class:
        # Prior preservation: pair each instance sample with a class sample (DreamBooth).
        n = len(batch)
        batch = torch.cat([batch, len(examples) + torch.randint(0, n_class, (n,), generator=generator)])
        coef = torch.cat([coef, torch.full((n,), 1.0 / n)]) / 2
    return batch, coef
