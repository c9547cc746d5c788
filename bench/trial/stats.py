"""Paired differences with bootstrap confidence intervals, and the DreamBooth frontier (issue 29).

Every interval here is a percentile bootstrap over seeds with a seeded ``numpy.random.Generator``: the
same inputs and seed give the same interval.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 10_000
LEVEL = 0.95


def bootstrap_mean(values, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Mean of ``values`` (one per seed) with a percentile bootstrap CI: ``{mean, lo, hi, n}``."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to bootstrap; run at least one seed")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    a = (1 - level) / 2
    return {
        "mean": float(x.mean()),
        "lo": float(np.quantile(means, a)),
        "hi": float(np.quantile(means, 1 - a)),
        "n": int(x.size),
    }


def paired_difference(a: dict, b: dict, **kw) -> dict:
    """``a - b`` over the seeds both have (``{seed: value}`` each), bootstrapped: ``{mean, lo, hi, n}``."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no common seeds: {sorted(a)} vs {sorted(b)}; run both rows on the same seeds")
    return bootstrap_mean([a[s] - b[s] for s in seeds], **kw) | {"seeds": seeds}


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (identity, leak) points no other point beats on both (higher identity, lower leak), by identity."""
    keep = [
        p
        for p in points
        if not any(q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1]) for q in points)
    ]
    return sorted(set(keep))


def frontier_leak(points: list[tuple[float, float]], identity: float) -> float:
    """The leak the DreamBooth frontier reaches at ``identity``: linear between its Pareto points, the end
    point's leak beyond them (below the lowest identity: the least leak it reaches; above the highest: the
    leak of its most faithful point)."""
    front = pareto(points)
    if not front:
        raise ValueError("an empty frontier; run dreambooth at some step counts first")
    xs = np.array([p[0] for p in front])
    ys = np.array([p[1] for p in front])
    return float(np.interp(identity, xs, ys))


def frontier_gap(
    row: dict, frontier: dict, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> dict:
    """How far a row's leak sits below (negative: better than) the DreamBooth frontier at the row's own
    subject identity. ``row``: ``{seed: (identity, leak)}``; ``frontier``: ``{point: {seed: (identity,
    leak)}}``. Seeds are resampled jointly (the seeds every arm has), so the frontier's own seed noise is
    in the interval. Returns ``{gap, lo, hi, n, seeds}``."""
    seeds = sorted(set(row).intersection(*(set(v) for v in frontier.values())))
    if not seeds:
        raise ValueError("no seed shared by the row and every frontier point; run them on the same seeds")
    r = np.array([row[s] for s in seeds], dtype=np.float64)  # [n, 2]
    f = np.array([[pts[s] for s in seeds] for pts in frontier.values()], dtype=np.float64)  # [p, n, 2]

    def gap(idx: np.ndarray) -> float:
        ri, rl = r[idx].mean(axis=0)
        return rl - frontier_leak([tuple(p) for p in f[:, idx].mean(axis=1)], ri)

    rng = np.random.default_rng(seed)
    n = len(seeds)
    boots = np.array([gap(rng.integers(0, n, n)) for _ in range(n_boot)])
    a = (1 - level) / 2
    return {
        "gap": gap(np.arange(n)),
        "lo": float(np.quantile(boots, a)),
        "hi": float(np.quantile(boots, 1 - a)),
        "n": n,
        "seeds": seeds,
    }


def verdict(ci: dict, tol: float = 1e-12) -> str:
    """``below 0`` / ``above 0`` when the interval excludes 0 (beyond float rounding), else ``includes 0``."""
    if ci["hi"] < -tol:
        return "below 0"
    if ci["lo"] > tol:
        return "above 0"
    return "includes 0"
