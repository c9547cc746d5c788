"""What each judge costs: load time, seconds per image and peak memory of the tiny judges on this CPU, and
the parameter count of the full-size models they stand for. Not a test.

    .venv/bin/python bench/judges.py [--images 36] [--threads 1]

Each tiny judge runs in its own subprocess (so one's memory does not hide another's): it imports, notes
its peak RSS, loads the judge, judges ``--images`` toy-world-sized images (32 px, as the demo draws) against
two real references, and reports load seconds, seconds per image and the RSS the judge added (peak after
minus peak before loading). Full-size counts: open_clip's bundled configs and the config values below
(copied from the models' published ``config.json`` files) built with random weights on the ``meta``
device — nothing is downloaded, no memory is used. Bytes at fp16/bf16 = 2 × parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = ["tiny", "siglip:tiny", "dino:tiny", "vlm:tiny", "ensemble:tiny+dino+vlm"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_one(spec: str, n: int) -> dict:
    import numpy as np
    import open_clip  # noqa: F401  the libraries are imported before the baseline: +RSS is the judge's own
    import torch
    import transformers
    from PIL import Image

    from gal.judges import JudgeRequest, load_judge

    _ = transformers.LlavaForConditionalGeneration, transformers.Dinov2Model  # lazy modules: load them now
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n + 2)]
    before = _rss_mb()
    started = time.perf_counter()
    judge = load_judge(spec, torch.device("cpu"))
    load_s = time.perf_counter() - started
    request = JudgeRequest(
        images[2:],
        ["a star in a museum"] * n,
        ["a star on stairs"],
        references=lambda: images[:2],
        subject="a star",
    )
    judge.judge(
        JudgeRequest(images[2:4], request.anchor_texts[:2], request.non_soi_texts, request.references)
    )
    started = time.perf_counter()
    judge.judge(request)
    per_image = (time.perf_counter() - started) / n
    models = [getattr(judge, "oracle", None) and judge.oracle.model, getattr(judge, "model", None)]
    models += [getattr(m, "oracle", None) and m.oracle.model for m in getattr(judge, "members", [])]
    models += [getattr(m, "model", None) for m in getattr(judge, "members", [])]
    params = sum(sum(p.numel() for p in m.parameters()) for m in {id(m): m for m in models if m}.values())
    return {"spec": spec, "load_s": load_s, "ms_per_image": per_image * 1e3, "rss_mb": _rss_mb() - before,
            "params": params}  # fmt: skip


# -- full size, on the meta device -----------------------------------------------------------------------
# DINOv2 (facebook/dinov2-{small,base,large}: hidden, layers, heads; patch 14, image 518, mlp_ratio 4).
DINOV2 = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
# LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf): CLIP ViT-L/14-336 tower + Llama-2-7B (vocab 32064) + 2-layer MLP.
LLAVA_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768)  # fmt: skip
LLAVA_TEXT = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32064)  # fmt: skip
# SmolVLM-256M-Instruct (HuggingFaceTB): Idefics3, SigLIP-B/16 at 512 px + SmolLM2-135M-style text model.
SMOLVLM_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=512, patch_size=16)  # fmt: skip
SMOLVLM_TEXT = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49280, tie_word_embeddings=False)  # fmt: skip


def full_size() -> list[tuple[str, str, int]]:
    import open_clip
    import torch
    import transformers as tf

    def count(model) -> int:
        return sum(p.numel() for p in model.parameters())

    out = []
    for judge, name in (("clip:ViT-B-32/openai", "ViT-B-32"), ("clip:ViT-L-14/openai", "ViT-L-14")):
        with torch.device("meta"):
            out.append(
                (
                    judge,
                    f"open_clip {name}",
                    count(open_clip.create_model(name, pretrained=None, device="meta")),
                )
            )
    for judge, name in (("siglip:ViT-B-16-SigLIP/webli", "ViT-B-16-SigLIP"),):
        try:
            with torch.device("meta"):
                out.append(
                    (
                        judge,
                        f"open_clip {name}",
                        count(open_clip.create_model(name, pretrained=None, device="meta")),
                    )
                )
        except Exception as err:  # the SigLIP towers come from timm/HF configs
            out.append((judge, f"open_clip {name}: not built ({type(err).__name__})", 0))
    for size, (hidden, layers, heads) in DINOV2.items():
        config = tf.Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                 patch_size=14, image_size=518, mlp_ratio=4)  # fmt: skip
        with torch.device("meta"):
            out.append((f"dino:facebook/dinov2-{size}", "Dinov2Model", count(tf.Dinov2Model(config))))
    config = tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(**LLAVA_VISION),
                            text_config=tf.LlamaConfig(**LLAVA_TEXT), image_token_index=32000)  # fmt: skip
    with torch.device("meta"):
        out.append(("vlm:llava-hf/llava-1.5-7b-hf", "LlavaForConditionalGeneration", count(
            tf.LlavaForConditionalGeneration(config))))  # fmt: skip
    config = tf.Idefics3Config(vision_config=tf.Idefics3VisionConfig(**SMOLVLM_VISION),
                               text_config=tf.LlamaConfig(**SMOLVLM_TEXT), scale_factor=4)  # fmt: skip
    with torch.device("meta"):
        out.append(("vlm:HuggingFaceTB/SmolVLM-256M-Instruct", "Idefics3ForConditionalGeneration", count(
            tf.Idefics3ForConditionalGeneration(config))))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=36, help="images judged per judge (the demo round: 36)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full-size-only", action="store_true", help="only the meta-device parameter counts")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure_one(args.one, args.images)))
        return
    if not args.full_size_only:
        tiny_table(args)
    print("\nfull size (parameters on the meta device; fp16 bytes = 2 x params)")
    print(f"{'judge':<42}{'model':<36}{'params':>15}{'fp16 GB':>9}")
    for judge, model, params in full_size():
        print(f"{judge:<42}{model:<36}{params:>15,}{2 * params / 1e9:>9.2f}")


def tiny_table(args) -> None:
    print(f"tiny judges on this CPU ({args.threads} thread(s)), {args.images} images of 32 px")
    print(f"{'judge':<26}{'params':>10}{'load s':>9}{'ms/image':>10}{'+RSS MB':>9}")
    for spec in TINY:
        done = subprocess.run(
            [sys.executable, __file__, "--one", spec, "--images", str(args.images),
             "--threads", str(args.threads)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{spec:<26}{row['params']:>10,}{row['load_s']:>9.2f}{row['ms_per_image']:>10.2f}{row['rss_mb']:>9.0f}"
        )


if __name__ == "__main__":
    main()
