"""Assemble the shipped toy-world weights from the training exports in ``artifacts/toyworld/``.

    python scripts/toyworld/assemble.py

Writes ``gal/assets/toyworld/pipeline/`` (a StableDiffusionPipeline folder; UNet and VAE fp16) and
``gal/assets/toyworld/clip/`` (open_clip_config.json + fp16 open_clip_model.safetensors), then reloads
both offline as a check. UNet, VAE and CLIP weights are stored fp16 to fit the repository budget (<= 40 MB
in all); the text encoder stays fp32 so a plain ``from_pretrained(path)`` loads everything as fp32.
"""

from __future__ import annotations

import os
import shutil

import open_clip
import torch
from _common import ASSETS, WORK
from train_unet import SCHEDULER_CONFIG

from gal.toyworld.tokenizer import build_clip_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402


def folder_mb(path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    torch.set_num_threads(1)
    sched_cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")}
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(WORK / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(WORK / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(WORK / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(WORK / "unet"),
        scheduler=DPMSolverMultistepScheduler(**sched_cfg),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = ASSETS / "pipeline"
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    # UNet and VAE in fp16: diffusers loads them as fp32 by default. The text encoder stays fp32:
    # transformers 5 keeps a checkpoint's dtype, and a fp16 text encoder beside a fp32 UNet fails.
    pipe.unet.to(torch.float16).save_pretrained(out / "unet")
    pipe.vae.to(torch.float16).save_pretrained(out / "vae")
    # transformers 5 saves a tokenizer as tokenizer.json only (3.5 MB); ship vocab.json + merges.txt
    # instead (1.5 MB), the classic CLIP tokenizer files, which from_pretrained reads as well.
    shutil.rmtree(out / "tokenizer")
    build_clip_tokenizer(out / "tokenizer", model_max_length=pipe.tokenizer.model_max_length)
    clip_src, clip_out = WORK / "clip", ASSETS / "clip"
    if clip_out.exists():
        shutil.rmtree(clip_out)
    shutil.copytree(clip_src, clip_out)

    # reload offline, as a user would
    pipe = StableDiffusionPipeline.from_pretrained(out)
    ref = open_clip.tokenize(["a red striped star on grass"], context_length=pipe.tokenizer.model_max_length)[
        0
    ]
    ids = pipe.tokenizer("a red striped star on grass").input_ids
    assert len(pipe.tokenizer) == 49408 and ids == ref[: len(ids)].tolist(), (len(pipe.tokenizer), ids)
    dtypes = {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype}
    assert dtypes == {torch.float32}, dtypes
    img = pipe(
        "a red star on grass", num_inference_steps=4, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert img.size == (32, 32), img.size
    model = open_clip.create_model(f"local-dir:{clip_out}")
    n_clip = sum(p.numel() for p in model.parameters())
    print(
        f"pipeline {folder_mb(out):.1f} MB, clip {folder_mb(clip_out):.1f} MB ({n_clip / 1e6:.2f} M params), "
        f"total {folder_mb(ASSETS):.1f} MB"
    )


if __name__ == "__main__":
    main()
