"""Measure the toy world's quality gates and save sample grids.

    python scripts/toyworld/quality_gates.py                       # the shipped weights
    python scripts/toyworld/quality_gates.py \\
        --pipeline artifacts/toyworld/pipeline_tmp --clip artifacts/toyworld/clip

1. Toy CLIP zero-shot top-1 per attribute on held-out images (gate: each >= 90 %).
2. Generator with CFG, 64 prompts x 4 seeds: does the toy CLIP recognise the prompted shape, colour and
   background (gate: each >= 80 %)? Also bare "a <shape>" prompts, and the pattern (reported only).
3. Sample grids as PNG (look at them). Results go to ``--out`` as ``gates.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import ASSETS, WORK, spec_arrays
from PIL import Image

from gal.toyworld.clip import load_toy_clip, zero_shot
from gal.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    SHAPES,
    caption,
    heldout_set,
    sample_spec,
    scenarios,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ATTRS = ("shape", "colour", "pattern", "background")


def grid(images: np.ndarray, cols: int, scale: int = 3) -> Image.Image:
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        canvas[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = im
    return Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)


def generate(
    pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 64
) -> np.ndarray:
    """``[len(seeds) * len(prompts), 32, 32, 3]`` uint8, seed-major
    (all prompts for seed 0, then seed 1 ...)."""
    jobs = [(p, s) for s in seeds for p in prompts]
    out = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        gens = [torch.Generator().manual_seed(1000 * s + k) for k, (_, s) in enumerate(chunk, start=i)]
        res = pipe(
            [p for p, _ in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="np",
        )
        out.append((res.images * 255 + 0.5).clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default=str(ASSETS / "pipeline"))
    ap.add_argument("--clip", default=str(ASSETS / "clip"))
    ap.add_argument("--out", default=str(WORK / "gates"))
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, nargs="+", default=[5.0])
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--n-seeds", type=int, default=4)
    ap.add_argument("--skip-generator", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TOYWORLD_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"pipeline": args.pipeline, "clip": args.clip}

    # 1. toy CLIP zero-shot on held-out images (a seed never used in training or monitoring)
    model, _, tokenizer = load_toy_clip(args.clip)
    held = heldout_set(2024, 1000)
    labels = spec_arrays(held.specs)
    results["clip_zero_shot"] = {}
    for attr in ATTRS:
        _, pred = zero_shot(model, tokenizer, held.images, attr)
        results["clip_zero_shot"][attr] = round(float((pred == labels[attr]).mean()), 4)
    print("clip zero-shot", results["clip_zero_shot"], flush=True)
    grid(held.images[:64], 8).save(out / "heldout_real.png")
    refs = [np.asarray(im) for sc in scenarios().values() for im in sc.reference_images()]
    grid(np.stack(refs), len(refs)).save(out / "scenario_references.png")

    if not args.skip_generator:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        rng = np.random.default_rng(7)
        specs = [sample_spec(rng) for _ in range(args.n_prompts)]
        prompts = [caption(s) for s in specs]
        seeds = list(range(args.n_seeds))
        want = spec_arrays(specs * len(seeds))
        bare_prompts = [f"a {s}" for s in SHAPES]
        results["generator"] = {}
        for g in args.guidance:
            t0 = time.time()
            images = generate(pipe, prompts, seeds, args.steps, g)
            secs = time.time() - t0
            row = {"seconds": round(secs, 1), "images": len(images)}
            for attr in ATTRS:
                _, pred = zero_shot(model, tokenizer, images, attr)
                row[attr] = round(float((pred == want[attr]).mean()), 4)
            bare = generate(pipe, bare_prompts, seeds, args.steps, g)
            _, pred = zero_shot(model, tokenizer, bare, "shape")
            row["bare_shape"] = round(float((pred == np.tile(np.arange(len(SHAPES)), len(seeds))).mean()), 4)
            results["generator"][str(g)] = row
            print(f"guidance {g}:", row, flush=True)
            grid(images[: args.n_prompts], 8).save(out / f"samples_cfg{g}.png")
            grid(bare, len(SHAPES)).save(out / f"bare_shapes_cfg{g}.png")
        (out / "prompts.txt").write_text("\n".join(f"{i}: {p}" for i, p in enumerate(prompts)) + "\n")
        # one prompt per attribute value, for eyeballing
        demo = (
            [f"a red {s} on a blank background" for s in SHAPES]
            + [f"a {c} circle on grass" for c in COLOURS]
            + [f"a blue {p} square in the snow" for p in PATTERNS]
            + [f"a yellow star {BACKGROUNDS[b][0]}" for b in BACKGROUNDS]
        )
        grid(generate(pipe, demo, [0], args.steps, args.guidance[0]), 8).save(out / "demo.png")
        (out / "demo_prompts.txt").write_text("\n".join(demo) + "\n")
    (out / "gates.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
