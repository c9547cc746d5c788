"""Z-Image and FLUX.2 (klein 4B / 9B, dev) at full size: parameters per component and estimated LoRA
training memory per option, from the families' own ``meta_parts`` (meta device: nothing downloaded, no
memory used) and ``gal.families.memory``. Estimates (±30 %), not measurements. Not a test.

    .venv/bin/python bench/families_memory_new.py [--resolution 1024] [--rank 16]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = (  # label, family, variant, the peers' published LoRA figures (issue 22 / docs/notes)
    ("Z-Image", "zimage", "", "32-40 bf16 / 16-24 int8 / 10-12 nf4"),
    ("FLUX.2 klein 4B", "flux2", "klein-4b", "~12 bf16 / 8 int8"),
    ("FLUX.2 klein 9B", "flux2", "klein-9b", "~22 bf16 / 14 int8"),
    ("FLUX.2 dev", "flux2", "dev", "~40 all-int8"),
)


def table(resolution: int, rank: int) -> list[str]:
    from gal.families import get
    from gal.families.memory import lora_params_of, training_bytes

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    lines = [
        f"LoRA rank {rank}, {resolution} px, batch 1, GiB (estimate)",
        "",
        "| model | transformer | text encoder | bf16 + ckpt | + TE offloaded | + int8 base | "
        "bf16, no ckpt, TE on | peers (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, name, variant, peers in ROWS:
        family = get(name)
        parts = family.meta_parts(variant) if variant else family.meta_parts()
        denoiser = parts["transformer"]
        lora = lora_params_of(denoiser, family.defaults.target_modules, rank)
        scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
        full, ckpt = family.activations(denoiser, resolution, 1, scale)

        sizes = dict(
            denoiser_params=count(denoiser),
            text_encoder_params=count(parts["text_encoder"]),
            vae_params=count(parts["vae"]),
            lora_params=lora,
            activations_16bit=full,
            activations_ckpt_16bit=ckpt,
        )

        def gib(sizes=sizes, **options) -> str:
            return f"{training_bytes(**sizes, **options)['total'] / 2**30:.1f}"

        saving = dict(gradient_checkpointing=True, offload_text_encoders=True)
        lines.append(
            f"| {label} | {count(denoiser) / 1e9:.2f} B | {count(parts['text_encoder']) / 1e9:.2f} B | "
            f"{gib(gradient_checkpointing=True)} | {gib(**saving)} | {gib(**saving, quantize_base='int8')} | "
            f"{gib()} | {peers} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    print("\n".join(table(args.resolution, args.rank)))


if __name__ == "__main__":
    main()
