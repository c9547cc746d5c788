"""The toy world's vocabulary and captions: what one image shows (:class:`Spec`: shape, colour, pattern,
background) and how it is captioned ("a red striped star on grass"), with training captions that drop
attributes at random (:class:`CaptionDrop`).

The pattern ``rainbow-striped`` never appears in :func:`sample_spec` (the base training data): it is
reserved for the GAL scenarios, where it is the subject the base model has never seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond")

# Names a person agrees on at 32 px; RGB in [0, 1].
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.08, 0.08),
    "orange": (1.00, 0.50, 0.00),
    "yellow": (0.98, 0.88, 0.10),
    "green": (0.10, 0.68, 0.15),
    "blue": (0.10, 0.28, 0.92),
    "purple": (0.52, 0.12, 0.74),
    "pink": (1.00, 0.52, 0.78),
    "white": (0.97, 0.97, 0.97),
}

PATTERNS = ("plain", "striped", "dotted", "checkered")
RESERVED_PATTERN = "rainbow-striped"  # never in base training data: the GAL subject
RAINBOW = (
    (0.9, 0.1, 0.1),
    (1.0, 0.55, 0.0),
    (0.98, 0.9, 0.1),
    (0.1, 0.7, 0.2),
    (0.1, 0.35, 0.95),
    (0.55, 0.15, 0.8),
)

# Each background is a scene; the first phrase is canonical, the second a paraphrase that also appears
# in training captions (so anchors can use both).
BACKGROUNDS: dict[str, tuple[str, str]] = {
    "blank": ("on a blank background", "on an empty background"),
    "grass": ("on grass", "on the grass"),
    "stairs": ("on stairs", "on the stairs"),
    "sea": ("in the sea", "on the water"),
    "night": ("in the night sky", "at night"),
    "clouds": ("in the clouds", "among clouds"),
    "desert": ("in the desert", "on sand"),
    "snow": ("in the snow", "on snow"),
    "bricks": ("on a brick wall", "against bricks"),
    "sunset": ("at sunset", "in a sunset sky"),
}


@dataclass(frozen=True)
class Spec:
    """What one image shows. ``colour`` is ``None`` for the rainbow pattern (it has no single colour)."""

    shape: str
    colour: str | None
    pattern: str
    background: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; use one of {SHAPES}")
        if self.pattern not in PATTERNS + (RESERVED_PATTERN,):
            raise ValueError(f"unknown pattern {self.pattern!r}; use one of {PATTERNS + (RESERVED_PATTERN,)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; use one of {tuple(BACKGROUNDS)}")
        if self.pattern == RESERVED_PATTERN:
            if self.colour is not None:
                raise ValueError(
                    f"pattern {RESERVED_PATTERN!r} has no colour; pass colour=None, not {self.colour!r}"
                )
        elif self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; use one of {tuple(COLOURS)}")


def sample_spec(rng: np.random.Generator) -> Spec:
    """A uniformly random base-world spec (never the reserved rainbow pattern)."""
    return Spec(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=tuple(COLOURS)[rng.integers(len(COLOURS))],
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        background=tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
    )


# ----------------------------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class CaptionDrop:
    """Probabilities of leaving an attribute out of a training caption (so bare prompts work)."""

    colour: float = 0.25  # "a striped star on grass"
    pattern: float = 0.35  # "a red star on grass"
    shape: float = 0.15  # "a red striped shape on grass"
    background: float = 0.25  # "a red striped star"
    paraphrase: float = 0.5  # use the second background phrase


def subject_phrase(spec: Spec, *, colour: bool = True, pattern: bool = True, shape: bool = True) -> str:
    """ "a red striped star" (without the background)."""
    words = []
    if spec.pattern == RESERVED_PATTERN:
        if pattern:
            words.append(RESERVED_PATTERN)
    else:
        if colour:
            words.append(spec.colour)
        if pattern:
            words.append(spec.pattern)
    words.append(spec.shape if shape else "shape")
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article] + words)


def caption(spec: Spec, rng: np.random.Generator | None = None, drop: CaptionDrop = CaptionDrop()) -> str:
    """The caption of ``spec``. Without ``rng``: the full canonical caption ("a red striped star on grass").

    With ``rng``: attributes are dropped at random (``drop``), never all of them, and the background
    phrase is sometimes paraphrased — this is how training captions are made.
    """
    if rng is None:
        return f"{subject_phrase(spec)} {BACKGROUNDS[spec.background][0]}"
    return caption_and_kept(spec, rng, drop)[0]


def caption_and_kept(
    spec: Spec, rng: np.random.Generator, drop: CaptionDrop = CaptionDrop()
) -> tuple[str, dict[str, bool]]:
    """A random training caption and which attributes it names (``{"shape": True, "colour": False, ...}``).

    Contrastive training uses ``kept`` to know which other images a caption also describes.
    """
    kept = {
        "colour": bool(rng.random() >= drop.colour),
        "pattern": bool(rng.random() >= drop.pattern),
        "shape": bool(rng.random() >= drop.shape),
        "background": bool(rng.random() >= drop.background),
    }
    if not any(kept.values()):
        kept["shape"] = True
    if spec.pattern == RESERVED_PATTERN:
        kept["colour"] = False
    phrase = BACKGROUNDS[spec.background][1 if rng.random() < drop.paraphrase else 0]
    text = subject_phrase(spec, colour=kept["colour"], pattern=kept["pattern"], shape=kept["shape"])
    return (f"{text} {phrase}" if kept["background"] else text), kept
