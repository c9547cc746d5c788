"""How faithfully the base toy model draws candidate subjects for the `known` scenario (model card).

    .venv/bin/python scripts/known_subject_candidates.py "green checkered star" "pink dotted star"

For each "COLOUR PATTERN SHAPE": 6 seeds × 4 scenes (sea, grass, snow, sunset), DPM-Solver++ 20 steps,
guidance 5; prints the share of images whose toy-CLIP zero-shot colour and pattern equal the prompted ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    from diffusers import StableDiffusionPipeline

    from gal.models import TOY_PIPELINE
    from gal.oracle import ClipOracle
    from gal.toyworld.world import COLOURS, PATTERNS

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(str(TOY_PIPELINE))
    pipe.set_progress_bar_config(disable=True)
    oracle = ClipOracle.from_spec("toy")
    for subject in sys.argv[1:] or ["green checkered star"]:
        colour, pattern, _ = subject.split()
        ok_c = ok_p = n = 0
        for scene in ["in the sea", "on grass", "in the snow", "at sunset"]:
            images = pipe(
                [f"a {subject} {scene}"] * 6,
                num_inference_steps=20,
                guidance_scale=5.0,
                height=32,
                width=32,
                generator=[torch.Generator().manual_seed(i) for i in range(6)],
            ).images
            sc = oracle.text_similarities(images, [f"a {c} shape" for c in COLOURS])
            sp = oracle.text_similarities(images, [f"a {p} shape" for p in PATTERNS])
            ok_c += int((np.array(list(COLOURS))[sc.argmax(1)] == colour).sum())
            ok_p += int((np.array(PATTERNS)[sp.argmax(1)] == pattern).sum())
            n += len(images)
        print(f"{subject}: colour {ok_c / n:.0%}, pattern {ok_p / n:.0%}", flush=True)


if __name__ == "__main__":
    main()
