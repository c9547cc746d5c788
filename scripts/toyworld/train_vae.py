"""Train the toy world's AutoencoderKL: 32 px RGB -> 16x16x4 latents (blocks (32, 64)).

    python scripts/toyworld/train_vae.py --minutes 10     # resumes from artifacts/toyworld/vae_ckpt.pt

At the end the latents are *centred* (the per-channel mean is folded into quant_conv / post_quant_conv
biases, so reconstructions do not change) and *scaled*: ``scaling_factor`` = 1 / std of the centred
latents, stored in the VAE config, so the UNet sees unit-variance latents. The exported folder is
``artifacts/toyworld/vae/`` (``assemble.py`` copies it into the pipeline).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import WORK, load_checkpoint, log, save_checkpoint, set_threads, train_data
from diffusers import AutoencoderKL

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 64),  # two blocks: one 2x downsample, 32 px -> 16x16 latents
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=32,
)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def psnr(vae: AutoencoderKL, images: np.ndarray) -> float:
    x = to_tensor(images)
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = ((x - y) / 2).pow(2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1 / mse)).mean())


@torch.no_grad()
def centre_and_scale(vae: AutoencoderKL, images: np.ndarray) -> dict:
    """Fold the latent mean into the conv biases and return the stats (scaling_factor = 1/std)."""
    z = torch.cat(
        [vae.encode(to_tensor(images[i : i + 256])).latent_dist.mode() for i in range(0, len(images), 256)]
    )
    mean = z.mean(dim=(0, 2, 3))  # [4]
    vae.quant_conv.bias[:4] -= mean  # the encoder's mean output is now centred
    w = vae.post_quant_conv.weight[:, :, 0, 0]  # [4, 4]: z' = W (z + mean) + b
    vae.post_quant_conv.bias += w @ mean
    z = torch.cat(
        [vae.encode(to_tensor(images[i : i + 256])).latent_dist.mode() for i in range(0, len(images), 256)]
    )
    std = float(z.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return {
        "latent_mean_removed": mean.tolist(),
        "latent_std": std,
        "scaling_factor": 1.0 / std,
        "centred_mean_after": z.mean(dim=(0, 2, 3)).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of this call")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl", type=float, default=1e-6, help="weight of the per-image KL sum")
    ap.add_argument("--ckpt-every", type=float, default=240.0, help="seconds between checkpoints")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    set_threads()
    torch.manual_seed(args.seed)
    data = train_data()
    images, held = data["images"][:-1000], data["images"][-1000:]
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    ckpt_path, log_path = WORK / "vae_ckpt.pt", WORK / "vae_log.jsonl"
    step = load_checkpoint(ckpt_path, model=vae, opt=opt)
    rng = np.random.default_rng([args.seed, step])
    start = last_ckpt = time.time()
    vae.train()
    while not args.export_only and time.time() - start < args.minutes * 60:
        x = to_tensor(images[rng.integers(len(images), size=args.batch)])
        if rng.random() < 0.5:
            x = x.flip(3)  # the world is mirror-symmetric enough
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample()).sample
        rec = (y - x).abs().mean() + (y - x).pow(2).mean()
        kl = post.kl().mean()
        loss = rec + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            log(log_path, step=step, rec=round(float(rec), 5), kl=round(float(kl), 1))
        if time.time() - last_ckpt > args.ckpt_every:
            save_checkpoint(ckpt_path, step, model=vae, opt=opt)
            last_ckpt = time.time()
    if not args.export_only:
        save_checkpoint(ckpt_path, step, model=vae, opt=opt)
    vae.eval()
    stats = centre_and_scale(vae, images[:4000])
    p = psnr(vae, held[:500])
    vae.save_pretrained(WORK / "vae")
    log(log_path, step=step, heldout_psnr_db=round(p, 2), **stats)


if __name__ == "__main__":
    main()
