"""The toy world's open_clip model: a folder with ``open_clip_config.json`` + ``open_clip_model.safetensors``.

open_clip >= 2.31 reads such a folder natively::

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:gal/assets/toyworld/clip")
    tokenizer = open_clip.get_tokenizer("local-dir:gal/assets/toyworld/clip")

:func:`load_toy_clip` does exactly that and puts the model in eval mode. The tokenizer is open_clip's
bundled ``SimpleTokenizer`` (no download), with the model's context length.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CLIP_DIR = Path(__file__).resolve().parents[1] / "assets" / "toyworld" / "clip"


# Zero-shot prompts per attribute: the wording the CLIP was trained on with the other attributes dropped.
def zero_shot_prompts() -> dict[str, dict[str, str]]:
    """``{attribute: {value: prompt}}``,
    e.g. ``{"shape": {"star": "a star", ...}, "colour": {"red": "a red shape"}}``."""
    from gal.toyworld.world import BACKGROUNDS, COLOURS, PATTERNS, SHAPES

    return {
        "shape": {s: f"a {s}" for s in SHAPES},
        "colour": {c: f"a {c} shape" if c[0] not in "aeiou" else f"an {c} shape" for c in COLOURS},
        "pattern": {p: f"a {p} shape" for p in PATTERNS},
        "background": {b: f"a shape {ph[0]}" for b, ph in BACKGROUNDS.items()},
    }


def load_toy_clip(path: str | Path = DEFAULT_CLIP_DIR, device: str = "cpu"):
    """Load the toy CLIP: returns ``(model, preprocess, tokenizer)``, model in eval mode, fp32."""
    import open_clip

    path = Path(path)
    if not (path / "open_clip_config.json").is_file():
        raise ValueError(
            f"no open_clip_config.json in {str(path)!r}; pass the toy CLIP folder "
            f"(default {str(DEFAULT_CLIP_DIR)!r})"
        )
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", device=device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
    return model.float().eval(), preprocess, tokenizer


def images_to_tensor(images, model):
    """``[B, H, W, 3]`` uint8 (numpy) -> the normalised ``[B, 3, H, W]`` float tensor the model expects."""
    import numpy as np
    import torch

    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.25, 0.25, 0.25))).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


def zero_shot(model, tokenizer, images, attribute: str, batch_size: int = 500):
    """Zero-shot labels of ``images`` ([B, H, W, 3] uint8) for one attribute:
    ``(values, predicted index [B])``."""
    import torch

    prompts = zero_shot_prompts()[attribute]
    values = list(prompts)
    with torch.no_grad():
        t = model.encode_text(tokenizer(list(prompts.values())), normalize=True)
        preds = []
        for i in range(0, len(images), batch_size):
            f = model.encode_image(images_to_tensor(images[i : i + batch_size], model), normalize=True)
            preds.append((f @ t.T).argmax(dim=1))
    return values, torch.cat(preds).numpy()
