"""Preview images while a round trains: slot 0 of two pool anchors every ``train.preview_every`` steps, drawn
with the adapter as it is then (the Progress tab shows them)."""

from __future__ import annotations

import torch

import storage
from gal.config import GenerateConfig
from gal.families.base import of
from gal.generation import generate as draw
from gal.models import set_scheduler
from gal.round import Round
from gal.runfolder import RunFolder
from gal.seeds import image_seed

# The built-in toy model draws a preview (2 images, 20 steps) in ~1 s on 2 cores: every 100 steps is ~5 % of
# a 900-step demo round (bench/bench_previews.py, docs/bench/previews.txt). Other models cost far more per
# preview on the CPU (one SD-1.5 UNet step is ~4.5 s at 512 px there), so they draw none unless asked.
CPU_PREVIEW_MODELS = {"toy": 100}


def preview_interval(preview_every: int | None, device, model: str = "") -> int:
    """Steps between training previews: the config's, or (None) 100 on a GPU, on the CPU 100 for the toy
    demo model (cheap there) and none for any other."""
    if preview_every is None:
        if torch.device(device).type == "cuda":
            return 100
        return CPU_PREVIEW_MODELS.get(str(model or "").strip(), 0)
    return preview_every


def pool_anchors(rnd: Round) -> list[dict]:
    with rnd.db() as db:
        return [a for a in storage.list_anchors(db, rnd.run_id, rnd.index) if a["in_pool"]]


@torch.no_grad()
def draw_previews(rnd: Round, pipe, anchors: list[dict], step: int) -> list[str]:
    """Slot 0 of each anchor with the adapter as it is at ``step`` (the image generation will draw later),
    saved under the round's ``previews/``. The training draws are untouched: the previews use their own
    generators and no gradients, so a run with previews trains exactly as one without."""
    family = of(pipe)
    denoiser = family.denoiser(pipe)
    if any(te.device != denoiser.device for te in family.text_encoders(pipe)):
        return []  # text encoders offloaded to save memory while training: no previews
    if not rnd.processes.is_main:
        return []
    config = rnd.config
    cfg = GenerateConfig(
        scheduler=config.generate.scheduler, steps=min(config.generate.steps, 20),
        guidance_scale=config.generate.guidance_scale, batch_size=len(anchors),
        negative_prompt=config.generate.negative_prompt,
    )  # fmt: skip
    set_scheduler(pipe, cfg.scheduler)
    was_training = denoiser.training
    denoiser.eval()
    try:
        with torch.autocast(
            denoiser.device.type, dtype=denoiser.dtype, enabled=denoiser.device.type == "cuda"
        ):
            images = draw(pipe, [a["prompt"] for a in anchors],
                          [image_seed(config.seed, a["anchor_index"], 0) for a in anchors], cfg,
                          resolution=rnd.resolution(pipe))  # fmt: skip
    finally:
        denoiser.train(was_training)
    paths = []
    for a, image in zip(anchors, images, strict=True):
        rel = RunFolder.preview_file(rnd.index, step, a["anchor_index"])
        rnd.folder.save(image, rel)
        paths.append(str(rnd.folder.path(rel)))
    return paths
