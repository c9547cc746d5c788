"""The Table 1 report: what bench/table1.py prints from results.json (no training here).

A wrong mean, a miscounted run or a direction check that always says "lower" would misreport every
benchmark, so the report is checked on hand-made results with known answers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "table1", Path(__file__).resolve().parents[1] / "bench" / "table1.py"
)
table1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table1)


def _run(strategy: str, seed: int, rounds: list[tuple[float, float, float]], added: int = 9) -> dict:
    return {
        "task": "object",
        "strategy": strategy,
        "seed": seed,
        "seconds": 60.0 * (seed + 1),
        "variant": {},
        "rounds": [{"txt_aln": t, "img_aln": i, "ovf": o, "openness": None} for t, i, o in rounds],
        "added": added,
    }


R1 = (1.0, 0.6, 0.4)


@pytest.fixture
def results() -> list[dict]:
    return [
        _run("random", 0, [R1, (0.8, 0.3, 0.1)]),
        _run("random", 1, [R1, (0.6, 0.3, 0.3)]),
        _run("uncertainty+balance", 0, [R1, (1.2, 0.6, 0.2)]),
        _run("uncertainty+balance", 1, [R1, (1.4, 0.58, 0.3)]),
        # a Human run whose pool emptied after round 1 ends early; the other one reached round 2
        _run("human", 0, [R1], added=130),
        _run("human", 1, [R1, (0.9, 0.5, 0.0)], added=120),
    ]


def _rows(text: str, strategy: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(strategy + " "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        block.append(line)
    return [line.split() for line in block]


def test_means_runs_and_last_round(results):
    text = table1.summarise(results, rounds=2)
    ub = _rows(text, "uncertainty+balance")
    # round 2: TXT (1.2, 1.4) -> 1.3 ± 0.1414 (sample sd); OVF (0.2, 0.3) -> 0.25 ± 0.0707
    assert ub[1][:4] == ["2", "2", "1.3000", "±"] and ub[1][4] == "0.1414"
    assert ub[1][-3:] == ["0.2500", "±", "0.0707"]
    human = _rows(text, "human")
    assert human[1][:5] == ["2", "1", "0.9000", "±", "–"]  # only one run reached round 2: no sd
    # "last": each run's own last round -> OVF (0.4, 0.0) -> 0.2 ± 0.2828; added (130, 120) -> 125;
    # min/run (1, 2) -> 1.5
    assert human[2][:2] == ["last", "2"]
    assert human[2][-5:] == ["0.2000", "±", "0.2828", "125.0", "1.5"]


def test_paired_counts_seeds_against_their_own_round_1_and_random(results):
    lines = table1.paired(results)
    ub = next(line for line in lines if "uncertainty+balance" in line)
    # OVF 0.4 -> (0.2, 0.3): -0.15, lower in both; IMG-ALN (0.6, 0.58) >= 0.54 in both;
    # vs Random per seed +0.1, 0.0
    assert "ΔOVF -0.150, lower in 2/2 seeds" in ub and "kept (>= 90 % of R1) in 2/2" in ub
    assert "OVF vs Random +0.050, lower in 0/2" in ub
    rnd = next(line for line in lines if "random" in line)
    assert "IMG-ALN kept (>= 90 % of R1) in 0/2" in rnd and "vs Random" not in rnd
    human = next(line for line in lines if line.strip().startswith("human "))
    # each run's own last round: (0.4 -> 0.4) and (0.4 -> 0.0): -0.2, lower in 1/2
    assert "ΔOVF -0.200, lower in 1/2 seeds" in human


def test_direction_reads_the_numbers(results):
    (line,) = table1.direction(results)
    # U+B OVF 0.25 < R1 0.4 but > Random 0.2; IMG-ALN 0.59 >= 0.9 * 0.6
    assert "OVF 0.250 vs R1 0.400: lower" in line
    assert "vs Random 0.200: NOT lower" in line and "Random's IMG-ALN 0.300" in line
    assert "IMG-ALN 0.590 vs R1 0.600: kept" in line
    results[3]["rounds"][1]["img_aln"] = 0.2  # U+B mean IMG-ALN 0.4 < 0.54
    results[3]["rounds"][1]["ovf"] = 0.0  # U+B mean OVF 0.1 < Random 0.2
    (line,) = table1.direction(results)
    assert "vs Random 0.200: lower" in line and "COLLAPSED" in line


# -- the simulated person (bench/table1.py's Human rows) ------------------------------------------------


def _images(margins: list[list[float]]) -> list[dict]:
    """One image per margin, anchors by row: sim_anchor - sim_non_soi = margin."""
    return [
        {"id": 10 * a + j, "anchor_index": a, "sim_anchor": 0.5 + d, "sim_non_soi": 0.5}
        for a, row in enumerate(margins)
        for j, d in enumerate(row)
    ]


MARGINS = [[0.30, 0.20, -0.1], [0.05, -0.2, -0.3], [0.25, 0.01, 0.02]]


def test_person_without_budget_judges_every_image_as_eq8():
    verdicts = table1.person_verdicts(_images(MARGINS), budget=0, noise=0.0, rng=np.random.default_rng(0))
    assert verdicts == {0: 0, 1: 0, 2: 1, 10: 0, 11: 1, 12: 1, 20: 0, 21: 0, 22: 0}


def test_person_with_budget_accepts_the_clearest_image_of_different_anchors():
    rng = np.random.default_rng(0)
    # clearest aligned: 0 (0.30, anchor 0), then 20 (0.25, anchor 2); 1 (0.20) is anchor 0 again
    assert table1.person_verdicts(_images(MARGINS), budget=2, noise=0.0, rng=rng) == {0: 0, 20: 0}
    assert table1.person_verdicts(_images(MARGINS), budget=3, noise=0.0, rng=rng) == {0: 0, 20: 0, 10: 0}
    # only three anchors have an aligned image: a larger budget accepts no more, and never an overfit one
    assert table1.person_verdicts(_images(MARGINS), budget=9, noise=0.0, rng=rng) == {0: 0, 20: 0, 10: 0}
    assert table1.person_verdicts(_images([[-0.1, -0.2]]), budget=3, noise=0.0, rng=rng) == {}


def test_noisy_person_misreads_with_the_given_rate_and_is_reproducible():
    # a person who misreads everything picks the most overfit image of each anchor
    wrong = table1.person_verdicts(_images(MARGINS), budget=3, noise=1.0, rng=np.random.default_rng(0))
    assert wrong == {12: 0, 2: 0}  # -0.3 (anchor 1), -0.1 (anchor 0); anchor 2 has no overfit image
    many = _images([[0.1] * 50] * 40)  # 2,000 aligned images
    verdicts = table1.person_verdicts(many, budget=0, noise=0.2, rng=np.random.default_rng(1))
    assert 0.17 < np.mean(list(verdicts.values())) < 0.23
    again = table1.person_verdicts(many, budget=0, noise=0.2, rng=np.random.default_rng(1))
    assert verdicts == again


def test_job_variant_keys_the_person_only_on_human_rows():
    base = {"eval_images": 8}
    assert table1.job_variant(base, "uncertainty+balance", 3, 0.2) == base
    assert table1.job_variant(base, "human+balance", 3, 0.2) == {"eval_images": 8, "person_budget": 3}
    assert table1.job_variant(base, "human-noisy", 0, 0.2) == {
        "eval_images": 8,
        "person_budget": 0,
        "noise": 0.2,
    }


def test_grid_names_keep_variants_apart():
    default = table1.job_variant({"eval_images": 8}, "human+balance", 3, 0.2)
    names = {
        table1.grid_name("object", "human+balance", 1, default),
        table1.grid_name("object", "human+balance", 1, default | {"person_budget": 0}),
        table1.grid_name(
            "object", "human+balance", 1, default | {"person_budget": 0, "sampling": "real-rate"}
        ),
        table1.grid_name("object", "uncertainty+balance", 1, {"eval_images": 8, "lam": 0.0}),
    }
    assert names == {
        "object-human+balance-seed1.png",
        "object-human+balance-person_budget0-seed1.png",
        "object-human+balance-person_budget0-samplingreal-rate-seed1.png",
        "object-uncertainty+balance-lam0.0-seed1.png",
    }


def test_variants_lists_every_setting_side_by_side(results):
    control = _run("uncertainty+balance", 0, [R1, (1.0, 0.5, 0.1)])
    control["variant"] = {"lam": 0.0}
    lines = table1.variants([*results, control]).splitlines()
    ub = [line.split() for line in lines if "uncertainty+balance" in line]
    default, lam0 = ub  # one row each, sorted by the variant's label ("" before "lam=0.0")
    # default: 2 runs, R1 OVF 0.4, last TXT (1.2, 1.4) -> 1.3, IMG (0.6, 0.58) -> 0.59, OVF (0.2, 0.3) -> 0.25
    assert default[2:] == [
        "2",
        "0.400",
        "±",
        "0.000",
        "1.300",
        "±",
        "0.141",
        "0.590",
        "±",
        "0.014",
        "0.250",
        "±",
        "0.071",
        "9.0",
    ]
    assert lam0[2:] == [
        "lam=0.0",
        "1",
        "0.400",
        "±",
        "–",
        "1.000",
        "±",
        "–",
        "0.500",
        "±",
        "–",
        "0.100",
        "±",
        "–",
        "9.0",
    ]


# -- issue 17: the control rows ---------------------------------------------------------------------


def test_report_reads_new_rows_against_dreambooth_matched():
    base = [(1.0, 0.60, 0.20)]
    results = (
        [_run("dreambooth-matched", s, base, added=0) | {"matched": {"steps": 277}} for s in range(5)]
        + [
            # lower OVF in 4 seeds with IMG-ALN >= 95 % of the control: the target
            _run("uncertainty+diversity", s, [R1, (1.2, 0.58, 0.10 if s < 4 else 0.30)])
            for s in range(5)
        ]
        + [
            # lower OVF in every seed, but by losing the subject (IMG-ALN 80 %): not met
            _run("lambda-0", s, [R1, (1.2, 0.48, 0.05)])
            for s in range(5)
        ]
    )
    lines = table1.against_matched(results)
    text = "\n".join(lines)
    assert "277 steps" in text
    div = next(line for line in lines if "uncertainty+diversity" in line)
    assert "lower in 4/5" in div and ">= 95% in 5/5" in div and "both in 4/5: MET" in div
    lam = next(line for line in lines if "lambda-0" in line)
    assert "lower in 5/5" in lam and ">= 95% in 0/5" in lam and "both in 0/5: not met" in lam
    assert not any(line.strip().startswith("dreambooth-matched") for line in lines)
    # the summary table has the new rows, the one-round control included
    summary = table1.summarise(results, rounds=2)
    assert _rows(summary, "dreambooth-matched")[0][:3] == ["dreambooth-matched", "1", "5"]
    assert "both in 4/5: MET" in summary


def test_matched_steps_come_from_the_compared_runs_counts():
    results = [
        _run("uncertainty+balance", 0, [R1] * 4, added=9) | {"added_per_round": [0, 3, 6, 9]},
        _run("uncertainty+diversity", 0, [R1] * 4, added=15) | {"added_per_round": [0, 5, 10, 15]},
    ]
    steps, counts, found = table1.matched_steps_for(results, "object", 0, {}, 4, 900, 4, 3, "pooled")
    assert (steps, counts, found) == (277, [0, 3, 6, 9], True)
    steps, _, found = table1.matched_steps_for(
        results, "object", 0, {"match": "uncertainty+diversity"}, 4, 900, 4, 3, "pooled"
    )
    assert (steps, found) == (round(900 * 4 / 19), True)
    # not run yet: the counts it will have (k a round, no early stop)
    assert table1.matched_steps_for(results, "object", 1, {}, 4, 900, 4, 3, "pooled") == (
        277,
        [0, 3, 6, 9],
        False,
    )
    assert table1.matched_steps_for([], "style", 0, {}, 4, 900, 2, 3, "pooled")[0] == 164


def test_adopt_relabels_the_old_controls_as_rows():
    old = [
        _run("uncertainty+balance", 0, [R1] * 4) | {"variant": {"eval_images": 8}},
        _run("uncertainty+balance", 0, [R1] * 4) | {"variant": {"eval_images": 8, "lam": 0.0}},
        _run("uncertainty+balance", 0, [R1]) | {"variant": {"eval_images": 8, "steps": 277}},
        _run("uncertainty+balance", 0, [R1]) | {"variant": {"eval_images": 8, "steps": 300}},  # not the match
        _run("uncertainty+balance", 0, [R1] * 4) | {"variant": {"eval_images": 8, "lam": 1.0}},
    ]
    adopted = table1.adopt_controls(old)
    assert [(r["strategy"], r["variant"]) for r in adopted] == [
        ("lambda-0", {"eval_images": 8}),
        ("dreambooth-matched", {"eval_images": 8}),
    ]
    assert adopted[1]["matched"]["steps"] == 277


def test_real_rate_rows_are_matched_by_their_own_round_1():
    rr = {"sampling": "real-rate"}
    results = [
        _run("uncertainty+diversity", s, [R1, (1.1, 0.59, 0.3 if s < 4 else 0.5)]) | {"variant": rr}
        for s in range(5)
    ]
    lines = table1.against_matched(results)
    assert "its own round 1" in lines[0]
    assert "lower in 4/5" in lines[1] and ">= 95% in 5/5" in lines[1] and "MET" in lines[1]


def test_targets_count_each_setting_against_both_controls_of_the_same_seed():
    def run(strategy, seed, rounds, **variant):
        return _run(strategy, seed, rounds) | {"task": "known", "variant": {"eval_images": 8, **variant}}

    dm = [(1.3, 0.70, 0.20), (1.3, 0.80, 0.10)]  # seeds 0, 1: one round each
    results = [run("dreambooth-matched", s, [dm[s]]) for s in (0, 1)] + [
        # seed 0: lower OVF than dm (0.1 < 0.2) at 0.69 >= 0.95 * 0.70 -> both; seed 1: OVF 0.3 > 0.1
        run("uncertainty+diversity", 0, [(1.0, 0.8, 0.5), (1.2, 0.69, 0.1)]),
        run("uncertainty+diversity", 1, [(1.0, 0.8, 0.5), (1.2, 0.70, 0.3)]),
        # real-rate: vs own round 1 (0.5 -> 0.4 lower, 0.78 >= 0.76 kept) in both seeds
        run("uncertainty+diversity", 0, [(1.0, 0.8, 0.5), (1.2, 0.78, 0.4)], sampling="real-rate"),
        run("uncertainty+diversity", 1, [(1.0, 0.8, 0.5), (1.2, 0.78, 0.4)], sampling="real-rate"),
    ]
    lines = table1.targets(results).splitlines()
    plain = next(x for x in lines if "uncertainty+diversity" in x and "real-rate" not in x)
    rr = next(x for x in lines if "sampling=real-rate" in x)
    # seed 1 keeps 0.70 < 0.95 * 0.80: kept in 1; vs own R1 shown in brackets (not the matched control)
    assert "1/1/1 of 2" in plain and "(2/0/0 of 2)" in plain
    assert "0/2/0 of 2" in rr and "2/2/2 of 2" in rr and "(2/2/2" not in rr
    assert "MET" not in plain  # the target needs both in >= 4 seeds
    control = next(x for x in lines if x.split()[1] == "dreambooth-matched")
    assert control.split()[-2:] == ["0.150", "0.750"]


def test_targets_use_the_control_with_the_rows_captions_and_mark_a_fallback():
    def run(strategy, seed, rounds, **variant):
        return _run(strategy, seed, rounds) | {"task": "known", "variant": {"eval_images": 8, **variant}}

    results = [
        run("dreambooth-matched", 0, [(1.3, 0.70, 0.20)]),
        run("dreambooth-matched", 0, [(1.3, 0.70, 0.05)], captions="informative", match="x"),
        run("uncertainty+diversity", 0, [(1.0, 0.8, 0.5), (1.2, 0.70, 0.1)], captions="informative"),
        run("uncertainty+diversity", 0, [(1.0, 0.8, 0.5), (1.2, 0.70, 0.1)], images_per_anchor=2),
        run("uncertainty+diversity", 0, [(1.0, 0.8, 0.5), (1.2, 0.70, 0.1)], captions="other"),
    ]
    lines = table1.targets(results).splitlines()
    informative = next(x for x in lines if "captions=informative" in x)
    assert "0/1/0 of 1" in informative  # against its own control (OVF 0.05), not the plain one (0.20)
    assert "1/1/1 of 1" in next(x for x in lines if "images_per_anchor=2" in x)  # the plain control
    other = next(x for x in lines if "captions=other" in x)
    assert "1/1/1 of 1*" in other and any(x.startswith("*: no dreambooth-matched") for x in lines)


# --- issue 29: the paired bootstrap, the DreamBooth frontier, the trial report, the environment record ----
from bench.trial import stats  # noqa: E402  (importable once table1 put the repository root on sys.path)
from bench.trial.env import environment  # noqa: E402
from bench.trial.report import subset, trial_report  # noqa: E402


def test_bootstrap_ci_known_answers():
    # no spread, no interval
    c = stats.bootstrap_mean([0.25] * 7)
    assert (c["mean"], c["lo"], c["hi"], c["n"]) == (0.25, 0.25, 0.25, 7)
    # 100 coin flips: mean 0.5, sd of the mean 0.05, so the 95 % interval is about 0.5 ± 0.098
    c = stats.bootstrap_mean([0, 1] * 50, seed=3)
    assert c["mean"] == 0.5 and c["lo"] < 0.5 < c["hi"]
    assert abs((c["hi"] - c["lo"]) - 2 * 1.96 * 0.05) < 0.02
    # seeded: the same seed gives the same interval
    assert stats.bootstrap_mean([0.1, 0.5, 0.3], seed=1) == stats.bootstrap_mean([0.1, 0.5, 0.3], seed=1)
    with pytest.raises(ValueError, match="run at least one seed"):
        stats.bootstrap_mean([None])


def test_paired_difference_uses_common_seeds_and_says_which_side():
    a = {0: 0.5, 1: 0.6, 2: 0.7, 3: 9.0}
    b = {0: 0.4, 1: 0.5, 2: 0.6}
    d = stats.paired_difference(a, b)
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(0.1) and d["lo"] == pytest.approx(0.1)
    assert stats.verdict(d) == "above 0"
    assert stats.verdict({"lo": -0.1, "hi": 0.2}) == "includes 0"
    assert stats.verdict({"lo": -0.3, "hi": -0.2}) == "below 0"
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_difference({0: 1.0}, {1: 1.0})


def test_frontier_interpolates_its_pareto_points():
    points = [(0.5, 0.1), (0.9, 0.5), (0.6, 0.6)]  # (0.6, 0.6) is beaten by (0.9, 0.5)
    assert stats.pareto(points) == [(0.5, 0.1), (0.9, 0.5)]
    assert stats.frontier_leak(points, 0.7) == pytest.approx(0.3)
    assert stats.frontier_leak(points, 0.2) == pytest.approx(0.1)  # below: the least leak reached
    assert stats.frontier_leak(points, 1.0) == pytest.approx(0.5)  # above: its most faithful point's


def test_frontier_gap_sign_and_interval():
    front = {
        "steps=100": {s: (0.5, 0.1) for s in range(4)},
        "steps=900": {s: (0.9, 0.5) for s in range(4)},
    }
    above = stats.frontier_gap({s: (0.7, 0.1) for s in range(4)}, front)
    assert above["gap"] == pytest.approx(-0.2) and above["hi"] == pytest.approx(-0.2)
    assert stats.verdict(above) == "below 0"
    on = stats.frontier_gap({s: (0.7, 0.3) for s in range(4)}, front)
    assert on["gap"] == pytest.approx(0.0, abs=1e-9) and stats.verdict(on) == "includes 0"
    # noisy seeds widen the interval until it includes 0
    noisy = stats.frontier_gap({0: (0.7, 0.0), 1: (0.7, 0.6), 2: (0.7, 0.1), 3: (0.7, 0.5)}, front)
    assert noisy["lo"] < 0 < noisy["hi"]


def _judged(strategy, seed, identity, leak, variant=None, rounds=1):
    per = {"identity": [1] * int(identity * 8) + [0] * (8 - int(identity * 8)), "scene": [1] * 8, "leak": []}
    per["leak"] = [1] * int(leak * 8) + [0] * (8 - int(leak * 8))
    j = {"identity": identity, "scene": 1.0, "leak": leak, "per_image": per}
    rnd = {"txt_aln": 1.0, "img_aln": 0.7, "ovf": leak, "judge": j}
    return {
        "task": "known",
        "strategy": strategy,
        "seed": seed,
        "variant": {"eval_images": 8, **(variant or {})},
        "rounds": [rnd] * rounds,
        "env": {"versions": {"torch": "x"}, "cpu_capability": "AVX2", "torch_threads": 1, "commit": "abc"},
    }


def test_trial_report_reads_frontier_controls_and_noise():
    res = []
    for s in range(3):
        res += [
            _judged("dreambooth", s, 0.5, 0.125, {"steps": 100}),
            _judged("dreambooth", s, 0.875, 0.5, {"steps": 900}),
            _judged("positive-control", s, 0.75, 0.125, rounds=2),
            _judged("uncertainty+diversity", s, 0.75, 0.5, rounds=2),
            _judged("uncertainty+balance", s, 0.875, 0.625, rounds=2),
            _judged("lambda-0", s, 0.875, 0.5, rounds=2),
        ]
    res.append(_judged("dreambooth", 0, 0.625, 0.25, {"steps": 100, "threads": 2}))
    text = trial_report(res, n_boot=200)
    assert "AVX2 threads 1 @abc" in text
    # the positive control sits 0.25 below the frontier (0.375 there at identity 0.75) in every seed
    assert "positive-control" in text and "gap -0.250 [-0.250, -0.250] over 3 seeds: below 0" in text
    assert "gap +0.125 [+0.125, +0.125] over 3 seeds: above 0" in text  # uncertainty+diversity
    assert "uncertainty+balance (-) vs lambda-0 (-), 3 seeds: Δidentity +0.000" in text
    assert "Δleak +0.125 [+0.125, +0.125] (above 0)" in text
    assert "positive-control (-) vs uncertainty+diversity (-), 3 seeds" in text
    assert "noise floor: dreambooth steps=100 seed 0 R1, 1 vs 2 threads" in text
    assert "|Δidentity| 0.125" in text


def test_subset_keeps_the_first_images_of_each_prompt():
    judge = {
        "per_image": {"identity": [1, 1, 0, 0, 0, 0, 1, 1], "scene": [None] * 8, "leak": [1, 0, 1, 0] * 2}
    }
    half = subset(judge, per_prompt=4, keep=2)
    assert half == {"identity": 0.5, "shape_colour": None, "scene": None, "leak": 0.5}


def test_environment_records_versions_threads_commit_command():
    env = environment(["bench/table1.py", "--seeds", "0"])
    assert env["versions"]["torch"] and env["versions"]["numpy"]
    assert env["cpu_capability"] and env["torch_threads"] >= 1
    assert env["command"] == "bench/table1.py --seeds 0" and env["commit"]


@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[1] / "gal/toyworld/judge.safetensors").exists(), reason="no judge"
)
def test_rejudge_reads_the_kept_held_out_images(tmp_path):
    from gal.toyworld.world import Spec, subject_renders

    images = subject_renders([Spec("star", "green", "checkered", "stairs")], 3, seed=4)
    (tmp_path / "evals/run/r01").mkdir(parents=True)
    for i, im in enumerate(images):
        im.save(tmp_path / "evals/run/r01" / f"e{i:03d}.png")
    run = {"task": "known", "evals": "evals/run", "eval_prompts": ["a <sks> star on a snowy field"] * 3}
    run["rounds"] = [{"ovf": 0.0}]
    assert table1.rejudge([run, {"task": "known", "rounds": [{}]}], tmp_path) == 1
    j = run["rounds"][0]["judge"]
    assert j["per_image"]["scene"] == [0, 0, 0] and j["per_image"]["leak"] == [1, 1, 1]  # stairs, not snow


def test_round_one_of_the_rows_is_a_frontier_point():
    from bench.trial.report import frontier_points, groups

    res = []
    for s in range(2):
        row = _judged("positive-control", s, 0.75, 0.125, {"steps": 450}, rounds=2)
        row["rounds"] = [_judged("x", s, 0.875, 0.5)["rounds"][0], row["rounds"][1]]  # round 1: 900-step DB
        res += [row, _judged("dreambooth", s, 0.5, 0.125, {"steps": 100})]
    front = frontier_points(groups(res), "known", prior=False)
    assert front == {
        "steps=100": {0: (0.5, 0.125), 1: (0.5, 0.125)},
        "round 1 of the rows, steps=450": {0: (0.875, 0.5), 1: (0.875, 0.5)},
    }
    assert "gap -0.250 [-0.250, -0.250] over 2 seeds: below 0" in trial_report(res, n_boot=100)
