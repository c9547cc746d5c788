"""The independent judge on the held-out grids the previous passes committed (docs/bench/table1/*.png):
one row per round, the first 16 held-out images (8 of the bare prompt, 8 of the first scened prompt), each
32 px drawn 2x. Costs seconds, so it reads runs whose images are otherwise gone (one seed each: no CI).

    .venv/bin/python scripts/judge_grids.py docs/bench/table1/known-*.png docs/bench/table1/object-*.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from gal.toyworld.judge import Judge  # noqa: E402
from gal.toyworld.world import scenarios  # noqa: E402


def cells(path: Path, size: int = 32, per_round: int = 16) -> list[list[Image.Image]]:
    """The grid's images, per round (row), back at ``size`` px (the grid drew each pixel as a block)."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    scale = grid.shape[1] // (per_round * size)
    if scale < 1 or grid.shape[1] != per_round * size * scale:
        raise ValueError(f"{path} is not a grid of {per_round} images of {size} px a row")
    small = grid[::scale, ::scale]
    return [
        [
            Image.fromarray(small[r * size : (r + 1) * size, c * size : (c + 1) * size])
            for c in range(per_round)
        ]
        for r in range(small.shape[0] // size)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grids", nargs="+")
    args = p.parse_args()
    judge = Judge.load()
    print(f"{'grid':<72}{'round':>6}  identity  shape_colour  scene  leak   (8 bare + 8 scened images)")
    for g in map(Path, args.grids):
        task = next(
            (t for t in ("known-style", "known", "object", "style") if g.name.startswith(t + "-")), None
        )
        if task not in ("known", "object"):
            continue
        sc = scenarios()[task]
        prompts = [sc.eval_prompts[0]] * 8 + [sc.eval_prompts[1]] * 8
        for r, images in enumerate(cells(g)):
            s = judge.score(sc, images, prompts)
            print(
                f"{g.name:<72}{r + 1:>6}  {s['identity']:>8.3f}  {s['shape_colour']:>12.3f}"
                f"  {s['scene']:>5.3f}  {s['leak']:>4.3f}"
            )


if __name__ == "__main__":
    main()
