"""What a judge is: per image, an overfit verdict, a confidence in [0, 1] and its evidence.

A judge answers Eq. 8's question — did the references' non-subject content leak into this image, rather
than the anchor being drawn? — in its own way (two captions' cosine, image fidelity, a VLM's yes/no). Ω,
selection and review read only the verdicts and confidences, so any judge can replace another.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image


@dataclass
class Judgement:
    """One image's verdict: ``1`` overfit, ``0`` aligned; ``confidence`` 0 (a coin flip) .. 1 (certain);
    ``evidence`` the scores it rests on (small, JSON-able); ``votes`` each member's (verdict, confidence)
    when several judges spoke (an ensemble), else only this judge's."""

    verdict: int
    confidence: float
    evidence: dict = field(default_factory=dict)
    votes: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def disagree(self) -> bool:
        """Its judges gave different verdicts (only an ensemble can)."""
        return len({v for v, _ in self.votes.values()}) > 1


@dataclass
class JudgeRequest:
    """What a judge may look at. ``anchor_texts[i]`` is what image ``i`` should show (the anchor without
    the SoI token), ``non_soi_texts`` what overfitting looks like (one per real reference caption),
    ``references()`` the person's real reference images (loaded on first call), ``subject`` the class
    phrase ("a star"). ``scores``: the run's CLIP similarities when already computed (``sim_anchor``,
    ``sim_non_soi`` per image, by the CLIP spec ``scorer``), so a CLIP judge of that spec need not redo
    them."""

    images: list[Image.Image]
    anchor_texts: list[str]
    non_soi_texts: list[str]
    references: Callable[[], list[Image.Image]] = list
    subject: str = ""
    scores: dict | None = None
    scorer: str | None = None


class Judge(Protocol):
    name: str  # the spec it was loaded from (what the agreement log and the evidence call it)

    def judge(self, request: JudgeRequest) -> list[Judgement]:
        """One :class:`Judgement` per image of ``request.images``, in order."""
        ...


def from_probability(p_overfit: float, tie_overfit: bool = True) -> tuple[int, float]:
    """(verdict, confidence) of a probability that the image is overfit: confidence = |2p - 1|. At
    exactly 0.5 the verdict is overfit, as Eq. 8's ``<=`` makes a tie overfit."""
    p = float(p_overfit)
    if not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"a judge returned probability {p_overfit!r}: it must lie in [0, 1]")
    verdict = int(p > 0.5 or (p == 0.5 and tie_overfit))
    return verdict, abs(2.0 * p - 1.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
