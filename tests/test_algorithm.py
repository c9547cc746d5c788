"""Known answers for Eq. 6-10 and properties of the selection strategies."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gal import algorithm as A


def test_eq8_overfit_when_not_closer_to_anchor():
    sim_anchor = np.array([[0.30, 0.20, 0.25]])
    sim_non_soi = np.array([[0.25, 0.20, 0.30]])
    # strictly closer to the anchor -> aligned (0); tie or closer to non-SoI -> overfit (1)
    assert A.overfit_verdicts(sim_anchor, sim_non_soi).tolist() == [[0, 1, 1]]


def test_eq8_takes_max_over_several_non_soi_captions():
    sim_anchor = np.array([[0.30, 0.30]])
    sim_non_soi = np.array([[[0.10, 0.35], [0.10, 0.20]]])  # [A, m, c]
    assert A.overfit_verdicts(sim_anchor, sim_non_soi).tolist() == [[1, 0]]


def test_eq8_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        A.overfit_verdicts(np.array([[np.nan]]), np.array([[0.1]]))


def test_eq7_rate_is_share_of_overfit():
    verdicts = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]])
    np.testing.assert_allclose(A.overfit_rate(verdicts), [0.5, 1.0, 0.25])


def test_eq6_known_values():
    omega = A.direction_uncertainty(np.array([0.0, 0.5, 1.0, 0.25]))
    expected_quarter = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    np.testing.assert_allclose(omega, [0.0, math.log(2), 0.0, expected_quarter])


def test_eq9_openness():
    omega = np.array([math.log(2), 0.0, math.log(2), 0.0])
    assert A.openness(omega, lam=0.005) == pytest.approx(0.005 * math.log(2) / 2)
    # the official λ keeps Δ <= λ ln 2 ≈ 0.0035
    assert A.openness(np.full(18, math.log(2)), 0.005) == pytest.approx(0.005 * math.log(2))


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf")])
def test_eq9_refuses_bad_lambda(lam):
    with pytest.raises(ValueError, match="λ"):
        A.openness(np.array([0.5]), lam)


def test_eq10_stop_when_fewer_than_k_open():
    assert A.should_stop(np.array([0.6, 0.0, 0.0]), k=2)
    assert not A.should_stop(np.array([0.6, 0.1, 0.0]), k=2)


def test_top_k_ties_break_by_lower_index():
    omega = np.array([0.5, 0.69, 0.5, 0.69, 0.1])
    assert A.top_k_anchors(omega, 3).tolist() == [1, 3, 0]


def test_top_k_respects_pool():
    omega = np.array([0.9, 0.8, 0.7, 0.6])
    assert A.top_k_anchors(omega, 2, candidates=np.array([False, True, False, True])).tolist() == [1, 3]


def test_k_larger_than_pool_is_refused():
    with pytest.raises(ValueError, match="k=3 is larger than the 2 anchors"):
        A.top_k_anchors(np.array([0.1, 0.2]), 3)


def test_best_image_is_highest_anchor_similarity():
    sim = np.array([[0.1, 0.9, 0.3], [0.5, 0.2, 0.6]])
    assert A.best_image(sim, np.array([0, 1])).tolist() == [1, 2]


def test_best_image_skips_images_a_person_marked_overfit():
    sim = np.array([[0.1, 0.9, 0.3]])
    verdicts = np.array([[0, 1, 0]])
    assert A.best_image(sim, np.array([0]), verdicts).tolist() == [2]


def test_person_overrides_oracle():
    oracle = np.array([[1, 1, 0]])
    person = np.array([[-1, 0, 1]])
    assert A.final_verdicts(oracle, person).tolist() == [[1, 0, 1]]


def test_planted_mixed_anchor_is_selected_with_its_best_image():
    # anchor 2 is the only mixed one: uncertainty picks it first, with its most anchor-like image.
    verdicts = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]])
    sim = np.array([[0.3] * 4, [0.1] * 4, [0.2, 0.1, 0.4, 0.1], [0.3, 0.2, 0.25, 0.1]])
    sel = A.select("uncertainty", sim, verdicts, k=2, lam=0.005)
    assert sel.anchors.tolist() == [2, 3]
    assert sel.slots.tolist() == [2, 0]
    assert sel.weight == 1.0
    balanced = A.select("uncertainty+balance", sim, verdicts, k=2, lam=0.005)
    assert balanced.weight == pytest.approx(balanced.openness)
    assert balanced.openness == pytest.approx(
        0.005 * (math.log(2) + A.direction_uncertainty(np.array([0.25]))[0]) / 4
    )


def test_human_strategy_takes_accepted_images_in_pool():
    verdicts = np.zeros((3, 2), dtype=int)
    person = np.array([[0, -1], [1, 0], [0, 0]])
    sel = A.select(
        "human+balance",
        np.zeros((3, 2)),
        verdicts,
        k=1,
        lam=0.01,
        person=person,
        in_pool=np.array([True, True, False]),
    )
    assert list(zip(sel.anchors.tolist(), sel.slots.tolist())) == [(0, 0), (1, 1)]
    assert sel.weight == sel.openness


def test_human_strategy_needs_person_verdicts():
    with pytest.raises(ValueError, match="review the round"):
        A.select("human", np.zeros((2, 2)), np.zeros((2, 2), dtype=int), k=1, lam=0.0)


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(ValueError, match="uncertainty\\+balance"):
        A.select("greedy", np.zeros((2, 2)), np.zeros((2, 2), dtype=int), k=1, lam=0.0)


verdict_matrices = st.integers(2, 12).flatmap(
    lambda a: st.integers(1, 8).flatmap(lambda m: arrays(np.int64, (a, m), elements=st.integers(0, 1)))
)


@settings(max_examples=60, deadline=None)
@given(verdict_matrices, st.integers(0, 2**31 - 1))
def test_selection_properties(verdicts, seed):
    n_anchors, m = verdicts.shape
    k = max(1, n_anchors // 3)
    sim = np.random.default_rng(seed).random(verdicts.shape)
    omega = A.direction_uncertainty(A.overfit_rate(verdicts))
    assert np.isfinite(omega).all() and (omega >= 0).all() and (omega <= math.log(2) + 1e-12).all()
    for strategy in ("random", "uncertainty", "uncertainty+balance"):
        s1 = A.select(strategy, sim, verdicts, k=k, lam=0.005, rng=np.random.default_rng(seed))
        s2 = A.select(strategy, sim, verdicts, k=k, lam=0.005, rng=np.random.default_rng(seed))
        assert len(set(s1.anchors.tolist())) == k  # exactly k distinct anchors
        assert ((s1.slots >= 0) & (s1.slots < m)).all()
        assert (
            s1.anchors.tolist() == s2.anchors.tolist() and s1.slots.tolist() == s2.slots.tolist()
        )  # same seed
        assert 0 <= s1.openness <= 0.005 * math.log(2) + 1e-12
    # uncertainty never prefers a less uncertain anchor over a more uncertain one left out
    picked = A.select("uncertainty", sim, verdicts, k=k, lam=0.0).anchors
    left = np.setdiff1d(np.arange(n_anchors), picked)
    if left.size:
        assert omega[picked].min() >= omega[left].max() - 1e-12


def test_late_rounds_take_what_is_left_of_the_pool():
    verdicts = np.array([[0, 1], [1, 1], [0, 0], [0, 1]])
    sim = np.arange(8, dtype=float).reshape(4, 2)
    pool = np.array([False, False, True, True])  # 2 anchors left, k = 3
    for strategy in ("random", "uncertainty", "uncertainty+balance"):
        sel = A.select(strategy, sim, verdicts, k=3, lam=0.005, in_pool=pool, rng=np.random.default_rng(0))
        assert sorted(sel.anchors.tolist()) == [2, 3] and len(sel.slots) == 2
    empty = A.select("uncertainty", sim, verdicts, k=3, lam=0.005, in_pool=np.zeros(4, dtype=bool))
    assert empty.anchors.size == 0 and empty.slots.size == 0 and empty.stop and empty.openness == 0.0
    with pytest.raises(ValueError, match="k=5 is larger than the 4 anchors"):
        A.select("uncertainty", sim, verdicts, k=5, lam=0.005)


# -- the seeds' strategies: diverse uncertainty sampling (AISEL) ------------------------------------


def test_strategy_names_parse_and_round_trip():
    for name in A.STRATEGIES:
        assert A.Strategy.parse(name).name == name
    s = A.Strategy.parse("uncertainty+diversity+balance")
    assert (s.query, s.diversity, s.balance) == ("uncertainty", True, True)
    for bad in (
        "random+diversity",
        "uncertainty+balance+diversity",
        "uncertainty+diversity+x",
        "human+diversity",
    ):
        with pytest.raises(ValueError, match="unknown strategy"):
            A.Strategy.parse(bad)
    # a human round of a diversity run takes the person's picks, an auto round keeps the configured query
    assert A.Strategy.parse("uncertainty+diversity").in_mode("human").name == "human+balance"
    assert A.Strategy.parse("uncertainty+diversity").in_mode("auto").name == "uncertainty+diversity"


def _planted(m: int = 2):
    """6 anchors, all equally uncertain (β = 0.5): anchors 0, 1, 2 draw (nearly) the same image, anchors 3
    and 4 lie far from them and from each other, anchor 5 sits between. Slot 0 of each anchor is aligned
    and its best image."""
    verdicts = np.tile(np.array([0, 1] + [0] * (m - 2)), (6, 1))
    verdicts[:, 1] = 1
    sim = np.tile(np.linspace(1.0, 0.5, m), (6, 1))
    e = np.eye(4)
    points = np.array([e[0], e[0] + 0.01 * e[3], e[0] + 0.02 * e[3], e[1], e[2], e[0] + e[1]])  # [6, 4]
    emb = np.repeat(points[:, None, :], m, axis=1).copy()  # every image of an anchor at its point
    return verdicts, sim, emb


def test_diversity_picks_a_planted_far_apart_set_where_uncertainty_takes_the_cluster():
    verdicts, sim, emb = _planted()
    plain = A.select("uncertainty", sim, verdicts, k=3, lam=0.0)
    assert plain.anchors.tolist() == [0, 1, 2]  # ties by index: the three near-duplicates
    diverse = A.select("uncertainty+diversity", sim, verdicts, k=3, lam=0.0, embeddings=emb)
    assert diverse.anchors.tolist() == [0, 3, 4] and diverse.slots.tolist() == [0, 0, 0]
    assert diverse.weight == 1.0
    balanced = A.select("uncertainty+diversity+balance", sim, verdicts, k=3, lam=0.005, embeddings=emb)
    assert balanced.anchors.tolist() == [0, 3, 4] and balanced.weight == pytest.approx(0.005 * math.log(2))


def test_diversity_only_chooses_among_uncertain_anchors():
    verdicts, sim, emb = _planted()
    verdicts[3] = 0  # anchor 3 settled (β = 0): far away, but nothing left to learn there
    sel = A.select("uncertainty+diversity", sim, verdicts, k=3, lam=0.0, embeddings=emb)
    assert 3 not in sel.anchors.tolist() and sel.anchors.tolist() == [0, 4, 5]
    # fewer uncertain anchors than k: the k most uncertain, as plain uncertainty sampling
    verdicts[:] = 0
    verdicts[2, 1] = 1
    sel = A.select("uncertainty+diversity", sim, verdicts, k=3, lam=0.0, embeddings=emb)
    plain = A.select("uncertainty", sim, verdicts, k=3, lam=0.0).anchors.tolist()
    assert sel.anchors.tolist() == sorted(plain) == [0, 1, 2]


def test_diversity_is_deterministic_and_picks_exactly_k_distinct_anchors():
    rng = np.random.default_rng(3)
    for trial in range(20):
        verdicts = rng.integers(0, 2, (10, 4))
        sim = rng.random((10, 4))
        emb = rng.normal(size=(10, 4, 8))
        pool = rng.random(10) < 0.8
        if pool.sum() < 3:
            continue
        runs = [
            A.select(
                "uncertainty+diversity",
                sim,
                verdicts,
                k=3,
                lam=0.0,
                in_pool=pool,
                embeddings=emb,
                rng=np.random.default_rng(seed),
            )
            for seed in (trial, trial + 100)
        ]
        assert (
            runs[0].anchors.tolist() == runs[1].anchors.tolist()
            and runs[0].slots.tolist() == runs[1].slots.tolist()
        )
        one = runs[0]  # images_per_anchor = 1: one image per anchor
        assert len(one.anchors) == len(set(one.anchors.tolist())) == 3 and pool[one.anchors].all()
        several = A.select(
            "uncertainty+diversity",
            sim,
            verdicts,
            k=3,
            lam=0.0,
            in_pool=pool,
            embeddings=emb,
            images_per_anchor=3,
        )
        assert len(set(several.anchors.tolist())) == 3 and set(several.anchors.tolist()) == set(
            one.anchors.tolist()
        )
        assert max(np.bincount(several.anchors)) <= 3
        assert len(set(zip(several.anchors.tolist(), several.slots.tolist()))) == len(
            several.anchors
        )  # no repeats
        extra = [
            (a, s)
            for a, s in zip(several.anchors, several.slots)
            if (a, s) not in set(zip(one.anchors, one.slots))
        ]
        assert all(verdicts[a, s] == 0 for a, s in extra)  # extra images are aligned ones


def test_several_images_per_anchor_only_when_that_raises_diversity():
    verdicts, sim, emb = _planted(m=3)
    verdicts[:, 2] = 0  # a second aligned image per anchor, slot 2
    # every image of an anchor at the same point: a second one only lowers the mean pairwise distance
    same = A.select("uncertainty+diversity", sim, verdicts, k=3, lam=0.0, embeddings=emb, images_per_anchor=2)
    assert same.anchors.tolist() == [0, 3, 4] and same.slots.tolist() == [0, 0, 0]
    # plant anchor 4's slot 2 far from everything: it joins, nothing else does
    emb[4, 2] = -np.ones(4)
    far = A.select("uncertainty+diversity", sim, verdicts, k=3, lam=0.0, embeddings=emb, images_per_anchor=2)
    assert list(zip(far.anchors.tolist(), far.slots.tolist())) == [(0, 0), (3, 0), (4, 0), (4, 2)]
    picked = np.stack([emb[a, s] for a, s in zip(far.anchors, far.slots)])
    assert A.set_diversity(picked) > A.set_diversity(picked[:3])
    # without a share of more than one image per anchor it stays out
    assert A.select("uncertainty+diversity", sim, verdicts, k=3, lam=0.0, embeddings=emb).slots.tolist() == [
        0,
        0,
        0,
    ]


def test_diversity_needs_embeddings_of_the_right_shape():
    verdicts, sim, emb = _planted()
    with pytest.raises(ValueError, match="embeddings"):
        A.select("uncertainty+diversity", sim, verdicts, k=3, lam=0.0)
    with pytest.raises(ValueError, match="do not match"):
        A.select("uncertainty+diversity", sim, verdicts, k=3, lam=0.0, embeddings=emb[:, :1])


def test_set_diversity_known_values():
    assert A.set_diversity(np.eye(3)) == pytest.approx(1.0)  # orthogonal: cosine distance 1
    assert A.set_diversity(np.ones((4, 2))) == pytest.approx(0.0)
    assert A.set_diversity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    assert A.set_diversity(np.ones((1, 3))) == 0.0


# -- the matched-compute control ---------------------------------------------------------------------


def test_matched_real_steps_is_the_last_rounds_real_share_when_retraining_from_base():
    # the toy object: 4 references, 3 added a round, 4 rounds -> the last round trains on 4 real + 9 added
    assert A.matched_real_steps(900, 4, [0, 3, 6, 9]) == round(900 * 4 / 13) == 277
    assert A.matched_real_steps(900, 2, [0, 3, 6, 9]) == round(900 * 2 / 11) == 164  # the style task
    assert A.matched_real_steps(900, 4, [0, 4, 8, 18]) == round(900 * 4 / 22) == 164  # 2 images per anchor
    assert A.matched_real_steps(900, 4, [0]) == 900  # round 1 only: plain DreamBooth is its own match
    # real-rate batches keep the real references' round-1 rate
    assert A.matched_real_steps(900, 4, [0, 3, 6, 9], sampling="real-rate") == 900
    # continuing the adapter: every round's share reaches the final model
    total = 900 * (1 + 4 / 7 + 4 / 10 + 4 / 13)
    assert A.matched_real_steps(900, 4, [0, 3, 6, 9], retrain_from_base=False) == round(total)
    with pytest.raises(ValueError):
        A.matched_real_steps(900, 0, [0])
