"""DINOv2 as a judge: image fidelity to the person's real references (DreamBench's DINO score).

The rule. DINO's CLS embedding sees the whole image, subject and scene. The real references share the
subject and — where GAL has work to do — the non-subject content (all on the same stairs). So the
references' mean pairwise cosine ``τ`` is "as close as two references are to each other". An image whose
closest reference is at least that close, ``max_r cos(x, ref_r) >= τ``, reproduces a reference's scene
with the subject: **overfit**. An image of the subject in the anchor's new scene shares only the subject
and falls below τ: **aligned**. With one reference there is no pair: τ = ``SINGLE_REFERENCE_THRESHOLD``.
Confidence: ``tanh(SHARPNESS · |s - τ| / 2)`` (the margin as a two-way sigmoid, as the CLIP judge does).
The text of the anchor is not read: this judge answers "does it copy the references?" only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from gal.judges.base import Judgement, JudgeRequest

SINGLE_REFERENCE_THRESHOLD = 0.8
SHARPNESS = 20.0  # 1/temperature of the margin: 0.05 cosine from τ is confidence tanh(0.5) = 0.46
TINY_DINO = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load(arg: str, device: torch.device):
    """``(model, preprocess)``: ``tiny`` (random init from a config, seed 0) or a hub id / local folder."""
    from transformers import Dinov2Config, Dinov2Model

    if arg == "tiny":
        torch.manual_seed(0)
        model = Dinov2Model(Dinov2Config(**TINY_DINO))
        return model.eval().to(device), _preprocess(TINY_DINO["image_size"])
    try:
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(arg)
        processor = AutoImageProcessor.from_pretrained(arg)
    except Exception as err:  # hub/file errors come in many types
        raise ValueError(
            f"could not load DINO judge {arg!r} ({type(err).__name__}: {err}); offline, pass a local "
            "folder with a DINOv2 model and its image processor (e.g. a saved facebook/dinov2-small), "
            "or use dino:tiny"
        ) from err
    return model.eval().to(device), lambda ims: processor(images=ims, return_tensors="pt")["pixel_values"]


def _preprocess(size: int):
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def run(images: list[Image.Image]) -> torch.Tensor:
        arrays = [
            np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
            for im in images
        ]
        return torch.stack([(torch.from_numpy(a).permute(2, 0, 1) - mean) / std for a in arrays])

    return run


class DinoJudge:
    def __init__(self, name: str, model, preprocess, device: torch.device, batch_size: int = 32):
        self.name, self.model, self.preprocess, self.device = name, model, preprocess, device
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """Unit-length CLS embeddings ``[n, d]``."""
        feats = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.preprocess(images[start : start + self.batch_size]).to(
                self.device, self.model.dtype
            )
            cls = self.model(pixel_values=pixels).pooler_output.float()
            feats.append(torch.nn.functional.normalize(cls, dim=-1).cpu().numpy())
        return np.concatenate(feats)

    def threshold(self, refs: np.ndarray) -> float:
        if len(refs) < 2:
            return SINGLE_REFERENCE_THRESHOLD
        sims = refs @ refs.T
        return float(sims[~np.eye(len(refs), dtype=bool)].mean())

    def judge(self, request: JudgeRequest) -> list[Judgement]:
        if not request.images:
            return []
        references = request.references()
        if not references:
            raise ValueError("the DINO judge compares images to the real references, and this run has none")
        refs = self.embed(references)
        tau = self.threshold(refs)
        closest = (self.embed(request.images) @ refs.T).max(axis=1)  # [n]
        out = []
        for s in closest:
            s = float(s)
            verdict = int(s >= tau)
            confidence = math.tanh(SHARPNESS * abs(s - tau) / 2.0)
            out.append(
                Judgement(
                    verdict, confidence, {"sim_ref": s, "threshold": tau}, {self.name: (verdict, confidence)}
                )
            )
        return out
