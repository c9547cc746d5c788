"""Retrain the independent judge's probes (gal/toyworld/judge.py) on procedural renders only, report their
accuracy on fresh renders (another seed) and on the scenarios' subjects in every scene, and save them.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python scripts/train_judge.py   # writes the weights
    .venv/bin/python scripts/train_judge.py --check                        # the shipped weights' accuracy
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gal.toyworld import judge  # noqa: E402
from gal.toyworld.world import BACKGROUNDS, Spec, scenarios, subject_renders, truth_specs  # noqa: E402


def report(j: judge.Judge, seed: int) -> None:
    images, specs = judge.renders(2000, seed)
    acc = j.accuracy(images, specs)
    print(f"fresh renders (seed {seed}, 2000): " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    for name, sc in scenarios().items():
        ref = sc.reference_specs[0]
        specs = truth_specs(sc) + [ref]
        if sc.kind == "object":
            specs = [Spec(ref.shape, ref.colour, ref.pattern, b) for b in BACKGROUNDS]
        imgs = subject_renders(specs, 8, seed=seed + 100)
        acc = j.accuracy(imgs, [s for s in specs for _ in range(8)])
        print(
            f"  {name:<12} subject in its scenes ({len(imgs)}): "
            + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--init", help="train on from these weights (a second stage on fresh renders)")
    p.add_argument("--out", default=str(judge.WEIGHTS))
    p.add_argument("--check", action="store_true", help="only report the accuracy of the saved weights")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        report(judge.Judge.load(args.out), seed=1)
        return
    started = time.perf_counter()
    init = judge.Judge.load(args.init) if args.init else None
    j = judge.train(args.n, args.epochs, args.seed, lr=args.lr, init=init)
    print(f"trained in {time.perf_counter() - started:.0f} s")
    path = j.save(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    report(j, seed=args.seed + 101)


if __name__ == "__main__":
    main()
