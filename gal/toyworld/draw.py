"""Drawing a :class:`~gal.toyworld.spec.Spec`: backgrounds, shapes and fills, drawn 4x supersampled and
box-downsampled, so edges are anti-aliased at 32 px. Every random draw takes the ``rng`` passed in."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from gal.toyworld.spec import BACKGROUNDS, COLOURS, RAINBOW, RESERVED_PATTERN, SHAPES, Spec

SUPERSAMPLE = 4  # draw at 4x, then box-downsample: anti-aliased edges


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
