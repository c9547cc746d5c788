"""Draw README's picture: round 1 of the built-in demo, one row per anchor, oracle verdict per image.

    .venv/bin/python scripts/round1_grid.py --out docs/round1_grid.png [--task object] [--rows 8]

Runs round 1 of `gal run --demo` (the toy world) in a temporary folder, then renders anchors, β/Ω and each
image with a red (overfit) or green (aligned) frame. Mixed anchors come first: they are what GAL queries.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageDraw  # noqa: E402

from gal.demo import demo_scenario  # noqa: E402
from gal.engine import Studio  # noqa: E402

TILE, PAD, LABEL_W = 64, 6, 250


def render(state: dict, run_dir: Path, rows: int) -> Image.Image:
    anchors = [a for a in state["anchors"] if a["images"]]
    # mixed (0 < β < 1) first, most uncertain first; then the settled ones
    anchors.sort(key=lambda a: -(a.get("uncertainty") or 0.0))
    anchors = anchors[:rows]
    m = max(len(a["images"]) for a in anchors)
    row_h = TILE + 2 * PAD + 14
    canvas = Image.new("RGB", (LABEL_W + m * (TILE + PAD) + PAD, len(anchors) * row_h + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for i, anchor in enumerate(anchors):
        y = PAD + i * row_h
        draw.text((8, y + TILE // 2 - 12), anchor["prompt"], fill="black")
        beta, omega = anchor.get("overfit_rate"), anchor.get("uncertainty")
        draw.text((8, y + TILE // 2 + 4), f"beta {beta:.2f}  Omega {omega:.2f}", fill=(110, 110, 110))
        for j, image in enumerate(sorted(anchor["images"], key=lambda x: x["slot"])):
            x = LABEL_W + j * (TILE + PAD)
            overfit = int(image["final_verdict"]) == 1
            colour = (200, 40, 40) if overfit else (40, 150, 60)
            draw.rectangle((x - 3, y - 3, x + TILE + 2, y + TILE + 2), fill=colour)
            canvas.paste(
                Image.open(run_dir / image["file"]).convert("RGB").resize((TILE, TILE), Image.NEAREST), (x, y)
            )
            draw.text((x, y + TILE + 3), "overfit" if overfit else "aligned", fill=colour)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="docs/round1_grid.png")
    parser.add_argument("--task", default="object", choices=["object", "style"])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        studio = Studio(Path(tmp) / "runs")
        config, refs = demo_scenario(Path(tmp) / "refs", args.task, model=studio.default_model)
        config.seed = args.seed
        config.gal.pause_for_review = True
        run_id = studio.create_run(config, refs)
        studio.advance(run_id)
        state = studio.review_state(run_id)
        mixed = sum(1 for a in state["anchors"] if 0 < (a.get("overfit_rate") or 0) < 1)
        metrics = studio.history(run_id)["rounds"][0]["metrics"]
        print(
            f"{config.model}: {mixed} of {len(state['anchors'])} anchors mixed; held-out "
            f"TXT-ALN {metrics['txt_aln']:.3f} IMG-ALN {metrics['img_aln']:.3f} OVF {metrics['ovf']:.3f}"
        )
        render(state, studio.run_dir(run_id), args.rows).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
