"""Per-round evaluation metrics (paper Sec. 4): TXT-ALN, IMG-ALN and OVF, from oracle similarities."""

from __future__ import annotations

import numpy as np

from gal.algorithm import overfit_verdicts

CLIP_SCORE_WEIGHT = 2.5  # official code: TXT-ALN = 2.5 × max(cos, 0) (CLIPScore's w)


def text_alignment(sim_prompt: np.ndarray) -> float:
    """TXT-ALN: mean CLIPScore of each image to its own prompt. ``[n] -> float``."""
    return float(np.mean(CLIP_SCORE_WEIGHT * np.maximum(np.asarray(sim_prompt, dtype=np.float64), 0.0)))


def image_alignment(sim_references: np.ndarray) -> float:
    """IMG-ALN: mean CLIP image-image cosine of each image to the real references. ``[n, r] -> float``."""
    return float(np.mean(np.asarray(sim_references, dtype=np.float64)))


def overfit_share(sim_prompt: np.ndarray, sim_non_soi: np.ndarray) -> float:
    """OVF: the share of images overfit by Eq. 8. ``[n], [n, c] -> float``."""
    verdicts = overfit_verdicts(np.asarray(sim_prompt)[None, :], np.asarray(sim_non_soi)[None, ...])
    return float(verdicts.mean())


def round_metrics(
    sim_prompt: np.ndarray, sim_non_soi: np.ndarray, sim_references: np.ndarray
) -> dict[str, float]:
    return {
        "txt_aln": text_alignment(sim_prompt),
        "img_aln": image_alignment(sim_references),
        "ovf": overfit_share(sim_prompt, sim_non_soi),
    }
