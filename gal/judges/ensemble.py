"""Several judges as one: a confidence-weighted vote that marks where they disagree.

Each member ``j`` votes ``s_j = +1`` (overfit) or ``-1`` (aligned) with its confidence ``c_j``; the score is
the mean ``S = Σ_j c_j s_j / J``. Verdict overfit when ``S >= 0`` (a tie is overfit, as in Eq. 8),
confidence ``|S|``. The image is *disagreed on* when the members' verdicts differ — the review shows those
first. Every member's vote is kept (``votes``), so the agreement log scores each judge separately.
"""

from __future__ import annotations

from gal.judges.base import Judgement, JudgeRequest


def combine(votes: dict[str, tuple[int, float]]) -> tuple[int, float, float]:
    """``(verdict, confidence, score)`` of members' ``(verdict, confidence)`` votes."""
    if not votes:
        raise ValueError("an ensemble needs at least one vote")
    score = sum(c * (1 if v else -1) for v, c in votes.values()) / len(votes)
    return int(score >= 0), abs(score), score


class EnsembleJudge:
    def __init__(self, name: str, members: list):
        self.name, self.members = name, members

    def judge(self, request: JudgeRequest) -> list[Judgement]:
        per_member = [m.judge(request) for m in self.members]
        out = []
        for judgements in zip(*per_member, strict=True):
            votes = {m.name: (j.verdict, j.confidence) for m, j in zip(self.members, judgements, strict=True)}
            verdict, confidence, score = combine(votes)
            evidence = {
                "score": score,
                **{m.name: j.evidence for m, j in zip(self.members, judgements, strict=True)},
            }
            out.append(Judgement(verdict, confidence, evidence, votes))
        return out
