"""Issue 29's report (``bench/table1.py --trial``): the independent judge's measures beside TXT-ALN / IMG-ALN
/ OVF, the DreamBooth frontier, each row's gap to it, paired differences with bootstrap CIs, the run-to-run
noise floor (the same run at another thread count), and whether fewer held-out images change the ordering.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from bench.trial.env import short
from bench.trial.stats import bootstrap_mean, frontier_gap, paired_difference, verdict

JUDGED = ("identity", "shape_colour", "scene", "leak")
CONTROL = {"lambda-0", "dreambooth-matched", "dreambooth"}


def label(variant: dict | None, drop: tuple[str, ...] = ("eval_images",)) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted((variant or {}).items()) if k not in drop) or "-"


def ci(c: dict, digits: int = 3) -> str:
    return f"{c['mean']:.{digits}f} [{c['lo']:.{digits}f}, {c['hi']:.{digits}f}]"


def last_judge(run: dict) -> dict | None:
    return run["rounds"][-1].get("judge")


def subset(judge: dict, per_prompt: int, keep: int) -> dict:
    """The judge's means on the first ``keep`` of every prompt's ``per_prompt`` held-out images."""
    out = {}
    for k in JUDGED:
        per = judge["per_image"].get(k, [])
        vals = [v for i, v in enumerate(per) if i % per_prompt < keep and v is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def groups(results: list[dict]) -> dict[tuple, dict[int, dict]]:
    """(task, strategy, variant label) -> {seed: run}, judged runs only."""
    g: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in results:
        if r.get("error") or last_judge(r) is None:
            continue
        g[r["task"], r["strategy"], label(r.get("variant"))][r["seed"]] = r
    return g


def metric(runs: dict[int, dict], key: str, rnd: int = -1) -> dict[int, float]:
    """{seed: value} of a judged measure or an oracle metric on round ``rnd``."""
    out = {}
    for s, r in runs.items():
        x = r["rounds"][rnd]
        v = (x.get("judge") or {}).get(key) if key in JUDGED else x.get(key)
        if v is not None:
            out[s] = v
    return out


def trial_report(results: list[dict], n_boot: int = 10_000) -> str:
    lines: list[str] = []
    envs = defaultdict(int)
    for r in results:
        envs[short(r.get("env"))] += 1
    lines.append("Environments (runs): " + "; ".join(f"{k} ({v})" for k, v in sorted(envs.items())))
    g = groups(results)
    for task in sorted({t for t, _, _ in g}):
        lines.append("")
        lines.append(
            f"{task}: last round, mean [95 % bootstrap CI over seeds]; identity = shape+colour+pattern right "
            "(any background), scene = the asked scene, leak = the references' background where another "
            "was asked (independent judge); TXT/IMG/OVF: the oracle's"
        )
        head = f"{'row':<34}{'variant':<34}{'n':>3}  " + "".join(f"{k:<22}" for k in JUDGED)
        lines.append(head + f"{'TXT-ALN':>8}{'IMG-ALN':>8}{'OVF':>7}")
        keys = sorted(k for k in g if k[0] == task)
        for _, strategy, lab in keys:
            runs = g[task, strategy, lab]
            cells = []
            for k in JUDGED:
                vals = list(metric(runs, k).values())
                cells.append(ci(bootstrap_mean(vals, n_boot=n_boot)) if vals else "–")
            oracle = [np.mean(list(metric(runs, m).values())) for m in ("txt_aln", "img_aln", "ovf")]
            lines.append(
                f"{strategy:<34}{lab[:33]:<34}{len(runs):>3}  "
                + "".join(f"{c:<22}" for c in cells)
                + f"{oracle[0]:>8.3f}{oracle[1]:>8.3f}{oracle[2]:>7.3f}"
            )
        lines += frontier_lines(g, task, n_boot)
        lines += paired_lines(g, task, n_boot)
        lines += noise_lines(results, task)
        lines += cheaper_lines(g, task)
    return "\n".join(lines)


def frontier_points(
    g: dict, task: str, prior: bool, fidelity: str = "identity"
) -> dict[str, dict[int, tuple[float, float]]]:
    out = {}
    for (t, strategy, lab), runs in g.items():
        if t != task or strategy != "dreambooth" or ("prior=True" in lab) != prior or "threads=" in lab:
            continue
        ident, leak = metric(runs, fidelity), metric(runs, "leak")
        out[lab] = {s: (ident[s], leak[s]) for s in ident if s in leak}
    if not prior:  # round 1 of the multi-round rows is plain DreamBooth at their steps: one more point
        for (t, strategy, lab), runs in sorted(g.items()):
            steps = next((x.split("=", 1)[1] for x in lab.split() if x.startswith("steps=")), None)
            if t != task or strategy in CONTROL or "threads=" in lab or not steps:
                continue
            if len(next(iter(runs.values()))["rounds"]) < 2:
                continue
            point = out.setdefault(f"round 1 of the rows, steps={steps}", {})
            ident, leak = metric(runs, fidelity, 0), metric(runs, "leak", 0)
            for s in ident:
                if s in leak:
                    point.setdefault(s, (ident[s], leak[s]))
    return out


def frontier_lines(g: dict, task: str, n_boot: int) -> list[str]:
    lines = []
    for fidelity in ("identity", "shape_colour"):
        for prior in (False, True):
            lines += _frontier_lines(g, task, n_boot, prior, fidelity)
    return lines


def _frontier_lines(g: dict, task: str, n_boot: int, prior: bool, fidelity: str) -> list[str]:
    lines = []
    front = frontier_points(g, task, prior, fidelity)
    rows = [k for k in g if k[0] == task and k[1] not in CONTROL]
    if len(front) >= 2 and rows:
        name = "with prior preservation" if prior else "without prior preservation"
        lines.append(
            f"  gap to the DreamBooth frontier {name} ({len(front)} step counts), fidelity = {fidelity}: "
            "the row's leak minus the frontier's at the row's fidelity; below 0 = above the frontier"
        )
        for (t, strategy, lab), runs in sorted(g.items()):
            if t != task or strategy in CONTROL:
                continue
            ident, leak = metric(runs, fidelity), metric(runs, "leak")
            row = {s: (ident[s], leak[s]) for s in ident if s in leak}
            try:
                gap = frontier_gap(row, front, n_boot=n_boot)
            except ValueError as err:
                lines.append(f"    {strategy:<30} {lab[:30]:<31} {err}")
                continue
            lines.append(
                f"    {strategy:<30} {lab[:30]:<31} gap {gap['gap']:+.3f} "
                f"[{gap['lo']:+.3f}, {gap['hi']:+.3f}]"
                f" over {gap['n']} seeds: {verdict(gap)}"
            )
    return lines


def paired_lines(g: dict, task: str, n_boot: int) -> list[str]:
    """Balance rows against lambda-0 of the same setting; the positive control against its strategy;
    every multi-round row against dreambooth-matched."""
    lines = ["  paired differences (row - control, same seeds), mean [95 % CI]:"]
    found = False
    for (t, strategy, lab), runs in sorted(g.items()):
        if t != task:
            continue
        controls = []
        base = " ".join(x for x in lab.split() if not x.startswith("lam=")) or "-"
        if "balance" in strategy and strategy != "lambda-0":
            controls.append(("lambda-0", base))
        if strategy == "positive-control":
            of = next(
                (x.split("=", 1)[1] for x in lab.split() if x.startswith("match=")), "uncertainty+diversity"
            )
            rest = " ".join(x for x in lab.split() if not x.startswith("match=")) or "-"
            controls.append((of, rest))
        if strategy not in CONTROL and len(next(iter(runs.values()))["rounds"]) > 1:
            controls.append(("dreambooth-matched", "-"))
        for name, clab in controls:
            other = g.get((task, name, clab))
            if not other:
                continue
            parts = []
            for k in ("identity", "shape_colour", "leak", "ovf"):
                try:
                    d = paired_difference(metric(runs, k), metric(other, k), n_boot=n_boot)
                except ValueError:
                    continue
                parts.append(f"Δ{k} {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] ({verdict(d)})")
            if parts:
                found = True
                n = len(set(runs) & set(other))
                lines.append(f"    {strategy} ({lab}) vs {name} ({clab}), {n} seeds: " + "; ".join(parts))
    return lines if found else []


def noise_lines(results: list[dict], task: str) -> list[str]:
    """Runs that differ only by their thread count: the run-to-run noise floor."""
    by = defaultdict(dict)
    for r in results:
        if r["task"] != task or r.get("error"):
            continue
        v = dict(r.get("variant") or {})
        threads = v.pop("threads", 1)
        by[r["strategy"], json.dumps(v, sort_keys=True), r["seed"]][threads] = r
    lines = []
    for (strategy, v, seed), runs in sorted(by.items()):
        if len(runs) < 2:
            continue
        (ta, a), (tb, b) = sorted(runs.items())[:2]
        for i, (ra, rb) in enumerate(zip(a["rounds"], b["rounds"])):
            d = {m: abs(ra[m] - rb[m]) for m in ("txt_aln", "img_aln", "ovf")}
            ja, jb = ra.get("judge"), rb.get("judge")
            if ja and jb:
                d |= {
                    k: abs(ja[k] - jb[k]) for k in JUDGED if ja.get(k) is not None and jb.get(k) is not None
                }
            lines.append(
                f"  noise floor: {strategy} {label(json.loads(v))} seed {seed} R{i + 1}, "
                f"{ta} vs {tb} threads: " + ", ".join(f"|Δ{k}| {x:.3f}" for k, x in d.items())
            )
    return lines


def cheaper_lines(g: dict, task: str) -> list[str]:
    """Does judging half the held-out images per prompt keep the rows' ordering (identity, leak)?"""
    rows = []
    for (t, strategy, lab), runs in sorted(g.items()):
        if t != task or "threads=" in lab:
            continue
        per = next(iter(runs.values())).get("variant", {}).get("eval_images", 8)
        full = [last_judge(r) for r in runs.values()]
        half = [subset(j, per, max(1, per // 2)) for j in full]
        rows.append(
            (
                f"{strategy} {lab}",
                *(
                    np.mean([j[k] for j in js if j[k] is not None])
                    for js in (full, half)
                    for k in ("identity", "leak")
                ),
            )
        )
    if len(rows) < 3:
        return []
    out = ["  fewer held-out images (half per prompt): does the ordering of the rows change?"]
    for i, k in enumerate(("identity", "leak")):
        full_order = [r[0] for r in sorted(rows, key=lambda r: r[1 + i])]
        half_order = [r[0] for r in sorted(rows, key=lambda r: r[3 + i])]
        tau = _kendall([full_order.index(r[0]) for r in rows], [half_order.index(r[0]) for r in rows])
        out.append(f"    {k}: Kendall tau full vs half {tau:+.2f} over {len(rows)} rows")
    return out


def _kendall(a: list[int], b: list[int]) -> float:
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(s / (n * (n - 1) / 2))
