"""The training view on the Progress tab: the running round's loss, smoothed, over its faint raw per-step
loss, with every earlier round's smoothed curve kept behind it; log y axis.

Inline SVG, no plot component: the 1 s poll re-sends it, and a plot component re-mounted each second
flickered. A loss near 0 late in a run is drawn and labelled on a log axis (3 significant digits), never
as "0.000".
"""

from __future__ import annotations

import math

from ui.render import esc

SMOOTHING = 0.9  # TensorBoard's default weight: each point is 0.9 x the smoothed past + 0.1 x itself
PAST_COLOURS = ("#94a3b8", "#a78bfa", "#f59e0b", "#14b8a6", "#f472b6", "#84cc16")


def ema(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average, debiased as TensorBoard does (the first points are not pulled to 0)."""
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def _ticks(lo: float, hi: float) -> list[float]:
    """Tick values on a log axis: the decades inside [lo, hi], else its two ends."""
    decades = [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    inside = [d for d in decades if lo <= d <= hi]
    return inside if len(inside) >= 2 else [lo, hi]


def training_chart(
    current: list | None,
    earlier: dict[int, list[float]] | None = None,
    round_index: int | None = None,
    width: int = 720,
    height: int = 220,
) -> str:
    """``current``: the running round's ``(step, loss)`` points (the live job's); ``earlier``: finished
    rounds' losses per step (``Studio.loss_curves``), drawn smoothed and faint. '' with nothing to draw."""
    current = [(float(s), float(v)) for s, v in (current or []) if math.isfinite(float(v))]
    past = {
        r: [(i + 1.0, float(v)) for i, v in enumerate(c) if math.isfinite(float(v))]
        for r, c in sorted((earlier or {}).items())
        if r != round_index and c
    }
    past = {r: c for r, c in past.items() if len(c) >= 2}
    if len(current) < 2 and not past:
        return ""
    every = [v for _, v in current] + [v for c in past.values() for _, v in c]
    positive = [v for v in every if v > 0]
    floor = min(positive) if positive else 1e-6
    lo, hi = floor, max(max(every), floor * 10)
    llo, lhi = math.log10(lo), math.log10(hi)
    x1 = max([s for s, _ in current] + [s for c in past.values() for s, _ in c] + [2.0])
    left, right, top, bottom = 52, 10, 10, 24

    def point(s: float, v: float) -> str:
        x = left + (s - 1) / max(x1 - 1, 1) * (width - left - right)
        y = top + (lhi - math.log10(max(v, lo))) / ((lhi - llo) or 1) * (height - top - bottom)
        return f"{x:.1f},{y:.1f}"

    def line(points: list, cls: str, colour: str = "") -> str:
        stroke = f' stroke="{colour}"' if colour else ""
        pts = " ".join(point(s, v) for s, v in points)
        return f'<polyline points="{pts}" fill="none" class="{cls}"{stroke}/>'

    parts = []
    for t in _ticks(lo, hi):
        y = point(1, t).split(",")[1]
        parts.append(
            f'<line x1="{left}" y1="{y}" x2="{width - right}" y2="{y}" class="grid"/>'
            f'<text x="{left - 4}" y="{float(y) + 3:.1f}" text-anchor="end">{t:.3g}</text>'
        )
    legend = []
    for i, (r, c) in enumerate(past.items()):
        colour = PAST_COLOURS[i % len(PAST_COLOURS)]
        smooth = list(zip([s for s, _ in c], ema([v for _, v in c]), strict=True))
        parts.append(line(smooth, "past", colour))
        legend.append(f'<tspan fill="{colour}">round {r}</tspan>')
    if len(current) >= 2:
        parts.append(line(current, "raw"))
        smooth = list(zip([s for s, _ in current], ema([v for _, v in current]), strict=True))
        parts.append(line(smooth, "ema"))
        last = smooth[-1][1]
        legend.append(
            f'<tspan class="now">round {round_index if round_index is not None else "now"}: '
            f"{last:.3g} (smoothed)</tspan>"
        )
    rounds = ",".join(str(r) for r in [*past, *([round_index] if len(current) >= 2 else [])])
    return (
        f'<figure class="gal-loss" data-scale="log" data-rounds="{esc(rounds)}" '
        f'aria-label="training loss per step, log scale">'
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
        f"<title>training loss per step (log scale)</title>"
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>'
        f"{''.join(parts)}"
        f'<text x="{left}" y="{height - 6}">step 1</text>'
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end">step {int(x1)}</text>'
        f'<text x="{(width + left) / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        f"{' · '.join(legend)}</text>"
        "</svg><figcaption>training loss, log scale: the round's loss smoothed (EMA 0.9) over each step's "
        "raw loss (faint); earlier rounds' smoothed curves behind it</figcaption></figure>"
    )
