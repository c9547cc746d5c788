"""What training previews (train.preview_every) cost on the CPU demo, as a share of a demo round.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/bench_previews.py   # ~1-2 minutes on 2 cores

Run A: the built-in demo (its model, oracle, anchors) with ``--steps`` training steps and no previews, to
review: the seconds per training step and of each later stage (generate, judge, evaluate). Run B: the same
training with a preview every ``--every`` steps, stopped when generation begins, each preview timed where
it is drawn (``gal.steps.draw_previews``): the median is what one preview costs. Printed: the share of a
full demo round (its own 900 steps) that previews every N steps would cost, for a few N. Run A's first
steps include loading the models, so a step's time is run B's training less its previews. Not a test; the
numbers are this machine's, with its load beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def stage_times(studio, run_id: str, cancel_at: str | None = None) -> dict[str, float]:
    """Seconds per stage of one ``advance`` (a stage runs from the previous report to its last one)."""
    marks: list[tuple[str, float]] = []

    def progress(stage, done, total, info):
        marks.append((stage, time.perf_counter()))
        if cancel_at and stage == cancel_at:
            studio.cancel(run_id)

    start = time.perf_counter()
    try:
        studio.advance(run_id, progress=progress)
    except Exception as err:  # the cancel at generation ends run B
        if type(err).__name__ != "Cancelled":
            raise
    seconds: dict[str, float] = {}
    last = start
    for stage, t in marks:
        seconds[stage] = seconds.get(stage, 0.0) + (t - last)
        last = t
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="training steps of the two measured runs")
    p.add_argument("--every", type=int, default=20, help="run B's preview interval")
    p.add_argument("--round-steps", type=int, default=900, help="a demo round's training steps")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from gal.engine import Studio

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        studio = Studio(Path(tmp) / "runs")
        config, refs = studio.demo("object")
        config.gal.pause_for_review = True
        config.train.steps = args.steps
        config.train.checkpoint_every = 0
        config.train.preview_every = 0  # the toy's default draws them on the CPU too
        a = stage_times(studio, studio.create_run(config, refs))
        config.train.preview_every = args.every
        import gal.steps

        drawn, timed = [], gal.steps.draw_previews

        def draw_previews(*a, **kw):  # each preview's own time, and whether it drew anything
            t0 = time.perf_counter()
            out = timed(*a, **kw)
            drawn.append((time.perf_counter() - t0, len(out)))
            return out

        gal.steps.draw_previews = draw_previews
        b = stage_times(studio, studio.create_run(config, refs), cancel_at="generate")
    previews = len(drawn)
    if not previews or not all(n for _, n in drawn):
        raise SystemExit(f"run B drew no previews ({drawn}): nothing measured")
    one = sorted(t for t, _ in drawn)[previews // 2]  # the median preview
    step = (b["train"] - sum(t for t, _ in drawn)) / args.steps
    times = ", ".join(f"{t:.2f}" for t, _ in drawn)
    print(
        f"training {args.steps} steps: run A {a['train']:.1f} s (with model loading), "
        f"run B {b['train']:.1f} s"
    )
    print(f"run B's previews: {times} s")
    rest = sum(v for k, v in a.items() if k != "train")
    round_s = args.round_steps * step + rest
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"demo model {config.model}, {os.cpu_count()} cores, load {load} (1/5/15 min)")
    print(f"train step {step * 1000:.0f} ms ({args.steps} steps); one preview (2 images, "
          f"{min(config.generate.steps, 20)} steps) {one:.2f} s (median of {previews}); "
          + ", ".join(f"{k} {v:.1f} s" for k, v in a.items() if k != "train"))  # fmt: skip
    print(f"a demo round ({args.round_steps} steps + the stages after): {round_s:.0f} s\n")
    print(f"{'preview every':>14}{'previews':>10}{'seconds':>9}{'share of a round':>18}")
    for n in (50, 100, 150, 300):
        k = args.round_steps // n
        print(f"{n:>14}{k:>10}{k * one:>9.1f}{k * one / round_s:>17.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
