"""A pipeline larger than the card, placed in parts (``gal/placement.py``), on an emulated 24 GB card.

    python bench/gpu/parts.py --card-gb 24 --out $OUT/gpu_parts.md     # on a GPU (bench/gpu/run.sh)
    python bench/gpu/parts.py --cpu-smoke                               # tiny models, CPU: the suite

The full-size FLUX.1-dev (bench/gpu/fullsize.py: 11.9 B transformer, T5-XXL, CLIP-L; random weights, built
in bf16 on the CPU: 33 GB) is placed with ``placement.place(..., "parts")`` on a GPU whose allocator is capped
at ``--card-gb`` (``torch.cuda.set_per_process_memory_fraction``: what a 24 GB card lets a process allocate).
Then, with the family's 24 GB preset and ``train.blocks_to_swap`` left empty (training sizes it to the
cap), ``train_lora`` runs ``--steps`` LoRA steps at 1024 px and ``generate`` draws one image at 8 steps.
One row: weights, placement, blocks streamed, peak allocated GB (must stay under the cap), s/step, s/image, or
what failed (``OOM`` = a real CUDA out-of-memory under the cap; ``refused`` = the estimate check).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.gpu import fullsize  # noqa: E402
from bench.gpu.common import GB, cuda_refusal, header, write  # noqa: E402
from gal import families, placement  # noqa: E402
from gal.config import GenerateConfig, TrainConfig  # noqa: E402


def run(family, smoke: bool, card_gb: float, steps: int) -> dict:
    from gal.generation import generate
    from gal.training import TrainExample, train_lora

    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    row = {"family": family.label}
    pipe = fullsize.build(family, torch.device("cpu"), dtype, smoke=smoke)
    family.attach(pipe)
    row["weights GB"] = sum(placement.module_bytes(m) for m in placement.pipeline_modules(pipe).values()) / GB
    if not smoke:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, card_gb * GB / total), device)
        torch.cuda.reset_peak_memory_stats(device)
    row["placement"] = placement.place(pipe, family, device, None if not smoke else "parts")
    res = 32 if smoke else fullsize.native_resolution(family)
    image = Image.new("RGB", (res, res), (120, 80, 40))
    examples = [TrainExample(image, "a <sks> dog", 1.0), TrainExample(image, "a <sks> dog", 1.0)]
    try:
        started = time.perf_counter()
        train_lora(pipe, examples, TrainConfig(steps=steps, rank=16), resolution=res, seed=0)
        row["s/step"] = (time.perf_counter() - started) / steps  # caching and placement included
        started = time.perf_counter()
        generate(pipe, ["a <sks> dog"], [0], GenerateConfig(steps=8), resolution=res)
        row["s/image"] = time.perf_counter() - started
        row["status"] = "ok"
    except torch.OutOfMemoryError as err:
        row["status"] = f"OOM: {str(err).splitlines()[0][:120]}"
    except ValueError as err:
        row["status"] = f"refused: {err}"
    placed = getattr(pipe, "_gal_placed", None)
    row["blocks streamed"] = placed[0] if placed else 0
    if not smoke:
        row["peak alloc GB"] = torch.cuda.max_memory_allocated(device) / GB
    return row


def table(rows: list[dict], head: list[str], card_gb: float) -> str:
    cols = [
        "family",
        "weights GB",
        "placement",
        "blocks streamed",
        "peak alloc GB",
        "s/step",
        "s/image",
        "status",
    ]
    out = head + [f"card emulated: allocator capped at {card_gb:g} GB", ""]
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, "—")) for c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--cpu-smoke", action="store_true", help="tiny model on the CPU: checks the code path only"
    )
    p.add_argument("--card-gb", type=float, default=24.0, help="the card to emulate (allocator cap, GB)")
    p.add_argument("--steps", type=int, default=4, help="LoRA steps (default 4)")
    p.add_argument("--families", default="flux", help="comma-separated registry names (default: flux)")
    p.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = p.parse_args(argv)
    if not args.cpu_smoke:
        why = cuda_refusal()
        if why:
            print(f"parts: refusing to run: {why}", file=sys.stderr)
            return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    what = (
        "CPU SMOKE: tiny random model on the CPU, placed in parts — the code path, NOT a measurement"
        if args.cpu_smoke
        else "full-size random-weight models built in bf16 on the CPU, placed in parts"
    )
    rows = []
    for name in args.families.split(","):
        family = families.get(name.strip())
        if not args.cpu_smoke and not fullsize.has_full_size(family):
            rows.append({"family": family.label, "status": "no full-size builder in bench/gpu/fullsize.py"})
            continue
        rows.append(run(family, args.cpu_smoke, args.card_gb, args.steps if not args.cpu_smoke else 2))
        print(rows[-1], flush=True)
    text = table(rows, header(device, what), args.card_gb)
    print(text)
    write(args.out, text)
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
