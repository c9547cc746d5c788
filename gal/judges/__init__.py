"""Judges: who says whether a generated image is overfit (Eq. 8's question), with a confidence.

``load_judge(spec, device)`` builds one from a spec (see :mod:`gal.judges.registry`); the judge step
calls ``judge.judge(JudgeRequest(...))`` and stores each image's verdict, confidence, evidence and every
member's vote. Ω, selection and review read the stored verdicts and confidences only.
"""

from __future__ import annotations

from collections.abc import Callable

from gal.judges.base import Judge, Judgement, JudgeRequest, from_probability
from gal.judges.registry import (
    GROUP,
    available,
    canonical,
    members,
    parse,
    plugins,
    scorer_spec,
    uses_vlm,
    validate,
)

__all__ = [
    "GROUP", "Judge", "JudgeRequest", "Judgement", "available", "canonical", "from_probability",
    "load_judge", "load_scorer", "members", "parse", "plugins", "scorer_spec", "uses_vlm", "validate",
]  # fmt: skip


def load_scorer(spec: str, device=None):
    """The CLIP-space model (a ``ClipOracle``) of a scorer spec from :func:`scorer_spec`."""
    import torch

    from gal.judges.clip import load_scorer as load

    return load(spec, device or torch.device("cpu"))


def load_judge(spec: str, device=None, scorer: Callable[[str], object] | None = None) -> Judge:
    """The judge a spec names. ``scorer(clip_spec)`` returns a loaded CLIP-space model (the run's shared
    one, so a CLIP judge and the run's metrics use one model); default: load a new one."""
    import torch

    device = device or torch.device("cpu")
    scorer = scorer or (lambda s: load_scorer(s, device))
    kind, arg = parse(spec)
    name = canonical(spec)
    if kind in ("clip", "siglip"):
        from gal.judges.clip import ClipJudge

        key = scorer_spec(spec)
        return ClipJudge(name, scorer(key), key)
    if kind == "dino":
        from gal.judges import dino

        return dino.DinoJudge(name, *dino.load(arg, device), device)
    if kind == "vlm":
        from gal.judges import vlm

        return vlm.VlmJudge(name, *vlm.load(arg, device), device)
    if kind == "ensemble":
        from gal.judges.ensemble import EnsembleJudge

        return EnsembleJudge(name, [load_judge(m, device, scorer) for m in arg.split("+")])
    factory = plugins()[kind].load()
    judge = factory(arg, device)
    if not callable(getattr(judge, "judge", None)):
        raise ValueError(
            f"plug-in judge {kind!r} returned {type(judge).__name__}, which has no judge(request)"
        )
    if not getattr(judge, "name", None):
        judge.name = name
    return judge
