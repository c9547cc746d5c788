"""Train the toy world's UNet2DConditionModel jointly with a small CLIPTextModel on cached VAE latents.

    python scripts/toyworld/train_unet.py --minutes 50      # resumes from artifacts/toyworld/unet_ckpt.pt

Needs ``artifacts/toyworld/vae/`` (train_vae.py). Latents of the rendered training set are encoded once
(``latents_*.npy``, centred and scaled by the VAE's ``scaling_factor``). Captions drop attributes at
random, 10 % are empty (classifier-free guidance), min-SNR-5 loss weighting, EMA of both models.
Exports the EMA weights to ``artifacts/toyworld/unet/``, ``text_encoder/`` and ``tokenizer/``.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from _common import WORK, load_checkpoint, log, random_captions, save_checkpoint, set_threads, train_data
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from gal.toyworld.tokenizer import build_clip_tokenizer

CONTEXT = 20  # tokens: "a rainbow-striped star on an empty background" is 12
UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    # no attention at 16x16: it costs 4x the step time on CPU
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(48, 96, 96),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=16,
)
TEXT_CONFIG = dict(
    vocab_size=49408,  # open_clip's BPE vocabulary, so any prompt tokenizes
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=CONTEXT,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)


@torch.no_grad()
def cached_latents(vae: AutoencoderKL, images: np.ndarray, path) -> np.ndarray:
    if path.exists():
        return np.load(path)
    out = []
    for i in range(0, len(images), 500):
        x = torch.from_numpy(images[i : i + 500]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out.append((vae.encode(x).latent_dist.mode() * vae.config.scaling_factor).half().numpy())
        if i % 10000 == 0:
            print(f"encoded {i}/{len(images)}", flush=True)
    lat = np.concatenate(out)
    np.save(path, lat)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=50.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--cfg-drop", type=float, default=0.1, help="share of empty captions")
    ap.add_argument("--snr-gamma", type=float, default=5.0)
    ap.add_argument("--ckpt-every", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    set_threads()
    torch.manual_seed(args.seed)
    data = train_data()
    vae = AutoencoderKL.from_pretrained(WORK / "vae").eval()
    latents = cached_latents(
        vae, data["images"], WORK / f"latents_{len(data['images'])}.npy"
    )  # [N, 4, 16, 16]
    del vae
    tokenizer = build_clip_tokenizer(WORK / "tokenizer", model_max_length=CONTEXT)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = DDPMScheduler(**SCHEDULER_CONFIG)
    alphas = sched.alphas_cumprod
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    ckpt_path, log_path = WORK / "unet_ckpt.pt", WORK / "unet_log.jsonl"
    parts = dict(unet=unet, text=text, ema_unet=ema_unet, ema_text=ema_text, opt=opt)
    step = load_checkpoint(ckpt_path, **parts)

    rng = np.random.default_rng([args.seed, step])
    gen = torch.Generator().manual_seed(args.seed * 100003 + step)
    start = last_ckpt = last_log = time.time()
    losses = []
    unet.train()
    text.train()
    while not args.export_only and time.time() - start < args.minutes * 60:
        lr = args.lr * min(1.0, (step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(len(latents), size=args.batch)
        x0 = torch.from_numpy(latents[idx]).float()
        captions = random_captions(data, idx, rng)
        captions = ["" if rng.random() < args.cfg_drop else c for c in captions]
        ids = tokenizer(
            captions, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt"
        ).input_ids
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = sched.add_noise(x0, noise, t)
        cond = text(ids)[0]
        pred = unet(xt, t, cond).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=args.snr_gamma) / snr  # min-SNR weighting for epsilon prediction
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - decay)
        losses.append(float(loss))
        if step % 50 == 0:
            log(
                log_path,
                step=step,
                loss=round(float(np.mean(losses)), 5),
                lr=lr,
                s_per_step=round((time.time() - last_log) / len(losses), 3),
            )
            losses, last_log = [], time.time()
        if time.time() - last_ckpt > args.ckpt_every:
            save_checkpoint(ckpt_path, step, **parts)
            last_ckpt = time.time()
    if not args.export_only:
        save_checkpoint(ckpt_path, step, **parts)
    ema_unet.save_pretrained(WORK / "unet")
    ema_text.save_pretrained(WORK / "text_encoder")
    log(log_path, step=step, exported=str(WORK))


if __name__ == "__main__":
    main()
