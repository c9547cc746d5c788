"""The oracle: scores images against texts (and images). Eq. 8's verdicts are derived from it.

Any object with ``text_similarities`` and ``image_similarities`` can replace :class:`ClipOracle`
(a person-simulator in the benchmark, an aesthetic scorer, ...).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from gal.models import TOY_CLIP

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


class Oracle(Protocol):
    def text_similarities(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        """Cosine similarity of each image to each text, ``[n_images, n_texts]``."""
        ...

    def image_similarities(self, images: list[Image.Image], references: list[Image.Image]) -> np.ndarray:
        """Cosine similarity of each image to each reference image, ``[n_images, n_refs]``."""
        ...


class ClipOracle:
    """An open_clip model as the oracle (paper: CLIP ViT-B/32 cosine)."""

    def __init__(self, model, preprocess, tokenizer, device: torch.device, batch_size: int = 64):
        self.model = model.eval().to(device)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size  # kept for callers; items are encoded one at a time (below)
        self._text_cache: dict[str, np.ndarray] = {}

    @classmethod
    def from_spec(cls, spec: str, device: torch.device | None = None) -> ClipOracle:
        """``tiny``, ``toy``, ``ViT-B-32/openai`` (name/pretrained), ``ViT-B-32`` or a local folder."""
        import open_clip

        device = device or torch.device("cpu")
        if spec == "tiny":
            return cls(*_build_tiny_clip(), device=device)
        if spec == "toy":
            if not (TOY_CLIP / "open_clip_config.json").exists():
                raise ValueError(f"the toy world's CLIP is missing from {TOY_CLIP}: use --oracle tiny")
            spec = str(TOY_CLIP)
        path = Path(spec).expanduser()
        if spec.startswith((".", "/", "~")) or path.exists():
            if not (path / "open_clip_config.json").exists():
                raise ValueError(
                    f"oracle folder {spec!r} not found or has no open_clip_config.json: "
                    "save an open_clip model there "
                    "(config + weights), pass a name like ViT-B-32/openai, or use --oracle tiny"
                )
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
            tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
            return cls(model, preprocess, tokenizer, device)
        name, _, pretrained = spec.partition("/")
        if name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model {name!r}: e.g. ViT-B-32/openai, or a local folder, or 'tiny'"
            )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
        except Exception as err:  # open_clip raises RuntimeError/OSError/HF errors for missing weights
            raise ValueError(
                f"could not load oracle {spec!r} ({type(err).__name__}: {err}); "
                "without network access pass a "
                "local open_clip folder or use --oracle tiny"
            ) from err
        return cls(model, preprocess, open_clip.get_tokenizer(name), device)

    # One item per forward pass: a batched matmul's rounding depends on the batch's size and on a row's
    # place in it, so an embedding computed in a batch would depend on what else shared that batch — on
    # the process's history (a resumed run, a cache filled in another order) or on how several processes
    # split the work. One at a time, an image's or a text's embedding is a function of it alone, and a
    # resumed or multi-process run scores exactly as the uninterrupted one. The oracle's share of a round
    # is small (one forward per image, against the UNet's 50 per image).
    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        feats = []
        for im in images:
            f = self.model.encode_image(self.preprocess(im.convert("RGB"))[None].to(self.device)).float()
            feats.append(torch.nn.functional.normalize(f, dim=-1).cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 1))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        for text in dict.fromkeys(texts):
            if text not in self._text_cache:
                f = self.model.encode_text(self.tokenizer([text]).to(self.device)).float()
                self._text_cache[text] = torch.nn.functional.normalize(f, dim=-1).cpu().numpy()[0]
        return np.stack([self._text_cache[t] for t in texts])

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Unit-length image embeddings ``[n, d]`` (the +diversity strategies' space)."""
        return self.encode_images(images)

    def text_similarities(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        if not images or not texts:
            return np.zeros((len(images), len(texts)))
        return self.encode_images(images) @ self.encode_texts(texts).T

    def image_similarities(self, images: list[Image.Image], references: list[Image.Image]) -> np.ndarray:
        if not images or not references:
            return np.zeros((len(images), len(references)))
        return self.encode_images(images) @ self.encode_images(references).T


def _build_tiny_clip(seed: int = 0):
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "gal-tiny-clip.json").write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(tmp)
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms("gal-tiny-clip", pretrained=None)
    return model, preprocess, open_clip.get_tokenizer("gal-tiny-clip")
