"""Eq. 8's CLIP rule as a judge: overfit when sim(image, anchor text) <= max sim(image, non-SoI text).

Any open_clip model works, SigLIP included (``siglip:ViT-B-16-SigLIP/webli``): the rule compares two
cosines, so SigLIP's sigmoid bias cancels. Confidence is the model's own two-way zero-shot probability
turned into a margin: ``p = sigmoid(s · (sim_non_soi - sim_anchor))`` with ``s`` the model's logit
scale, confidence ``|2p - 1| = tanh(s · |sim_anchor - sim_non_soi| / 2)``. The verdict is exactly
``algorithm.overfit_verdicts`` on the same similarities (today's verdicts, bit for bit).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from gal import algorithm
from gal.judges.base import Judgement, JudgeRequest
from gal.oracle import TINY_CLIP_CONFIG, ClipOracle

# A SigLIP-shaped tiny open_clip model: a learned logit bias (sigmoid loss), no causal text mask, last-token
# pooling — what separates SigLIP configs from CLIP ones in open_clip — kept on the bundled CLIP tokenizer
# so it builds offline (a model name holding "siglip" makes open_clip fetch the SigLIP tokenizer).
TINY_SIGLIP_CONFIG = {
    "embed_dim": 32,
    "init_logit_bias": -10,
    "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"]},
    "text_cfg": {**TINY_CLIP_CONFIG["text_cfg"], "no_causal_mask": True, "pool_type": "last"},
}


def load_scorer(spec: str, device: torch.device) -> ClipOracle:
    """The CLIP-space model of a scorer spec (see ``registry.scorer_spec``)."""
    if spec == "siglip:tiny":
        return ClipOracle(*_build_tiny_siglip(), device=device)
    if spec.startswith("siglip:"):
        spec = spec.split(":", 1)[1]
    return ClipOracle.from_spec(spec, device)


def _build_tiny_siglip(seed: int = 0):
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "gal-tiny-sigmoid.json").write_text(json.dumps(TINY_SIGLIP_CONFIG))
        open_clip.add_model_config(tmp)
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms("gal-tiny-sigmoid", pretrained=None)
    return model, preprocess, open_clip.get_tokenizer("gal-tiny-sigmoid")


def clip_scores(
    oracle, images, anchor_texts: list[str], non_soi_texts: list[str], columns: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(sim_anchor [n], sim_non_soi [n])``: each image's cosine to its anchor text and its max cosine
    over the non-SoI texts, from one ``text_similarities`` call (the judge step's computation).
    ``columns``: the anchor texts to score in that call (default: the images' own, each once)."""
    unique = list(dict.fromkeys(columns if columns is not None else anchor_texts))
    sims = oracle.text_similarities(images, unique + non_soi_texts)  # [n, |texts| + c]
    col = np.array([unique.index(t) for t in anchor_texts])
    sim_anchor = sims[np.arange(len(images)), col]
    sim_non_soi = sims[:, len(unique) :].max(axis=1)
    return sim_anchor, sim_non_soi


def logit_scale(oracle) -> float:
    """The model's learned temperature (``exp(logit_scale)``, clamped at 100 as CLIP trains it)."""
    scale = getattr(getattr(oracle, "model", None), "logit_scale", None)
    if scale is None:
        return 100.0
    return float(min(math.exp(float(scale.detach().float().reshape(-1)[0])), 100.0))


class ClipJudge:
    def __init__(self, name: str, oracle: ClipOracle, scorer: str):
        self.name = name
        self.oracle = oracle
        self.scorer = scorer  # the scorer spec this judge's model is (its scores can be reused)
        self.scale = logit_scale(oracle)

    def judge(self, request: JudgeRequest) -> list[Judgement]:
        if not request.images:
            return []
        if request.scores is not None and request.scorer == self.scorer:
            sim_anchor = np.asarray(request.scores["sim_anchor"])
            sim_non_soi = np.asarray(request.scores["sim_non_soi"])
        else:
            sim_anchor, sim_non_soi = clip_scores(
                self.oracle, request.images, request.anchor_texts, request.non_soi_texts
            )
        verdicts = algorithm.overfit_verdicts(sim_anchor, sim_non_soi)
        out = []
        for a, b, v in zip(sim_anchor, sim_non_soi, verdicts, strict=True):
            confidence = math.tanh(self.scale * abs(float(a) - float(b)) / 2.0)
            out.append(
                Judgement(
                    int(v),
                    confidence,
                    {"sim_anchor": float(a), "sim_non_soi": float(b)},
                    {self.name: (int(v), confidence)},
                )
            )
        return out
