"""LoRA training memory and speed per family and per memory option, measured, beside the estimate. One table.

    python bench/gpu/memory.py --budget-s 200 --out $OUT/gpu_memory.md     # on a GPU (bench/gpu/run.sh)
    python bench/gpu/memory.py --cpu-smoke                                  # tiny models, CPU: the suite

Every family in ``gal.families.FAMILIES`` (new ones appear without edits) is built full size ONCE, directly
in bf16 (``bench/gpu/fullsize.py``; a family without a full-size config gets a row saying so). Then, on that
one model, each memory option in turn (cumulative, as the advice turns them on):

  1. bf16 + gradient checkpointing   2. + text encoders offloaded after caching
  3. + block swap (where this code and the family have it)   4. + int8 base (torchao; last: in place)

For each: one LoRA step at the family's native resolution (batch 1, rank 16) through ``gal.training
.train_lora``: a warm-up step, then ≥ 5 timed steps (median s/step, every step drained with synchronize by
the loss read-out); peak allocated / reserved GB over the timed steps (the counter is reset after the warm-up
step, so text encoders moved off after caching show their saving) and over the whole call (caching
included). Generation images/s at the family's default steps is measured once per family (bf16 base).
A cell is one of: a measurement, ``refused`` (the estimate check said it will not fit), ``missing <package>``
or ``OOM`` (a real CUDA out-of-memory) — three different things.

Beside each measured cell: the estimate (``gal.families.memory``) and measured / estimate. The activation
term is then calibrated: scale = (measured step peak − the estimate's non-activation parts) / the estimate's
activation term, median over cells; ``gal.families.memory.ACTIVATION_SCALE`` takes that constant.
Rows are ordered most valuable first (FLUX.1 and SDXL, the "does it fit 24 GB" families, then the rest); the
bench stops starting new cells when ``--budget-s`` is spent, and on SIGINT/SIGTERM writes what it has.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.gpu import fullsize  # noqa: E402
from bench.gpu.common import GB, Budget, Memory, cuda_refusal, header, median, sync, timed, write  # noqa: E402
from gal import families  # noqa: E402
from gal.config import GenerateConfig, TrainConfig  # noqa: E402

PRIORITY = ("flux", "sdxl")  # the families people ask "does it fit 24 GB" about first; then registry order
RANK = 16


def options() -> list[tuple[str, dict, str | None]]:
    """(label, TrainConfig fields, package needed) per option, cumulative. Block swap only where this code has
    it (a ``blocks_to_swap`` training field)."""
    base = dict(gradient_checkpointing=True, offload_text_encoders=False)
    offload = dict(base, offload_text_encoders=True)
    out = [("bf16 + grad ckpt", base, None), ("+ TE offloaded after caching", offload, None)]
    if "blocks_to_swap" in TrainConfig.__dataclass_fields__:
        out.append(("+ block swap (half the blocks)", dict(offload, blocks_to_swap="half"), None))
    # Last: quantizing the base is in place and cannot be undone on this one model.
    out.append(("+ int8 base (torchao)", dict(offload, quantize_base="int8"), "torchao"))
    return out


def ordered_families() -> list:
    names = [n for n in PRIORITY if n in families.FAMILIES]
    names += [n for n in families.FAMILIES if n not in names]
    return [families.FAMILIES[n] for n in names]


def estimate(pipe, family, cfg: TrainConfig, resolution: int) -> dict[str, float] | None:
    """The app's estimate for this pipeline and config (the family's own, where the seam puts it there)."""
    if hasattr(family, "estimate_memory"):
        return family.estimate_memory(pipe, cfg, resolution)
    from gal.families.memory import estimate_from_pipe

    return estimate_from_pipe(pipe, family, cfg, resolution)


def calibrate(cells: list[dict]) -> float | None:
    """The activation scale that makes the estimate meet the measured step peaks: per cell
    ``(measured − non-activation parts) / activation term``; the median over cells with a real activation
    term. None without measurements."""
    scales = []
    for c in cells:
        est, measured = c.get("estimate"), c.get("step_alloc")
        if not est or measured is None or est.get("activations", 0) <= 0:
            continue
        others = est["total"] - est["activations"]
        scales.append((measured * GB - others) / est["activations"])
    return median(scales) if scales else None


def blocks_for(denoiser, how) -> int:
    if how != "half":
        return int(how)
    try:
        from gal.blockswap import swappable_blocks
    except ImportError:
        return 0
    return len(swappable_blocks(denoiser)) // 2


def measure_cell(pipe, family, label, fields, package, res, steps, device) -> dict:
    from gal.training import TrainExample, remove_adapter, train_lora

    cell: dict = {"option": label}
    if package and importlib.util.find_spec(package) is None:
        cell["status"] = f"missing {package}"
        return cell
    fields = dict(fields)
    if "blocks_to_swap" in fields:
        n = blocks_for(family.denoiser(pipe), fields["blocks_to_swap"])
        if n <= 0:
            cell["status"] = "n/a (no swappable blocks)"
            return cell
        fields["blocks_to_swap"] = n
        cell["option"] = f"{label.split(' (')[0]} ({n} blocks)"
    cfg = TrainConfig(steps=steps, rank=RANK, alpha=float(RANK), batch_size=1, resolution=res, **fields)
    try:
        cell["estimate"] = estimate(pipe, family, cfg, res)
    except Exception as err:  # noqa: BLE001 - an estimate that cannot be made is reported, not fatal
        cell["estimate_error"] = f"{type(err).__name__}: {err}"
    for encoder in family.text_encoders(pipe):  # every cell starts with the encoders where the app has them
        encoder.to(device)
    remove_adapter(pipe)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory = Memory(device)
    memory.reset()
    stamps: list[float] = []

    def progress(step, total, loss):
        if step == 1:  # after the warm-up step: the timed steps' own peak from here
            cell["call_peak_warmup"] = memory.peak()
            memory.reset()
        sync(device)
        stamps.append(time.perf_counter())  # after the peak read-out, so nvidia-smi's time is not a step's

    image = Image.new("RGB", (res, res), (120, 80, 200))
    try:
        train_lora(
            pipe, [TrainExample(image, "a <sks> star", 1.0)], cfg, resolution=res, seed=0, progress=progress
        )
    except torch.OutOfMemoryError as err:
        cell["status"] = f"OOM: {str(err).splitlines()[0][:90]}"
        return cell
    except ValueError as err:
        text = str(err)
        cell["status"] = ("missing " if "pip install" in text else "refused: ") + text[:110]
        return cell
    finally:
        remove_adapter(pipe)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    steady = memory.peak()
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]  # steps 2..n (step 1 is the warm-up)
    warm = cell.get("call_peak_warmup") or {}
    cell.update(
        status="ok",
        s_per_step=median(per_step),
        steps_timed=len(per_step),
        step_alloc=steady["allocated"],
        step_reserved=steady["reserved"],
        smi=steady["smi"],
        call_alloc=max(filter(None, [warm.get("allocated"), steady["allocated"]]), default=None),
        call_reserved=max(filter(None, [warm.get("reserved"), steady["reserved"]]), default=None),
    )
    return cell


def generation_rate(pipe, family, res, device, smoke: bool) -> dict:
    """Images/s at the family's default steps (bf16 base, batch 1): a 2-step warm-up, then 2 images timed."""
    from gal.generation import generate

    steps = 2 if smoke else int(family.defaults.steps)
    cfg = GenerateConfig(steps=steps, guidance_scale=family.defaults.guidance_scale, batch_size=1)
    family.set_scheduler(pipe, None)
    generate(pipe, ["a red star"], [0], GenerateConfig(steps=2, batch_size=1), resolution=res)
    memory = Memory(device)
    memory.reset()
    seconds, _ = timed(
        lambda: generate(pipe, ["a red star", "a blue cube"], [1, 2], cfg, resolution=res), device
    )
    return {"steps": steps, "images_per_s": 2 / seconds, "peak": memory.peak()}


def bench_family(family, device, dtype, smoke: bool, budget: Budget, steps: int, log, rows: list) -> None:
    if not smoke and not fullsize.has_full_size(family):
        rows.append({"family": family.label, "option": "–", "status": "no full-size config for this family"})
        return
    try:
        t, pipe = timed(lambda: fullsize.build(family, device, dtype, smoke=smoke), device)
    except torch.OutOfMemoryError as err:
        rows.append({"family": family.label, "option": "build", "status": f"OOM building: {str(err)[:80]}"})
        return
    res = family.native_resolution(pipe) if smoke else fullsize.native_resolution(family)
    log(f"{family.name}: built in {t:.1f} s, {res} px")
    gen = None
    for label, fields, package in options():
        if budget.over():
            rows.append(
                {"family": family.label, "res": res, "option": label, "status": "not run: budget spent"}
            )
            continue
        cell = measure_cell(pipe, family, label, fields, package, res, steps, device)
        cell.update(family=family.label, res=res, build_s=t)
        if gen is None and cell["option"] == "bf16 + grad ckpt" and not budget.over():
            try:
                gen = generation_rate(pipe, family, res, device, smoke)
                cell["gen"] = gen
            except torch.OutOfMemoryError as err:
                cell["gen_error"] = f"OOM: {str(err)[:60]}"
        rows.append(cell)
        log(f"{family.name}: {cell['option']}: {cell['status']} {cell.get('s_per_step', '')}")
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fmt(v, spec=".2f") -> str:
    return "–" if v is None else format(v, spec)


def table(rows: list[dict], head: list[str], steps: int, finished: bool) -> str:
    lines = ["# LoRA training memory and speed per family and option", "", *head,
             f"- LoRA rank {RANK}, batch 1, native resolution; s/step = median of {steps - 1} steps after a "
             "warm-up; 'step' peaks are over the timed steps (counter reset after the warm-up step), 'call' "
             "peaks include caching the prompts and latents",
             "" if finished else "- **stopped early (time budget or signal): below is what it has**",
             "",
             "| family | px | option | status | step alloc GB | step reserved GB | call alloc GB "
             "| call reserved GB | nvidia-smi GB | s/step | estimate GB | measured / estimate "
             "| gen img/s (steps) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    cells = []
    for r in rows:
        est = r.get("estimate")
        est_gb = est["total"] / GB if est else None
        ratio = r["step_alloc"] / est_gb if est_gb and r.get("step_alloc") is not None else None
        gen = r.get("gen")
        gen_s = f"{gen['images_per_s']:.3f} ({gen['steps']})" if gen else r.get("gen_error", "")
        lines.append(
            f"| {r['family']} | {r.get('res', '–')} | {r['option']} | {r['status']} "
            f"| {fmt(r.get('step_alloc'))} | {fmt(r.get('step_reserved'))} | {fmt(r.get('call_alloc'))} "
            f"| {fmt(r.get('call_reserved'))} | {fmt(r.get('smi'))} | {fmt(r.get('s_per_step'), '.3f')} "
            f"| {fmt(est_gb)} | {fmt(ratio)} | {gen_s} |"
        )
        if r.get("status") == "ok":
            cells.append(r)
    scale = calibrate(cells)
    lines += ["", f"- activation-term calibration over {len(cells)} measured cells: "
              + (f"**ACTIVATION_SCALE = {scale:.2f}** (set gal.families.memory.ACTIVATION_SCALE)"
                 if scale is not None else "none (no GPU measurement in this run)")]  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--cpu-smoke", action="store_true", help="tiny models on the CPU, labelled: not a measurement"
    )
    p.add_argument(
        "--budget-s", type=float, default=480.0, help="stop starting new cells after this (default 8 min)"
    )
    p.add_argument(
        "--steps", type=int, default=6, help="LoRA steps per cell: 1 warm-up + the timed rest (>= 6)"
    )
    p.add_argument(
        "--families", default="", help="comma-separated registry names (default: all, priority order)"
    )
    p.add_argument("--out", type=Path, help="also write the table (Markdown) here, rewritten after each cell")
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    if not smoke:
        why = cuda_refusal()
        if why:
            print(f"memory: refusing to run: {why}", file=sys.stderr)
            return 2
        if args.steps < 6:
            raise SystemExit("--steps must be >= 6 on a GPU (a warm-up + a median of >= 5)")
    steps = args.steps if not smoke else 3
    if smoke:
        torch.set_num_threads(1)
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    chosen = ordered_families()
    if args.families:
        wanted = [families.get(n.strip()) for n in args.families.split(",") if n.strip()]
        chosen = [f for f in chosen if f in wanted]
    what = ("CPU SMOKE: tiny random models on the CPU — checks the code path, NOT a measurement"
            if smoke else "full-size random-weight models, built directly in bf16")  # fmt: skip
    head = header(device, what)
    budget = Budget(args.budget_s)
    log = lambda msg: print(f"[{budget.spent():6.1f} s] {msg}", flush=True)  # noqa: E731
    rows: list[dict] = []

    def stop(signum, frame):  # the hard timeout: write what it has, then leave
        text = table(rows, head, steps, finished=False)
        print(text)
        write(args.out, text)
        sys.exit(3)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for family in chosen:
        if budget.over():
            rows.append({"family": family.label, "option": "–", "status": "not run: budget spent"})
            continue
        bench_family(family, device, dtype, smoke, budget, steps, log, rows)
        write(args.out, table(rows, head, steps, finished=False))
    text = table(rows, head, steps, finished=not budget.over())
    print(text)
    write(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
