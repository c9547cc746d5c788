"""The GAL algorithm (paper Sec. 3, Eq. 6-10): pure functions over score arrays.

Nothing here touches a model, a file or a database: every function takes arrays and returns arrays,
so each equation is tested with known answers. Shapes are written in comments: ``A`` anchors,
``m`` images per anchor.

Verdict convention: ``1`` = overfit (the non-subject content of the references leaked in),
``0`` = aligned with the anchor. ``-1`` marks "no verdict" where a person may not have judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUERIES = ("random", "uncertainty", "human")  # which images a round adds
# Table 1's five rows, kept as the names people type: each is a query, with or without Balance; and the
# AISEL seed's diverse uncertainty sampling (``+diversity``: among the uncertain anchors, a set whose
# images lie far apart in the oracle's image-embedding space).
STRATEGIES = (
    "random",
    "human",
    "uncertainty",
    "uncertainty+balance",
    "human+balance",
    "uncertainty+diversity",
    "uncertainty+diversity+balance",
)


@dataclass(frozen=True)
class Strategy:
    """A strategy is a query (which images a round adds) times Balance (whether they weigh Δ, Eq. 9);
    the uncertainty query may also ask for diversity (``uncertainty+diversity[+balance]``)."""

    query: str  # random | uncertainty | human
    balance: bool  # added images weigh Δ of the round (else 1.0)
    diversity: bool = False  # uncertainty only: farthest-point picks in image-embedding space

    @property
    def name(self) -> str:
        return "+".join([self.query] + ["diversity"] * self.diversity + ["balance"] * self.balance)

    @property
    def human(self) -> bool:
        """The person's accepted images are the picks (Eq. 10 never stops such a round)."""
        return self.query == "human"

    @classmethod
    def parse(cls, name: str) -> Strategy:
        """``"uncertainty+balance"`` -> Strategy("uncertainty", True); any query, with ``+balance`` or not;
        ``"uncertainty+diversity[+balance]"`` -> diverse uncertainty sampling."""
        query, *mods = str(name).split("+")
        diversity = mods[:1] == ["diversity"] and query == "uncertainty"
        rest = mods[1:] if diversity else mods
        if query not in QUERIES or rest not in ([], ["balance"]):
            raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
        return cls(query, bool(rest), diversity)

    def in_mode(self, mode: str) -> Strategy:
        """The strategy a round committed in ``mode`` uses: a human round takes the person's picks, an auto
        round the oracle's uncertainty; a strategy already of that kind is kept as configured."""
        if mode == "human":
            return self if self.human else Strategy("human", True)
        return self if not self.human else Strategy("uncertainty", True)


def overfit_verdicts(sim_anchor: np.ndarray, sim_non_soi: np.ndarray) -> np.ndarray:
    """Eq. 8: Φ = 1 when sim(image, anchor) <= sim(image, non-SoI text), else 0.

    ``sim_non_soi`` may carry one column per non-SoI caption (``[A, m, c]``); the max is taken,
    since an image that matches *any* reference background is overfit.
    """
    sim_anchor = np.asarray(sim_anchor, dtype=np.float64)  # [A, m]
    sim_non_soi = np.asarray(sim_non_soi, dtype=np.float64)  # [A, m] or [A, m, c]
    if sim_non_soi.ndim == sim_anchor.ndim + 1:
        sim_non_soi = sim_non_soi.max(axis=-1)
    if sim_anchor.shape != sim_non_soi.shape:
        raise ValueError(
            f"similarity shapes differ: anchor {sim_anchor.shape} vs non-SoI {sim_non_soi.shape}"
        )
    if not (np.isfinite(sim_anchor).all() and np.isfinite(sim_non_soi).all()):
        raise ValueError("similarities contain NaN or inf: the oracle returned an invalid score")
    return (sim_anchor <= sim_non_soi).astype(np.int64)


def final_verdicts(oracle: np.ndarray, person: np.ndarray | None = None) -> np.ndarray:
    """The person's verdict where given (``>= 0``), else the oracle's. Both ``[A, m]``."""
    oracle = np.asarray(oracle, dtype=np.int64)
    if person is None:
        return oracle.copy()
    person = np.asarray(person, dtype=np.int64)
    if person.shape != oracle.shape:
        raise ValueError(f"person verdicts {person.shape} do not match oracle verdicts {oracle.shape}")
    return np.where(person >= 0, person, oracle)


def overfit_rate(verdicts: np.ndarray) -> np.ndarray:
    """Eq. 7: β_i = Σ_j Φ(I_ij) / m, the share of overfit images of each anchor. ``[A, m] -> [A]``."""
    verdicts = np.asarray(verdicts)
    if verdicts.ndim != 2 or verdicts.shape[1] == 0:
        raise ValueError(f"verdicts must be [anchors, m] with m >= 1, got shape {verdicts.shape}")
    if not np.isin(verdicts, (0, 1)).all():
        raise ValueError("verdicts must be 0 (aligned) or 1 (overfit)")
    return verdicts.mean(axis=1)


def direction_uncertainty(rate: np.ndarray) -> np.ndarray:
    """Eq. 6: Ω_i = -[(1-β) ln(1-β) + β ln β], natural log; 0 at β ∈ {0, 1}, max ln 2 at β = 0.5."""
    rate = np.asarray(rate, dtype=np.float64)  # [A]
    if ((rate < 0) | (rate > 1) | ~np.isfinite(rate)).any():
        raise ValueError("overfit rates must lie in [0, 1]")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(rate > 0, rate * np.log(rate), 0.0) + np.where(
            rate < 1, (1 - rate) * np.log(1 - rate), 0.0
        )
    return -terms


def openness(uncertainty: np.ndarray, lam: float) -> float:
    """Eq. 9: Δ = λ / |A| · Σ_i Ω(a_i), the loss weight of the references a round adds."""
    uncertainty = np.asarray(uncertainty, dtype=np.float64)  # [A]
    check_lambda(lam)
    if uncertainty.size == 0:
        return 0.0
    return float(lam * uncertainty.mean())


def should_stop(uncertainty: np.ndarray, k: int) -> bool:
    """Eq. 10: stop when fewer than k anchors still have Ω > 0 (too few open directions)."""
    return int((np.asarray(uncertainty) > 0).sum()) < k


def top_k_anchors(uncertainty: np.ndarray, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """The k anchors with the highest Ω, ties broken by the lower anchor index (deterministic).

    ``candidates`` is a boolean mask of anchors still in the pool.
    """
    uncertainty = np.asarray(uncertainty, dtype=np.float64)  # [A]
    pool = np.arange(uncertainty.size) if candidates is None else np.flatnonzero(candidates)
    check_k(k, pool.size)
    # lexsort sorts by the last key first: -Ω descending, then index ascending.
    order = np.lexsort((pool, -uncertainty[pool]))
    return pool[order[:k]]


def best_image(sim_anchor: np.ndarray, anchors: np.ndarray, verdicts: np.ndarray | None = None) -> np.ndarray:
    """The new reference of each picked anchor: its image with the highest sim(image, anchor).

    With ``verdicts`` given, overfit images are passed over when the anchor has an aligned one
    (the paper picks by similarity alone; a person's "overfit" must not be picked back in).
    """
    sim_anchor = np.asarray(sim_anchor, dtype=np.float64)  # [A, m]
    picks = []
    for a in np.asarray(anchors, dtype=np.int64):
        scores = sim_anchor[a].copy()
        if verdicts is not None and (np.asarray(verdicts)[a] == 0).any():
            scores[np.asarray(verdicts)[a] != 0] = -np.inf
        picks.append(int(np.argmax(scores)))  # argmax: first index wins ties
    return np.asarray(picks, dtype=np.int64)


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - cos`` between rows of ``a [n, d]`` and ``b [p, d]`` (rows need not be unit length).
    ``-> [n, p]``"""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return 1.0 - a @ b.T


def set_diversity(embeddings: np.ndarray) -> float:
    """Mean pairwise cosine distance of a set of image embeddings ``[n, d]`` (0 for fewer than 2)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    n = len(embeddings)
    if n < 2:
        return 0.0
    d = _cosine_distance(embeddings, embeddings)
    return float(d[~np.eye(n, dtype=bool)].mean())


def diverse_picks(
    uncertainty: np.ndarray,
    sim_anchor: np.ndarray,
    verdicts: np.ndarray,
    embeddings: np.ndarray,
    k: int,
    candidates: np.ndarray | None = None,
    images_per_anchor: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Diverse uncertainty sampling (AISEL seed): ``(anchors, slots)`` of the images a round adds.

    1. The candidates are the uncertain anchors in the pool (Ω > 0); when fewer than ``k`` are, the ``k``
       most uncertain (as :func:`top_k_anchors`), so there is nothing to choose and no diversity step.
    2. Each candidate is represented by its :func:`best_image`. Farthest-point sampling: start from the
       most uncertain candidate (lower index on ties), then repeatedly add the candidate whose image is
       farthest (largest min cosine distance) from the images already picked — ties: higher Ω, then
       lower index. Exactly ``k`` distinct anchors (fewer only when the pool holds fewer).
    3. ``images_per_anchor > 1``: another aligned image of a picked anchor joins the picks only if it
       raises the set's diversity (mean pairwise cosine distance, :func:`set_diversity`); greedily, the
       image that raises it most first, until none does or every anchor has its share.

    ``embeddings`` is ``[A, m, d]``, the oracle's image embeddings of the round's images. Deterministic.
    """
    uncertainty = np.asarray(uncertainty, dtype=np.float64)  # [A]
    verdicts = np.asarray(verdicts, dtype=np.int64)  # [A, m]
    emb = np.asarray(embeddings, dtype=np.float64)  # [A, m, d]
    if emb.shape[:2] != verdicts.shape:
        raise ValueError(f"embeddings {emb.shape} do not match verdicts {verdicts.shape}")
    if not isinstance(images_per_anchor, (int, np.integer)) or images_per_anchor < 1:
        raise ValueError(f"images_per_anchor must be a whole number >= 1, got {images_per_anchor!r}")
    in_pool = (
        np.ones(uncertainty.size, dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool)
    )
    open_ = in_pool & (uncertainty > 0)
    if int(open_.sum()) < k:
        anchors = np.sort(
            top_k_anchors(uncertainty, min(k, int(in_pool.sum())), in_pool)
            if in_pool.any()
            else np.zeros(0, np.int64)
        )
    else:
        cands = np.flatnonzero(open_)
        reps = best_image(sim_anchor, cands, verdicts)
        points = emb[cands, reps]  # [c, d]
        chosen = [int(top_k_anchors(uncertainty, 1, open_)[0])]
        nearest = _cosine_distance(points, points[np.flatnonzero(cands == chosen[0])])[:, 0]  # [c]
        while len(chosen) < k:
            free = ~np.isin(cands, chosen)
            idx = np.flatnonzero(free)
            # lexsort: last key first — farthest first, then higher Ω, then lower index
            best = idx[np.lexsort((cands[idx], -uncertainty[cands[idx]], -nearest[idx]))[0]]
            chosen.append(int(cands[best]))
            nearest = np.minimum(nearest, _cosine_distance(points, points[best : best + 1])[:, 0])
        anchors = np.sort(np.asarray(chosen, dtype=np.int64))
    slots = best_image(sim_anchor, anchors, verdicts)
    picks = [(int(a), int(s)) for a, s in zip(anchors, slots)]
    if images_per_anchor > 1 and len(picks) > 0:
        extra = [(int(a), j) for a in anchors for j in range(verdicts.shape[1]) if verdicts[a, j] == 0]
        while True:
            have = np.stack([emb[a, s] for a, s in picks])
            current = set_diversity(have)
            counts = {a: sum(p[0] == a for p in picks) for a in anchors.tolist()}
            options = [(a, j) for a, j in extra if (a, j) not in picks and counts[a] < images_per_anchor]
            if not options:
                break
            gains = [set_diversity(np.vstack([have, emb[a, j][None]])) - current for a, j in options]
            best = int(np.argmax(gains))  # first option wins ties (lower anchor, then lower slot)
            if gains[best] <= 1e-12:
                break
            picks.append(options[best])
        picks.sort()
    return (
        np.asarray([a for a, _ in picks], dtype=np.int64),
        np.asarray([s for _, s in picks], dtype=np.int64),
    )


def matched_real_steps(
    steps: int,
    n_real: int,
    added_per_round: list[int],
    *,
    sampling: str = "pooled",
    retrain_from_base: bool = True,
) -> int:
    """Plain DreamBooth's step count matched to a GAL run's training of its real references.

    A GAL run trains ``steps`` per round; under ``pooled`` sampling a batch slot draws a real reference
    with probability ``n_real / (n_real + n_added_r)``, where ``n_added_r`` is the number of added images
    round ``r`` trains on (``added_per_round[r-1]``, 0 in round 1). The real references' share of round
    ``r``'s steps is ``steps · n_real / (n_real + n_added_r)``; under ``real-rate`` sampling it is
    ``steps`` (they keep round 1's batches). When each round retrains from the base, only the last
    round's training reaches the final model, so the matched count is the last round's share:
    ``round(steps · n_real / (n_real + n_added_last))`` — 900 · 4 / (4 + 9) = 277 for the toy object.
    When rounds continue the previous adapter, the shares add up over the rounds.
    """
    if n_real < 1 or steps < 1:
        raise ValueError("need at least one real reference and one step")
    added = list(added_per_round) or [0]
    shares = [1.0 if sampling == "real-rate" else n_real / (n_real + a) for a in added]
    total = shares[-1] if retrain_from_base else sum(shares)
    return max(1, int(round(steps * total)))


def check_k(k: int, n_anchors: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    if k > n_anchors:
        raise ValueError(f"k={k} is larger than the {n_anchors} anchors in the pool: lower k or add anchors")


def check_lambda(lam: float) -> None:
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"λ (openness learning rate) must be a finite number >= 0, got {lam!r}")


@dataclass(frozen=True)
class Selection:
    """What one round adds: for each pick, the anchor, the image slot and the loss weight."""

    anchors: np.ndarray  # [n] anchor indices
    slots: np.ndarray  # [n] image index within the anchor's m images
    weight: float  # the loss weight of every added image (Δ with Balance, else 1.0)
    openness: float  # Δ of the round (Eq. 9), reported even when Balance is off
    overfit_rate: np.ndarray  # [A] β
    uncertainty: np.ndarray  # [A] Ω
    stop: bool  # Eq. 10 says the pool is exhausted


def select(
    strategy: str | Strategy,
    sim_anchor: np.ndarray,
    verdicts: np.ndarray,
    *,
    k: int,
    lam: float,
    in_pool: np.ndarray | None = None,
    person: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    embeddings: np.ndarray | None = None,
    images_per_anchor: int = 1,
) -> Selection:
    """One query step of a strategy (Table 1's five rows, and any query × Balance).

    ``verdicts`` are the final verdicts ``[A, m]`` (oracle, overridden by the person where given).
    ``person`` is ``[A, m]`` with -1 where the person gave no verdict; the Human strategies take the
    images the person accepted (verdict 0). ``in_pool`` masks anchors not yet selected.
    ``embeddings`` ``[A, m, d]`` (the oracle's image embeddings) are needed by ``+diversity``, which may
    add up to ``images_per_anchor`` images of a picked anchor (:func:`diverse_picks`).
    """
    strategy = strategy if isinstance(strategy, Strategy) else Strategy.parse(strategy)
    verdicts = np.asarray(verdicts, dtype=np.int64)  # [A, m]
    sim_anchor = np.asarray(sim_anchor, dtype=np.float64)  # [A, m]
    n_anchors = verdicts.shape[0]
    in_pool = np.ones(n_anchors, dtype=bool) if in_pool is None else np.asarray(in_pool, dtype=bool)
    check_lambda(lam)

    rate = overfit_rate(verdicts)
    uncertainty = direction_uncertainty(rate)
    # Openness and the stopping rule look at the directions still open to query.
    pool_uncertainty = uncertainty[in_pool]
    delta = openness(pool_uncertainty, lam)
    stop = should_stop(pool_uncertainty, k)
    weight = delta if strategy.balance else 1.0

    check_k(k, n_anchors)
    # Late rounds may have fewer than k anchors left in the pool: take what is left (none when empty).
    k_round = min(k, int(in_pool.sum()))
    if strategy.query == "random":
        if rng is None:
            raise ValueError("the random strategy needs a seeded np.random.Generator")
        pool = np.flatnonzero(in_pool)
        anchors = np.sort(rng.choice(pool, size=k_round, replace=False))
        slots = rng.integers(0, verdicts.shape[1], size=k_round)
    elif strategy.diversity:
        if embeddings is None:
            raise ValueError("the +diversity strategies need the oracle's image embeddings of the round")
        if k_round:
            anchors, slots = diverse_picks(
                uncertainty, sim_anchor, verdicts, embeddings, k_round, in_pool, images_per_anchor
            )
        else:
            anchors, slots = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    elif strategy.query == "uncertainty":
        anchors = top_k_anchors(uncertainty, k_round, in_pool) if k_round else np.zeros(0, dtype=np.int64)
        slots = best_image(sim_anchor, anchors, verdicts)
    else:  # human: every image the person accepted, from anchors in the pool
        if person is None:
            raise ValueError("the human strategies need the person's verdicts: review the round first")
        person = np.asarray(person, dtype=np.int64)
        accepted = (person == 0) & in_pool[:, None]
        anchors, slots = np.nonzero(accepted)
    return Selection(
        anchors=np.asarray(anchors, dtype=np.int64),
        slots=np.asarray(slots, dtype=np.int64),
        weight=float(weight),
        openness=delta,
        overfit_rate=rate,
        uncertainty=uncertainty,
        stop=stop,
    )
