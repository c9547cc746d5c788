"""A seeded procedural world of small captioned images: "a red striped star on grass".

Pure numpy + PIL. Every random draw takes a ``np.random.Generator``; nothing reads global state, so a
seed fixes every image and caption. In rooms: :mod:`gal.toyworld.spec` (what an image shows and its
captions), :mod:`gal.toyworld.draw` (rendering), :mod:`gal.toyworld.scenarios` (the GAL presets); this
module holds the datasets (batches of images and captions) and offers every name as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gal.toyworld.draw import SUPERSAMPLE, render
from gal.toyworld.scenarios import (
    HELDOUT_SCENES,
    KNOWN_STYLE,
    KNOWN_SUBJECT,
    STYLE_ANCHOR_SHAPES,
    STYLE_BACKGROUNDS,
    Scenario,
    scenarios,
    subject_renders,
    truth_specs,
)
from gal.toyworld.spec import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    RAINBOW,
    RESERVED_PATTERN,
    SHAPES,
    CaptionDrop,
    Spec,
    caption,
    caption_and_kept,
    sample_spec,
    subject_phrase,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "HELDOUT_SCENES",
    "KNOWN_STYLE",
    "KNOWN_SUBJECT",
    "PATTERNS",
    "RAINBOW",
    "RESERVED_PATTERN",
    "SHAPES",
    "STYLE_ANCHOR_SHAPES",
    "STYLE_BACKGROUNDS",
    "SUPERSAMPLE",
    "Batch",
    "CaptionDrop",
    "Scenario",
    "Spec",
    "caption",
    "caption_and_kept",
    "heldout_set",
    "iter_batches",
    "make_batch",
    "render",
    "sample_spec",
    "scenarios",
    "subject_phrase",
    "subject_renders",
    "truth_specs",
]


@dataclass
class Batch:
    images: np.ndarray  # [B, size, size, 3] uint8
    captions: list[str]
    specs: list[Spec]


def make_batch(
    rng: np.random.Generator, batch_size: int, size: int = 32, drop: CaptionDrop | None = CaptionDrop()
) -> Batch:
    """One batch; ``drop=None`` gives full canonical captions."""
    specs = [sample_spec(rng) for _ in range(batch_size)]
    images = np.stack([np.asarray(render(s, rng, size)) for s in specs])
    captions = [caption(s) if drop is None else caption(s, rng, drop) for s in specs]
    return Batch(images, captions, specs)


def iter_batches(
    seed: int, batch_size: int, size: int = 32, drop: CaptionDrop | None = CaptionDrop()
) -> Iterator[Batch]:
    """Endless training batches, with randomly dropped caption attributes. Same seed, same stream."""
    rng = np.random.default_rng([seed, 0])
    while True:
        yield make_batch(rng, batch_size, size, drop)


def heldout_set(seed: int, n: int, size: int = 32) -> Batch:
    """A fixed held-out set with full captions; its stream never overlaps ``iter_batches`` (stream id 1)."""
    return make_batch(np.random.default_rng([seed, 1]), n, size, drop=None)
