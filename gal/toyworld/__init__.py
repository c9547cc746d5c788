"""The toy world: a procedural captioned-image generator and the small models trained on it.

``gal.toyworld.world`` is pure numpy + PIL. Trained weights live in ``gal/assets/toyworld/``.
"""

from gal.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    RESERVED_PATTERN,
    SHAPES,
    Batch,
    CaptionDrop,
    Scenario,
    Spec,
    caption,
    heldout_set,
    iter_batches,
    render,
    sample_spec,
    scenarios,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "PATTERNS",
    "RESERVED_PATTERN",
    "SHAPES",
    "Batch",
    "CaptionDrop",
    "Scenario",
    "Spec",
    "caption",
    "heldout_set",
    "iter_batches",
    "render",
    "sample_spec",
    "scenarios",
]
