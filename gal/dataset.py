"""The training set: reference images as tensors, their cached latent moments and each step's batch.

``TrainExample`` is one reference (a person's, an added one or a class image) with its caption, loss
weight and optional loss mask; ``image_to_tensor`` resizes and crops it (``loss_masks`` its mask);
``latent_moments`` encodes the references once per round; ``draw_batch`` draws one step's indices and
loss coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


Size = tuple[int, int]  # (width, height) in px


def _size(resolution: int | Size) -> Size:
    return (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)


def cover(image: Image.Image, size: Size, resample) -> tuple[Image.Image, tuple[int, int]]:
    """Resize ``image`` to cover ``size`` (w, h) keeping its aspect ratio, centre-crop to it; also return the
    crop's top-left corner (top, left) in the resized image (SDXL's ``crops_coords_top_left``)."""
    tw, th = size
    w, h = image.size
    scale = max(tw / w, th / h)
    image = image.resize((max(tw, round(w * scale)), max(th, round(h * scale))), resample)
    w, h = image.size
    left, top = (w - tw) // 2, (h - th) // 2
    return image.crop((left, top, left + tw, top + th)), (top, left)


def image_to_tensor(image: Image.Image, resolution: int | Size) -> torch.Tensor:
    """Resize to cover ``resolution`` (a square side, or (w, h)), centre-crop, scale to [-1, 1].
    ``-> [3, H, W]``."""
    image = cover(image.convert("RGB"), _size(resolution), Image.BICUBIC)[0]
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def mask_to_tensor(mask: Image.Image, resolution: int | Size) -> torch.Tensor:
    """A mask cropped as its image is (``image_to_tensor``), scaled to [0, 1]. ``-> [1, H, W]``."""
    cropped = cover(mask.convert("L"), _size(resolution), Image.BILINEAR)[0]
    return torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0)[None]


def loss_masks(
    examples: list[TrainExample], resolution: int | Size, latents: torch.Tensor
) -> torch.Tensor | None:
    """Each example's mask at the latents' size ``[n, 1, h, w]`` (area-averaged; an example without a mask,
    as every added or class image, is all ones), or None when no example has one (the plain loss)."""
    if all(e.mask is None for e in examples):
        return None
    w, h = _size(resolution)
    ones = torch.ones(1, h, w)
    pixels = torch.stack([ones if e.mask is None else mask_to_tensor(e.mask, (w, h)) for e in examples])
    return fit_mask(pixels, latents).to(latents.device)


@torch.no_grad()
def latent_moments(
    pipe, images: list[Image.Image], resolution: int | Size
) -> tuple[torch.Tensor, torch.Tensor]:
    vae = pipe.vae
    pixels = torch.stack([image_to_tensor(im, resolution) for im in images]).to(vae.device, vae.dtype)
    means, stds = [], []
    for start in range(0, len(pixels), 8):
        mean, std = of(pipe).latent_dist(pipe, pixels[start : start + 8])
        means.append(mean)
        stds.append(std)
    return torch.cat(means), torch.cat(stds)


# -- aspect-ratio buckets ---------------------------------------------------------------------------------


def bucket_step(resolution: int, vae_scale: int) -> int:
    """The buckets' side step in px: about 1/16 of the native side (32 px at 512, 64 at 1024), a multiple
    of twice the VAE's scale (the flow transformers pack 2×2 latent patches)."""
    unit = 2 * max(1, int(vae_scale))
    return max(unit, -(-resolution // 16 // unit) * unit)


def bucket_size(size: Size, resolution: int, step: int, max_aspect: float = 4.0) -> Size:
    """The bucket (w, h) of an image of ``size``: the native square or sides multiples of ``step``, area
    within 20 % of ``resolution²`` (the family's native pixel count); the aspect ratio nearest the image's
    (clamped to ``max_aspect``) wins, then the area nearest ``resolution²``."""
    w, h = size
    target = math.log(min(max(w / h, 1 / max_aspect), max_aspect))
    area = resolution * resolution
    candidates = [(resolution, resolution)]  # the native square itself, whatever the step
    for bw in range(step, int(resolution * 2 * max_aspect) + 1, step):
        for bh in {max(step, (area // bw) // step * step), -(-area // bw // step) * step}:
            candidates += [(bw, bh), (bh, bw)]  # portrait buckets mirror the landscape ones
    best, best_key = (resolution, resolution), None
    for bw, bh in candidates:
        if not 0.8 * area <= bw * bh <= 1.2 * area or max(bw / bh, bh / bw) > max_aspect:
            continue
        key = (round(abs(math.log(bw / bh) - target), 3), abs(math.log(bw * bh / area)))
        if best_key is None or key < best_key:
            best, best_key = (bw, bh), key
    return best


@dataclass
class Bucket:
    """The examples (indices into the training list) that train at one size, with their cached latents."""

    size: Size
    members: list[int]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    image_cond: dict[str, torch.Tensor] = field(default_factory=dict)


def make_buckets(examples: list[TrainExample], resolution: int, step: int | None) -> list[Bucket]:
    """Group the examples by bucket (``step`` None: one square bucket of every example, in order)."""
    if step is None:
        return [Bucket((resolution, resolution), list(range(len(examples))))]
    groups: dict[Size, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(bucket_size(e.image.size, resolution, step), []).append(i)
    return [Bucket(size, members) for size, members in groups.items()]


def crop_facts(image: Image.Image, size: Size) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """SDXL's micro-conditioning of an image trained at ``size``: original (h, w), crop top-left
    (top, left) and target (h, w)."""
    (w, h), (tw, th) = image.size, size
    scale = max(tw / w, th / h)  # as ``cover`` resizes and crops
    rw, rh = max(tw, round(w * scale)), max(th, round(h * scale))
    return (h, w), ((rh - th) // 2, (rw - tw) // 2), (th, tw)


def draw_bucketed(
    buckets: list[Bucket], examples: list[TrainExample], cfg: TrainConfig, generator, *, n_class: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw_batch`` within one bucket: a bucket drawn with probability ∝ its references (so each keeps
    its rate), then the batch from its references; class images (prior preservation) from all of them."""
    n = len(examples)
    counts = torch.tensor([sum(i < n for i in b.members) for b in buckets], dtype=torch.float64)
    chosen = buckets[int(torch.multinomial(counts, 1, generator=generator))]
    own = [i for i in chosen.members if i < n]
    local, coef = draw_batch([examples[i] for i in own], cfg, generator, n_class=n_class)
    batch = [own[i] if i < len(own) else n + (i - len(own)) for i in local.tolist()]
    return torch.tensor(batch, dtype=torch.long), coef


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
