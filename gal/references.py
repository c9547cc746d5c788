"""A real reference as a person gives it (the engine, the demo, the CLI and the UI share this one type), and
its optional loss mask: the image's alpha channel, or ``NAME.mask.png`` beside ``NAME.png`` (white = learn
this, black = the floor weight ``train.mask_floor``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

MASK_SUFFIX = ".mask.png"


@dataclass
class ReferenceInput:
    """A real reference image with its prompt and the non-subject caption the model must not learn."""

    path: str | Path
    prompt: str
    non_soi_text: str | None = None  # object: prompt without the token; style: the prompt itself
    mask: str | Path | None = None  # its mask file; None: ``NAME.mask.png`` beside it, or its alpha channel


def is_mask(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(MASK_SUFFIX)


def mask_file(path: str | Path) -> Path:
    """Where an image's mask lies: ``NAME.png`` -> ``NAME.mask.png`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + MASK_SUFFIX)


def _stem(path: Path) -> str:
    return path.name[: -len(MASK_SUFFIX)] if is_mask(path) else path.stem


def pair_masks(paths: list[str | Path]) -> list[tuple[Path, Path | None]]:
    """Files as a person picks them -> ``(image, mask)`` in the images' order: ``NAME.mask.png`` pairs with
    the image called ``NAME`` (any extension) among them; an image without one among them takes the mask
    beside it, if any. A mask whose image is not there is refused, naming it."""
    paths = [Path(p) for p in paths]
    images = [p for p in paths if not is_mask(p)]
    masks = {_stem(p): p for p in paths if is_mask(p)}
    by_stem = {p.stem for p in images}
    orphans = sorted(str(m.name) for stem, m in masks.items() if stem not in by_stem)
    if orphans:
        raise ValueError(
            f"mask {orphans[0]} has no image: add the image it masks ({_stem(Path(orphans[0]))}.png) "
            "or leave the mask out"
        )
    paired = []
    for image in images:
        beside = mask_file(image)
        paired.append((image, masks.get(image.stem) or (beside if beside.is_file() else None)))
    return paired


def load_mask(path: str | Path, mask: str | Path | None = None) -> Image.Image | None:
    """The loss mask of the reference at ``path`` as a greyscale image of its size: ``mask`` (a file), else
    ``NAME.mask.png`` beside it, else its alpha channel when not fully opaque; None when it has none."""
    from gal.runfolder import load_image

    path = Path(path)
    if mask is None and mask_file(path).is_file():
        mask = mask_file(path)
    with Image.open(path) as image:
        size = image.size
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        alpha = image.convert("RGBA").getchannel("A") if mask is None and has_alpha else None
    if mask is None:
        return alpha if alpha is not None and alpha.getextrema() != (255, 255) else None
    loaded = load_image(mask)[0].convert("L")  # refuses non-images and decompression bombs as references
    if loaded.size != size:
        raise ValueError(
            f"mask {Path(mask).name} is {loaded.size[0]}×{loaded.size[1]} but its image {path.name} is "
            f"{size[0]}×{size[1]}: a mask must have its image's size"
        )
    return loaded
