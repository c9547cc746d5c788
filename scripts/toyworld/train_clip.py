"""Train the toy world's open_clip model contrastively (convolutional image tower, 32 px).

    python scripts/toyworld/train_clip.py --minutes 20     # resumes from artifacts/toyworld/clip_ckpt.pt

Captions drop attributes at random ("a star", "a red shape on grass"), so many captions in a batch
describe several images. The loss is a multi-positive InfoNCE: caption j is a positive of image i when
every attribute caption j names matches image i. Exports ``artifacts/toyworld/clip/`` (fp16
safetensors + ``open_clip_config.json``), loadable with ``open_clip.create_model("local-dir:...")``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import numpy as np
import open_clip
import torch
from _common import WORK, load_checkpoint, log, save_checkpoint, set_threads, spec_arrays, spec_at, train_data
from safetensors.torch import save_file

from gal.toyworld.clip import images_to_tensor, zero_shot
from gal.toyworld.world import caption_and_kept, heldout_set

MODEL_CFG = {
    "embed_dim": 128,
    # ModifiedResNet (open_clip's RN tower): a ViT of this size learned shape at chance in the prototype.
    "vision_cfg": {"image_size": 32, "layers": [2, 2, 2, 2], "width": 16, "head_width": 64},
    # vocab_size must stay 49,408: open_clip's bundled tokenizer.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
PREPROCESS_CFG = {
    "size": 32,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
ATTRS = ("shape", "colour", "pattern", "background")


def build_model():
    d = tempfile.mkdtemp()
    with open(f"{d}/toyclip.json", "w") as f:
        json.dump(MODEL_CFG, f)
    open_clip.add_model_config(d)
    model = open_clip.create_model("toyclip", pretrained=None, force_preprocess_cfg=PREPROCESS_CFG)
    return model, open_clip.get_tokenizer("toyclip")


def evaluate(model, tokenizer, held) -> dict[str, float]:
    model.eval()
    labels = spec_arrays(held.specs)
    out = {}
    for attr in ATTRS:
        _, pred = zero_shot(model, tokenizer, held.images, attr)
        out[attr] = round(float((pred == labels[attr]).mean()), 4)
    model.train()
    return out


def export(model, folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, folder / "open_clip_model.safetensors")
    with open(folder / "open_clip_config.json", "w") as f:
        json.dump({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, f, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=3000, help="length of the LR schedule")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ckpt-every", type=float, default=240.0)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    set_threads()
    torch.manual_seed(args.seed)
    data = train_data()
    held = heldout_set(123, 1000)
    model, tokenizer = build_model()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    ckpt_path, log_path = WORK / "clip_ckpt.pt", WORK / "clip_log.jsonl"
    step = load_checkpoint(ckpt_path, model=model, opt=opt)
    rng = np.random.default_rng([args.seed, step])
    attr_arrays = np.stack([data[a] for a in ATTRS], 1)  # [N, 4]
    start = last_ckpt = time.time()
    model.train()
    while step < args.steps and time.time() - start < args.minutes * 60:
        lr = (
            args.lr
            * min(1.0, (step + 1) / 100)
            * 0.5
            * (1 + math.cos(math.pi * min(step, args.steps) / args.steps))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(len(data["images"]), size=args.batch)
        images = data["images"][idx]
        flip = rng.random(args.batch) < 0.5
        images[flip] = images[flip, :, ::-1]
        texts, kept = zip(*[caption_and_kept(spec_at(data, int(i)), rng) for i in idx])
        kept = torch.tensor([[k[a] for a in ATTRS] for k in kept])  # [B, 4] which attributes text j names
        a = torch.from_numpy(attr_arrays[idx])  # [B, 4]
        same = a[:, None, :] == a[None, :, :]  # [B_img, B_txt, 4]
        positive = (same | ~kept[None, :, :]).all(-1)  # [B_img, B_txt]
        f = model.encode_image(images_to_tensor(images, model), normalize=True)
        t = model.encode_text(tokenizer(list(texts)), normalize=True)
        logits = model.logit_scale.exp().clamp(max=100) * f @ t.T
        neg_inf = torch.finfo(logits.dtype).min
        i2t = -(
            torch.logsumexp(logits.masked_fill(~positive, neg_inf), 1) - torch.logsumexp(logits, 1)
        ).mean()
        t2i = -(
            torch.logsumexp(logits.masked_fill(~positive, neg_inf), 0) - torch.logsumexp(logits, 0)
        ).mean()
        loss = (i2t + t2i) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        if step % 50 == 0:
            log(
                log_path,
                step=step,
                loss=round(float(loss), 4),
                lr=round(lr, 6),
                scale=round(float(model.logit_scale.exp()), 1),
            )
        if step % args.eval_every == 0:
            log(log_path, step=step, zero_shot=evaluate(model, tokenizer, held))
        if time.time() - last_ckpt > args.ckpt_every:
            save_checkpoint(ckpt_path, step, model=model, opt=opt)
            last_ckpt = time.time()
    save_checkpoint(ckpt_path, step, model=model, opt=opt)
    export(model, WORK / "clip")
    log(log_path, step=step, final_zero_shot=evaluate(model, tokenizer, held))


if __name__ == "__main__":
    main()
