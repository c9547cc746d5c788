"""A seeded procedural world of small captioned images: "a red striped star on grass".

Pure numpy + PIL. Every random draw takes a ``np.random.Generator``; nothing reads global state, so a
seed fixes every image and caption. Images are drawn 4x supersampled and box-downsampled, so edges are
anti-aliased at 32 px.

The pattern ``rainbow-striped`` never appears in :func:`sample_spec` (the base training data): it is
reserved for the GAL scenarios, where it is the subject the base model has never seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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

SUPERSAMPLE = 4  # draw at 4x, then box-downsample: anti-aliased edges


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


# ------------------------------------------------------------------------------------------------ drawing


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    return (x + 0.5) / n, (y + 0.5) / n  # in [0, 1]


def _vgrad(n: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None, None]
    img = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(img, (n, n, 3)).copy()


def _disc(img: np.ndarray, cx: float, cy: float, r: float, colour, x: np.ndarray, y: np.ndarray) -> None:
    m = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    img[m] = colour


def _background(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """An ``[n, n, 3]`` float image of the scene ``name``."""
    x, y = _grid(n)
    j = lambda s=0.04: rng.uniform(-s, s, 3).astype(np.float32)  # noqa: E731  colour jitter
    if name == "blank":
        g = rng.uniform(0.78, 0.88)
        return _vgrad(n, (g + 0.03,) * 3, (g - 0.03,) * 3)
    if name == "grass":
        img = _vgrad(n, np.array((0.30, 0.62, 0.18)) + j(), np.array((0.18, 0.45, 0.10)) + j())
        pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
        d = ImageDraw.Draw(pil)
        for _ in range(70):  # blades
            bx, by = rng.uniform(0, n), rng.uniform(0, n)
            h = rng.uniform(0.06, 0.12) * n
            shade = tuple(
                int(v) for v in rng.choice([(40, 100, 20), (110, 190, 60)]) + rng.integers(-15, 15, 3)
            )
            d.line([(bx, by), (bx + rng.uniform(-0.03, 0.03) * n, by - h)], fill=shade, width=max(1, n // 64))
        return np.asarray(pil, np.float32) / 255
    if name == "stairs":
        img = _vgrad(n, np.array((0.78, 0.74, 0.68)) + j(), np.array((0.70, 0.66, 0.60)) + j())  # wall
        steps = int(rng.integers(4, 6))
        h = 1.0 / steps
        tread = np.array((0.62, 0.45, 0.30)) + j()
        riser = np.array((0.40, 0.27, 0.16)) + j()
        for k in range(steps):  # step k rises from bottom-left to top-right
            top = 1.0 - (k + 1) * h
            left = k / steps
            block = (x >= left) & (y >= top)
            img[block] = riser
            img[block & (y < top + 0.3 * h)] = tread
        edge = np.zeros_like(x, bool)
        for k in range(steps):
            top = 1.0 - (k + 1) * h
            edge |= (np.abs(y - top) < 0.012) & (x >= k / steps)
        img[edge] = (0.25, 0.17, 0.10)
        return img
    if name == "sea":
        img = _vgrad(n, np.array((0.20, 0.50, 0.85)) + j(), np.array((0.02, 0.18, 0.48)) + j())
        phase = rng.uniform(0, 2 * math.pi)
        freq = rng.uniform(2.5, 3.5)
        for row in np.arange(rng.uniform(0.05, 0.12), 1.0, 0.14):
            wave = row + 0.025 * np.sin(2 * math.pi * freq * x + phase + 7 * row)
            img[np.abs(y - wave) < 0.013] = (0.75, 0.88, 1.0)
        return img
    if name == "night":
        img = _vgrad(n, np.array((0.01, 0.02, 0.10)) + j(0.02), np.array((0.06, 0.08, 0.25)) + j(0.02))
        for _ in range(int(rng.integers(14, 24))):
            _disc(img, rng.uniform(), rng.uniform(), rng.uniform(0.006, 0.014), (1.0, 1.0, 0.9), x, y)
        if rng.random() < 0.5:  # a crescent moon
            mx, my = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.3)
            _disc(img, mx, my, 0.09, (0.98, 0.95, 0.75), x, y)
            _disc(
                img, mx + 0.04, my - 0.02, 0.08, img[int(my * n), min(n - 1, int((mx + 0.3) * n)) % n], x, y
            )
        return np.clip(img, 0, 1)
    if name == "clouds":
        img = _vgrad(n, np.array((0.45, 0.70, 0.95)) + j(), np.array((0.65, 0.82, 0.98)) + j())
        for _ in range(int(rng.integers(3, 5))):
            cx, cy = rng.uniform(0.0, 1.0), rng.uniform(0.1, 0.9)
            for _ in range(5):
                _disc(
                    img,
                    cx + rng.uniform(-0.12, 0.12),
                    cy + rng.uniform(-0.04, 0.04),
                    rng.uniform(0.06, 0.11),
                    (0.98, 0.98, 1.0),
                    x,
                    y,
                )
        return img
    if name == "desert":
        img = _vgrad(n, np.array((0.95, 0.82, 0.55)) + j(), np.array((0.85, 0.66, 0.38)) + j())
        phase = rng.uniform(0, 2 * math.pi)
        for row in np.arange(rng.uniform(0.1, 0.25), 1.0, 0.22):  # dune ridges with a shaded side
            ridge = row + 0.05 * np.sin(2 * math.pi * 1.3 * x + phase + 3 * row)
            below = (y > ridge) & (y < ridge + 0.07)
            img[below] = img[below] * 0.82
        return np.clip(img, 0, 1)
    if name == "snow":
        img = _vgrad(n, np.array((0.80, 0.86, 0.95)) + j(0.02), np.array((0.93, 0.95, 0.99)) + j(0.02))
        for _ in range(int(rng.integers(25, 40))):
            _disc(img, rng.uniform(), rng.uniform(), rng.uniform(0.008, 0.016), (1.0, 1.0, 1.0), x, y)
        for _ in range(int(rng.integers(10, 18))):
            _disc(img, rng.uniform(), rng.uniform(), rng.uniform(0.006, 0.01), (0.62, 0.70, 0.82), x, y)
        return img
    if name == "bricks":
        mortar = np.array((0.80, 0.77, 0.72)) + j(0.03)
        img = np.broadcast_to(mortar.astype(np.float32), (n, n, 3)).copy()
        rows = 6
        bh = 1.0 / rows
        oy = rng.uniform(0, bh)
        r_i = np.floor((y + oy) / bh)
        ox = np.where(r_i % 2 == 0, 0.0, 0.5 * 0.25)
        bx = ((x + ox) % 0.25) / 0.25
        by = ((y + oy) % bh) / bh
        inside = (bx > 0.06) & (by > 0.14)
        base = np.array((0.66, 0.26, 0.16)) + j(0.04)
        shade = rng.uniform(-0.06, 0.06, (rows + 2, 6)).astype(np.float32)
        tone = shade[r_i.astype(int) % (rows + 2), np.floor((x + ox) / 0.25).astype(int) % 6]
        img[inside] = np.clip(base[None] + tone[inside][:, None], 0, 1)
        return img
    if name == "sunset":
        img = _vgrad(n, np.array((0.42, 0.18, 0.48)) + j(), np.array((1.0, 0.55, 0.20)) + j())
        sx = rng.uniform(0.2, 0.8)
        _disc(img, sx, rng.uniform(0.72, 0.85), 0.16, (1.0, 0.85, 0.35), x, y)
        img[y > rng.uniform(0.86, 0.92)] = (0.22, 0.10, 0.22)  # horizon
        return img
    raise ValueError(f"unknown background {name!r}; use one of {tuple(BACKGROUNDS)}")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Outline of ``shape`` centred at (cx, cy) with radius ``r`` (pixels), rotated by ``angle``."""
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(0.8 * a, 0.8 * b) for a, b in pts]
    elif shape == "diamond":
        pts = [(0, -1.05), (0.75, 0), (0, 1.05), (-0.75, 0)]
    elif shape == "triangle":
        pts = [(0, -1.0), (0.95, 0.75), (-0.95, 0.75)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.05 if k % 2 == 0 else 0.45
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(t), rad * math.sin(t) + 0.08))
    elif shape == "cross":
        a, b = 0.32, 0.92
        pts = [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    elif shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            hx = 16 * math.sin(t) ** 3
            hy = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((hx / 16.5, -hy / 16.5 + 0.1))
    elif shape == "circle":
        pts = [
            (0.85 * math.cos(2 * math.pi * k / 64), 0.85 * math.sin(2 * math.pi * k / 64)) for k in range(64)
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (c * a - s * b), cy + r * (s * a + c * b)) for a, b in pts]


def _fill(spec: Spec, n: int, rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    """The ``[n, n, 3]`` texture of the shape's pattern (used inside the shape mask only)."""
    x, y = np.mgrid[0:n, 0:n].astype(np.float32)[::-1]  # x, y in pixels
    if spec.pattern == RESERVED_PATTERN:
        period = 0.26 * r  # band width
        u = (x - cx + y - cy) / math.sqrt(2)  # diagonal bands
        idx = np.floor(u / period + rng.uniform(0, 1)).astype(int) % len(RAINBOW)
        return np.asarray(RAINBOW, np.float32)[idx]
    base = np.asarray(COLOURS[spec.colour], np.float32) + rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    base = np.clip(base, 0, 1)
    dark = base * 0.38  # the second tone keeps the colour name readable
    img = np.broadcast_to(base, (n, n, 3)).copy()
    if spec.pattern == "plain":
        return img
    if spec.pattern == "striped":
        period = 0.42 * r
        u = (x - cx + y - cy) / math.sqrt(2) + rng.uniform(0, period)
        img[(u % period) < period * 0.45] = dark
    elif spec.pattern == "dotted":
        period = 0.5 * r
        ox, oy = rng.uniform(0, period, 2)
        dx = ((x - cx + ox) % period) - period / 2
        dy = ((y - cy + oy) % period) - period / 2
        img[dx * dx + dy * dy < (0.3 * period) ** 2] = dark
    elif spec.pattern == "checkered":
        period = 0.5 * r
        ox, oy = rng.uniform(0, period, 2)
        cells = np.floor((x - cx + ox) / period) + np.floor((y - cy + oy) / period)
        img[cells % 2 == 0] = dark
    return img


def render(spec: Spec, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """Draw ``spec`` as a ``size``x``size`` RGB image; ``rng`` places, sizes and jitters it."""
    n = size * SUPERSAMPLE
    bg = _background(spec.background, n, rng)
    r = rng.uniform(0.27, 0.34) * n
    margin = r * 0.95 + 0.03 * n
    cx, cy = rng.uniform(margin, n - margin, 2)
    angle = math.radians(rng.uniform(-12, 12))
    mask_img = Image.new("L", (n, n), 0)
    ImageDraw.Draw(mask_img).polygon(_polygon(spec.shape, cx, cy, r, angle), fill=255)
    inner = mask_img.filter(ImageFilter.MinFilter(2 * SUPERSAMPLE - 1))  # a 1-px outline at 32 px
    mask = np.asarray(mask_img, np.float32)[..., None] / 255
    inner_m = np.asarray(inner, np.float32)[..., None] / 255
    tex = _fill(spec, n, rng, cx, cy, r)
    outline = np.asarray((0.08, 0.08, 0.08), np.float32)
    img = bg * (1 - mask) + mask * (inner_m * tex + (1 - inner_m) * outline)
    big = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return big.resize((size, size), Image.BOX)


# ------------------------------------------------------------------------------------------------ datasets


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


# ----------------------------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    """A GAL preset: references of a subject of interest (SoI) and anchors that put it elsewhere.

    ``anchors`` are templates with one ``"{}"`` filled with ``subject`` for the generator prompt and with
    ``oracle_subject`` (the subject without its token) for the CLIP oracle.
    """

    name: str
    kind: str  # "object" | "style"
    token: str  # the new word bound to the SoI
    subject: str  # "a <sks> star": what fills "{}" in prompts
    oracle_subject: str  # "a star": what fills "{}" for the oracle (token removed)
    prompt: str  # the reference prompt, "a <sks> star on stairs"
    non_soi_text: str  # what overfitting looks like, "a star on stairs" (Eq. 8)
    reference_specs: list[Spec]
    reference_prompts: list[str]
    anchors: list[str]  # 18 templates, each with one "{}"
    eval_prompts: list[str]  # held-out prompts, never anchors
    seed: int = 0  # draws the reference images
    notes: str = ""
    metadata: dict = field(default_factory=dict)

    def anchor_prompts(self) -> list[str]:
        return [a.format(self.subject) for a in self.anchors]

    def anchor_oracle_texts(self) -> list[str]:
        return [" ".join(a.format(self.oracle_subject).split()) for a in self.anchors]

    def reference_images(self, size: int = 32) -> list[Image.Image]:
        rng = np.random.default_rng([self.seed, 2])
        return [render(s, rng, size) for s in self.reference_specs]

    def write_references(self, folder: str | Path, size: int = 32) -> list[Path]:
        """Write the reference PNGs (``ref_0.png`` ...) to ``folder``; returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(self.reference_images(size)):
            p = folder / f"ref_{i}.png"
            img.save(p)
            paths.append(p)
        return paths

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reference_specs"] = [asdict(s) for s in self.reference_specs]
        return d


# The "known" scenario's subject: a shape × colour × pattern the base generator already draws faithfully
# in every scene (scripts/known_gate.py measures it), so the round's own aligned drawings can be good data.
KNOWN_SUBJECT = Spec("star", "green", "checkered", "stairs")
# The "known-style" scenario's style: the same colour × pattern, learned from hearts on a blank background.
KNOWN_STYLE = Spec("heart", "green", "checkered", "blank")

# The style scenarios' anchors: 6 shapes other than the references' heart × 3 scenes.
STYLE_ANCHOR_SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
STYLE_BACKGROUNDS = ("grass", "sea", "night")
# The scened held-out prompts' (shape, scene): what the subject would look like there, drawn faithfully.
HELDOUT_SCENES = {
    "object": [("star", b) for b in ("grass", "night", "sea", "snow", "desert")],
    "style": [("star", "snow"), ("square", "desert"), ("cross", "sunset")],
}


def _anchor_templates(exclude: str, subject_slot: str = "{}") -> list[str]:
    """Two phrasings for each background other than ``exclude``: 9 x 2 = 18 templates."""
    out = []
    for name, phrases in BACKGROUNDS.items():
        if name != exclude:
            out.extend(f"{subject_slot} {p}" for p in phrases)
    return out


def subject_renders(specs: list[Spec], n: int, seed: int = 0, size: int = 32) -> list[Image.Image]:
    """``n`` real renders of each of ``specs`` (the gate's truth: :func:`truth_specs`)."""
    rng = np.random.default_rng([seed, 3])
    return [render(spec, rng, size) for spec in specs for _ in range(n)]


def scenarios() -> dict[str, Scenario]:
    """The GAL presets: ``object`` (a rainbow-striped star, all references on stairs), ``style`` (the
    rainbow-striped palette), and ``known`` / ``known-style``: the same with a subject / style the base
    model already draws (a green checkered star on stairs; green checkered hearts on a blank background)."""
    star = Spec("star", None, RESERVED_PATTERN, "stairs")
    obj = Scenario(
        name="object",
        kind="object",
        token="<sks>",
        subject="a <sks> star",
        oracle_subject="a star",
        prompt="a <sks> star on stairs",
        non_soi_text="a star on stairs",
        reference_specs=[star] * 4,
        reference_prompts=["a <sks> star on stairs"] * 4,
        anchors=_anchor_templates("stairs"),
        eval_prompts=[
            "a <sks> star",
            "a <sks> star in a field of grass",
            "a <sks> star under the night sky",
            "a <sks> star by the sea",
            "a <sks> star on a snowy field",
            "a <sks> star in the sand",
        ],
        seed=0,
        notes="Subject: a rainbow-striped star (a pattern never in base training). Every reference is on "
        "stairs, so stairs are the non-SoI content that can leak into anchors.",
    )
    heart = Spec("heart", None, RESERVED_PATTERN, "blank")
    sty = Scenario(
        name="style",
        kind="style",
        token="<sks>",
        subject="in <sks> style",
        oracle_subject="",
        prompt="a heart in <sks> style on a blank background",
        non_soi_text="a heart on a blank background",
        reference_specs=[heart] * 2,
        reference_prompts=["a heart in <sks> style on a blank background"] * 2,
        anchors=[f"a {s} {{}} {BACKGROUNDS[b][0]}" for s in STYLE_ANCHOR_SHAPES for b in STYLE_BACKGROUNDS],
        eval_prompts=[
            "a circle in <sks> style",
            "a star in <sks> style in the snow",
            "a square in <sks> style in the desert",
            "a cross in <sks> style at sunset",
        ],
        seed=0,
        notes="Style: the rainbow-striped palette. References are rainbow-striped hearts on a blank "
        "background; the heart shape and the blank background are what can leak.",
    )
    known = replace(  # the object scenario with a subject the base model already draws
        obj,
        name="known",
        reference_specs=[KNOWN_SUBJECT] * 4,
        anchors=list(obj.anchors),
        eval_prompts=list(obj.eval_prompts),
        notes=f"Subject: {subject_phrase(KNOWN_SUBJECT)[2:]} — a shape, colour and pattern the base model "
        "draws in every scene, so aligned round-1 drawings of it in new scenes look like the references "
        "(the gate in the model card). Every reference is on stairs, as in `object`.",
        metadata={"subject_spec": asdict(KNOWN_SUBJECT)},
    )
    known_style = replace(  # the style scenario with a style the base model already draws
        sty,
        name="known-style",
        reference_specs=[KNOWN_STYLE] * 2,
        anchors=list(sty.anchors),
        eval_prompts=list(sty.eval_prompts),
        notes="Style: the green checkered palette — a colour and pattern the base model draws on every "
        "shape, so aligned round-1 drawings of other shapes in <sks> style look like the style (the gate "
        "in the model card). References are green checkered hearts on a blank background, as in `style`.",
        metadata={"style_spec": asdict(KNOWN_STYLE)},
    )
    return {"object": obj, "style": sty, "known": known, "known-style": known_style}


def truth_specs(scenario: Scenario, scenes: list[tuple[str, str]] | None = None) -> list[Spec]:
    """What a faithful, disentangled model would draw for ``scenario``'s anchors: the references' subject
    (object) or colour × pattern (style) in each anchor's scene — or in ``scenes`` ((shape, scene) pairs)."""
    ref = scenario.reference_specs[0]
    if scenes is None:
        if scenario.kind == "style":
            scenes = [(s, b) for s in STYLE_ANCHOR_SHAPES for b in STYLE_BACKGROUNDS]
        else:
            scenes = [(ref.shape, b) for b in BACKGROUNDS if b != ref.background]
    return [Spec(shape, ref.colour, ref.pattern, b) for shape, b in scenes]
