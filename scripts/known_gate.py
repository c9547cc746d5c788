"""The known-subject gate (model card): after round 1, do the aligned drawings look like the references?

    .venv/bin/python scripts/known_gate.py --tasks known object --seeds 0          # train round 1 and measure
    .venv/bin/python scripts/known_gate.py --from artifacts/table1_v5/results.json # the bench's measurements

IMG-ALN (mean toy-CLIP image cosine to the real references) of round 1's anchor images the oracle judged
aligned, against that of real renders of the references' subject in the 9 anchor scenes (8 each; a style:
its palette on the 18 anchors' shapes in their scenes). The gate passes when generated >= real
(gal.toyworld.gate). `object` / `style` (a pattern the model never saw) are the contrasts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def ceiling(tasks: list[str]) -> None:
    """IMG-ALN a faithful, disentangled model would score on the held-out prompts: real renders of the
    subject (a style: on the prompt's shape) in each scened held-out prompt's scene (object 5, style 3; 8
    each) against the references (no model involved)."""
    from gal.oracle import ClipOracle
    from gal.toyworld.world import HELDOUT_SCENES, scenarios, subject_renders, truth_specs

    oracle = ClipOracle.from_spec("toy")
    for task in tasks:
        scenario = scenarios()[task]
        renders = subject_renders(truth_specs(scenario, HELDOUT_SCENES[scenario.kind]), 8)
        sims = oracle.image_similarities(renders, scenario.reference_images())
        print(f"{task:<11} IMG-ALN of real renders in the held-out scenes: {float(np.mean(sims)):.3f}")


def summarise(gates: dict[str, list[dict]]) -> None:
    for task, rows in sorted(gates.items()):
        gen, real = [g["generated"] for g in rows], [g["real"] for g in rows]
        passed = sum(g["passes"] for g in rows)
        print(
            f"{task:<11} seeds {len(rows)}: generated (aligned) {np.mean(gen):.3f} ± {np.std(gen):.3f}, "
            "real renders "
            f"{np.mean(real):.3f}, ratio {np.mean([g['ratio'] for g in rows]):.3f}, aligned images "
            f"{np.mean([g['aligned'] for g in rows]):.0f}/{rows[0]['images']}; passes in {passed}/{len(rows)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    from gal.toyworld.world import scenarios

    parser.add_argument("--tasks", nargs="+", default=["known", "object"], choices=list(scenarios()))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--from", dest="results", help="read the gates a bench results.json recorded")
    args = parser.parse_args()
    gates: dict[str, list[dict]] = {}
    if args.results:
        seen = set()
        for r in json.loads(Path(args.results).read_text()):
            # round 1 is the same for every 900-step row of a seed: count each seed once
            key = (r["task"], r["seed"])
            if r.get("gate") and r["strategy"] != "dreambooth-matched" and key not in seen:
                seen.add(key)
                gates.setdefault(r["task"], []).append(r["gate"])
        summarise(gates)
        ceiling(sorted(gates))
        return
    import torch

    from gal.demo import demo_scenario
    from gal.engine import Studio
    from gal.toyworld.gate import subject_gate

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        studio = Studio(Path(tmp) / "runs")
        for task in args.tasks:
            for seed in args.seeds:
                config, refs = demo_scenario(Path(tmp) / "refs", task, model=studio.default_model)
                config.seed, config.gal.max_rounds, config.eval.enabled = seed, 1, False
                run_id = studio.create_run(config, refs)
                studio.advance(run_id)
                gate = subject_gate(studio, run_id, scenarios()[task])
                print(task, seed, json.dumps(gate), flush=True)
                gates.setdefault(task, []).append(gate)
    summarise(gates)


if __name__ == "__main__":
    main()
