"""A whole GAL session at real scale, against the paper's recipe and a plain per-prompt loop. One table.

    python bench/gpu_session.py --quick --budget-s 240 --out $OUT/gpu_session.md  # bench/gpu/run.sh
    python bench/gpu_session.py                      # the paper's m=10, k=3, 18 anchors, 4 rounds (long)
    python bench/gpu_session.py --cpu-smoke          # tiny models on the CPU, labelled: the suite runs this

Without CUDA it refuses with the reason (exit 2) unless ``--cpu-smoke`` is given: a CPU table must never
pass for a GPU one. Nothing is downloaded: SD-1.5 (512 px) and SDXL (1024 px) are built full size from their
published configs with random weights, directly in bf16 (``bench/gpu/fullsize.py``); the oracle is
open_clip ViT-B-32 from its bundled config, random weights. Random weights draw noise, but every stage
costs what it costs with real ones.

Per family:
  (a) ours        the engine's session (``gal.engine.Studio``): DreamBooth-LoRA per round, generation batched
                  across anchors, the pipeline loaded once, the CLIP oracle, SQLite;
  (b) the paper's recipe on the same architecture: each round reloads the pipeline from disk, fine-tunes the
                  whole denoiser from the base (batch 1, lr 5e-6, fp32 master weights under autocast), and
                  draws each anchor's m images in one call — the very prompts and image count (a) drew;
  (c) per-prompt  a plain diffusers loop (one call per anchor) vs our batched ``generate`` over the same
                  images (a)'s last round drew (``--quick``: its first 12): warm-up, then repeats alternating
                  the order, median.
Every timed stage is bracketed by ``torch.cuda.synchronize()``; peak allocated and reserved memory per part
(and nvidia-smi's view at its end). Targets (issue 15): (a) ≥ 4× faster than (b) per image; batched ≥ 1.5×
per-prompt; (a)'s peak < 10 GB at 512 px.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import storage  # noqa: E402
from bench.gpu import fullsize  # noqa: E402
from bench.gpu.common import Budget, Memory, cuda_refusal, gb, header, median, sync, timed, write  # noqa: E402
from gal import families  # noqa: E402
from gal.config import EvalConfig, GALConfig, GenerateConfig, RunConfig, TrainConfig, load_presets  # noqa: E402
from gal.engine import ReferenceInput, Studio  # noqa: E402
from gal.generation import generate  # noqa: E402

DEFAULT_FAMILIES = ("sd", "sdxl")


def settings(mode: str) -> dict:
    """Sizes per mode: ``full`` is the paper's session, ``quick`` keeps its shape in a few minutes per family,
    ``smoke`` is seconds on the CPU (tiny models)."""
    if mode == "full":  # the paper's m, k, anchors and rounds; LoRA 400 steps vs full UNet 800 (object)
        return dict(anchors=18, m=10, k=3, rounds=4, lora_steps=400, full_steps=800, gen_steps=50,
                    batch=16, eval_prompts=4, eval_per_prompt=2, repeats=3, c_images=None)  # fmt: skip
    if mode == "quick":
        return dict(anchors=18, m=2, k=3, rounds=2, lora_steps=30, full_steps=30, gen_steps=10,
                    batch=12, eval_prompts=2, eval_per_prompt=1, repeats=2, c_images=12)  # fmt: skip
    return dict(anchors=3, m=1, k=1, rounds=1, lora_steps=2, full_steps=2, gen_steps=2,
                batch=8, eval_prompts=1, eval_per_prompt=1, repeats=1, c_images=None)  # fmt: skip


def references(folder: Path, size: int) -> list[ReferenceInput]:
    from gal.toyworld.world import scenarios

    paths = scenarios()["object"].write_references(folder)
    for p in paths:  # the toy world draws at 32 px: upscale to the model's size
        Image.open(p).convert("RGB").resize((size, size), Image.NEAREST).save(p)
    return [ReferenceInput(p, "a <sks> star on stairs", "a star on stairs") for p in paths]


def ours(pipe, spec: str, oracle: str, s: dict, res: int, device, tmp: Path) -> dict:
    """(a): the engine's session on the registered in-memory pipeline."""
    studio = Studio(tmp / "runs", model=spec, oracle=oracle, device=str(device))
    studio.models.register(spec, pipe)  # in memory: create_run must not look it up on disk or hub
    presets = load_presets()
    config = RunConfig(
        task="object", subject_phrase="a <sks> star", anchors=list(presets["object"][: s["anchors"]]),
        model=spec, oracle=oracle, seed=0,
        train=TrainConfig(steps=s["lora_steps"], resolution=res, learning_rate=1e-4),
        generate=GenerateConfig(steps=s["gen_steps"], batch_size=s["batch"], vae_slicing=True),
        gal=GALConfig(m=s["m"], k=s["k"], max_rounds=s["rounds"], adaptive_stop=False),
        eval=EvalConfig(prompts=list(presets["eval"]["object"][: s["eval_prompts"]]),
                        images_per_prompt=s["eval_per_prompt"]),
    )  # fmt: skip
    refs = references(tmp / "refs", res)
    memory = Memory(device)
    memory.reset()
    seconds, run = timed(lambda: studio.advance(studio.create_run(config, refs)), device)
    if run["status"] != "finished":
        raise RuntimeError(f"(a) ended in status {run['status']!r}, not finished")
    with studio.db() as db:
        rounds = storage.list_rounds(db, run["run_id"])
        drawn = [storage.list_images(db, run["run_id"], r["round_index"]) for r in rounds]
    stages = {
        k: sum((r["timings"] or {}).get(k, 0.0) for r in rounds)
        for k in ("train", "generate", "judge", "evaluate")
    }
    return {"total": seconds, "stages": stages, "images": sum(map(len, drawn)), "drawn": drawn,
            "peak": memory.peak(), "config": config}  # fmt: skip


def per_anchor_calls(pipe, family, images: list[dict], cfg: GenerateConfig, res: int) -> int:
    """The usual script: one pipeline call per anchor, its images with one generator each."""
    by_prompt: dict[str, list[int]] = {}
    for im in images:
        by_prompt.setdefault(im["prompt"], []).append(int(im["seed"]))
    for prompt, seeds in by_prompt.items():
        with torch.no_grad():
            pipe(
                [prompt] * len(seeds),
                **family.pipe_kwargs(cfg, len(seeds)),
                height=res,
                width=res,
                generator=[torch.Generator().manual_seed(x) for x in seeds],
            )
    return sum(map(len, by_prompt.values()))


def full_precision_loss(family, pipe, scheduler, latents, cond, generator, cfg, amp) -> torch.Tensor:
    """The loss of a full-denoiser step with fp32 master weights. UNet families (``family.predict`` over a
    DDPM scheduler): epsilon MSE under ``amp`` autocast, as the official script's mixed precision. Others:
    the family's own loss in fp32 (the family's loss autocasts to the denoiser's dtype, fp32 here)."""
    if hasattr(family, "predict") and hasattr(scheduler, "add_noise") and amp is not None:
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
        t = t.to(latents.device)
        with torch.autocast(latents.device.type, dtype=amp):
            pred = family.predict(pipe, scheduler.add_noise(latents, noise, t), t, cond)
        return (pred.float() - noise).pow(2).mean()
    cond = {k: v.float() if torch.is_floating_point(v) else v for k, v in cond.items()}
    return family.per_sample_loss(pipe, scheduler, latents, cond, generator, cfg, False).sum()


def paper_recipe(base: Path, family, a: dict, s: dict, res: int, device, dtype, tmp: Path) -> dict:
    """(b): full-denoiser DreamBooth from the base every round (batch 1, lr 5e-6, AdamW, fp32 master weights
    under autocast as the official script's AMP), the pipeline reloaded from disk each round, then each
    anchor's images in one call: the prompts and seeds (a) drew that round."""
    refs = [Image.open(r.path).convert("RGB") for r in references(tmp / "refs-b", res)]
    stages = {"reload": 0.0, "train": 0.0, "generate": 0.0}
    memory = Memory(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory.reset()
    cfg = GenerateConfig(steps=s["gen_steps"], guidance_scale=7.5, batch_size=s["batch"])
    images = 0
    started = time.perf_counter()
    for r, drawn in enumerate(a["drawn"]):
        t, p = timed(lambda: family.pipeline_class().from_pretrained(base, dtype=dtype,
                                                                     **family.load_kwargs()).to(device),
                     device)  # fmt: skip
        p.set_progress_bar_config(disable=True)
        stages["reload"] += t
        denoiser = family.denoiser(p).float().train()
        optimizer = torch.optim.AdamW(denoiser.parameters(), lr=5e-6)
        noise_scheduler = family.noise_scheduler(p)
        train_cfg = TrainConfig(steps=s["full_steps"], resolution=res, batch_size=1)
        amp = dtype if device.type == "cuda" else None

        def train(
            p=p, optimizer=optimizer, noise_scheduler=noise_scheduler, r=r, train_cfg=train_cfg, amp=amp
        ):
            from gal.training import image_to_tensor

            with torch.no_grad():
                cond = family.encode(p, ["a <sks> star on stairs"], res)
                pixels = torch.stack([image_to_tensor(im, res) for im in refs]).to(device, p.vae.dtype)
                dist = p.vae.encode(pixels).latent_dist
                shift = float(getattr(p.vae.config, "shift_factor", None) or 0.0)
                latents_all = (dist.mean.float() - shift) * float(p.vae.config.scaling_factor)
            g = torch.Generator().manual_seed(r)
            for step in range(s["full_steps"]):
                lat = latents_all[step % len(refs)][None]
                loss = full_precision_loss(family, p, noise_scheduler, lat, cond, g, train_cfg, amp)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        stages["train"] += timed(train, device)[0]
        denoiser.to(dtype).eval()
        del optimizer
        family.set_scheduler(p, "dpmsolver++" if "dpmsolver++" in family.schedulers() else None)
        t, n = timed(lambda p=p, drawn=drawn: per_anchor_calls(p, family, drawn, cfg, res), device)
        stages["generate"] += t
        images += n
        del p, denoiser
        if device.type == "cuda":
            torch.cuda.empty_cache()
    sync(device)
    return {"total": time.perf_counter() - started, "stages": stages, "peak": memory.peak(), "images": images}


def generation_pair(
    pipe, family, images: list[dict], cfg: GenerateConfig, res: int, repeats: int, device
) -> dict:
    """(c): the same images batched across anchors (ours) and by a per-anchor loop; a warm-up of each, then
    ``repeats`` rounds alternating which goes first; medians. Also the largest pixel difference."""
    prompts, seeds = [im["prompt"] for im in images], [int(im["seed"]) for im in images]
    family.set_scheduler(pipe, None)
    memory = Memory(device)

    def batched():
        return generate(pipe, prompts, seeds, cfg, resolution=res)

    def loop():
        return per_anchor_calls(pipe, family, images, cfg, res)

    memory.reset()
    batched()  # warm-up (also applies the generation memory options once)
    peak_batched = memory.peak()
    memory.reset()
    loop()
    peak_loop = memory.peak()
    times: dict[str, list[float]] = {"batched": [], "loop": []}
    for i in range(repeats):
        order = (
            (("batched", batched), ("loop", loop)) if i % 2 == 0 else (("loop", loop), ("batched", batched))
        )
        for name, fn in order:
            times[name].append(timed(fn, device)[0])
    return {"n": len(images), "batched": median(times["batched"]), "loop": median(times["loop"]),
            "peak_batched": peak_batched, "peak_loop": peak_loop, "raw": times}  # fmt: skip


def bench_family(name: str, s: dict, device, dtype, smoke: bool, budget: Budget, log) -> dict:
    family = families.get(name)
    row: dict = {"family": family.label, "name": name}
    t, pipe = timed(lambda: fullsize.build(family, device, dtype, smoke=smoke), device)
    res = family.native_resolution(pipe) if smoke else fullsize.native_resolution(family)
    row.update(build_s=t, resolution=res)
    log(f"{name}: built in {t:.1f} s at {res} px")
    spec, oracle = (f"{name}-random", "ViT-B-32") if not smoke else (f"{name}-smoke", "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        pipe.save_pretrained(tmp / "base")  # (b) reloads it from disk each round, as the official code
        row["save_s"] = time.perf_counter() - started
        row["a"] = ours(pipe, spec, oracle, s, res, device, tmp)
        log(f"{name}: (a) {row['a']['total']:.1f} s, {row['a']['images']} images")
        if budget.over():
            row["skipped"] = "(b), (c): time budget spent"
            return row
        last = row["a"]["drawn"][-1][: s["c_images"]]  # quick: the first anchors' images (whole anchors)
        row["c"] = generation_pair(pipe, family, last, row["a"]["config"].generate, res, s["repeats"], device)
        log(f"{name}: (c) batched {row['c']['batched']:.2f} s vs loop {row['c']['loop']:.2f} s")
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if budget.over():
            row["skipped"] = "(b): time budget spent"
            return row
        row["b"] = paper_recipe(tmp / "base", family, row["a"], s, res, device, dtype, tmp)
        log(f"{name}: (b) {row['b']['total']:.1f} s, {row['b']['images']} images")
    return row


def table(rows: list[dict], s: dict, head: list[str]) -> str:
    lines = ["# GAL session benchmark", "", *head, "",
             f"{s['rounds']} rounds × {s['anchors']} anchors × m={s['m']}, k={s['k']}, "
             f"{s['gen_steps']} sampling steps; LoRA {s['lora_steps']} steps/round vs full denoiser "
             f"{s['full_steps']} steps/round; "
             f"(c) median of {s['repeats']} alternating repeats after a warm-up", "",
             "| family | px | part | train s | generate s | judge s | evaluate s | reload s | total s "
             "| images | images/s (generate) | s per image (total) | peak alloc GB | peak reserved GB "
             "| nvidia-smi GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    notes = []
    for row in rows:
        f, px = row["family"], row.get("resolution", "–")
        if "error" in row:
            lines.append(f"| {f} | {px} | failed: {row['error']} |" + " |" * 12)
            continue
        a, b, c = row.get("a"), row.get("b"), row.get("c")
        if a:
            st, pk = a["stages"], a["peak"]
            lines.append(
                f"| {f} | {px} | (a) ours | {st['train']:.1f} | {st['generate']:.1f} | {st['judge']:.1f} | "
                f"{st['evaluate']:.1f} | 0 | {a['total']:.1f} | {a['images']} | "
                f"{a['images'] / max(st['generate'], 1e-9):.2f} | {a['total'] / a['images']:.3f} | "
                f"{gb(pk['allocated'])} | {gb(pk['reserved'])} | {gb(pk['smi'])} |"
            )
        if b:
            st, pk = b["stages"], b["peak"]
            lines.append(
                f"| {f} | {px} | (b) paper's recipe | {st['train']:.1f} | {st['generate']:.1f} | – | – | "
                f"{st['reload']:.1f} | {b['total']:.1f} | {b['images']} | "
                f"{b['images'] / max(st['generate'], 1e-9):.2f} | {b['total'] / b['images']:.3f} | "
                f"{gb(pk['allocated'])} | {gb(pk['reserved'])} | {gb(pk['smi'])} |"
            )
        if c:
            for label, key, peak in (("(c) per-prompt loop", "loop", "peak_loop"),
                                     ("(c) batched (ours)", "batched", "peak_batched")):  # fmt: skip
                pk = c[peak]
                lines.append(
                    f"| {f} | {px} | {label} | – | {c[key]:.2f} | – | – | – | – | {c['n']} | "
                    f"{c['n'] / c[key]:.2f} | {c[key] / c['n']:.3f} | {gb(pk['allocated'])} | "
                    f"{gb(pk['reserved'])} | {gb(pk['smi'])} |"
                )
        if a and b:
            ratio = (b["total"] / b["images"]) / (a["total"] / a["images"])
            notes.append(f"- {f}: per image, ours is **{ratio:.2f}×** faster than the paper's recipe "
                         f"(same prompts and image count: {a['images']} vs {b['images']}; "
                         "ours also judges and evaluates; target ≥ 4×)")  # fmt: skip
        if c:
            speedup = c["loop"] / c["batched"]
            notes.append(f"- {f}: batched generation is **{speedup:.2f}×** the per-prompt loop "
                         f"over {c['n']} images (target ≥ 1.5×); raw seconds {c['raw']}")  # fmt: skip
        if a and a["peak"]["allocated"] is not None:
            notes.append(f"- {f}: peak of ours {a['peak']['allocated']:.2f} GB allocated / "
                         f"{a['peak']['reserved']:.2f} GB reserved (target < 10 GB at 512 px)")  # fmt: skip
        if row.get("skipped"):
            notes.append(f"- {f}: skipped {row['skipped']}")
        notes.append(
            f"- {f}: built in {row.get('build_s', 0):.1f} s, saved for (b) in {row.get('save_s', 0):.1f} s"
        )
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="2 rounds, m=2, fewer steps: the same ratios in minutes"
    )
    p.add_argument(
        "--cpu-smoke", action="store_true", help="tiny models on the CPU, labelled: not a measurement"
    )
    p.add_argument("--families", default=",".join(DEFAULT_FAMILIES), help="registry names (default sd,sdxl)")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="stop starting new parts after this")
    p.add_argument(
        "--out", type=Path, help="also write the table (Markdown) here, rewritten after each family"
    )
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    if not smoke:
        why = cuda_refusal()
        if why:
            print(f"gpu_session: refusing to run: {why}", file=sys.stderr)
            return 2
    if smoke:
        torch.set_num_threads(1)  # tiny models on a shared CPU: one thread is several times faster
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    mode = "smoke" if smoke else ("quick" if args.quick else "full")
    s = settings(mode)
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    for n in names:
        families.get(n)  # an unknown name fails here with the registry's list
    what = ("CPU SMOKE: tiny random models on the CPU — checks the code path, NOT a measurement"
            if smoke else f"full-size random-weight models, bf16, {mode} settings")  # fmt: skip
    head = header(device, what)
    budget = Budget(args.budget_s)
    log = lambda msg: print(f"[{budget.spent():6.1f} s] {msg}", flush=True)  # noqa: E731
    rows: list[dict] = []
    for name in names:
        if budget.over():
            rows.append({"family": families.get(name).label, "error": "not started: time budget spent"})
            continue
        try:
            rows.append(bench_family(name, s, device, dtype, smoke, budget, log))
        except fullsize.FullSizeMissing as err:
            rows.append({"family": families.get(name).label, "error": str(err)})
        except torch.OutOfMemoryError as err:
            rows.append({"family": families.get(name).label, "error": f"CUDA OOM: {str(err)[:120]}"})
        if not smoke and device.type == "cuda":
            torch.cuda.empty_cache()
        write(args.out, table(rows, s, head))
    text = table(rows, s, head)
    print(text)
    write(args.out, text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
