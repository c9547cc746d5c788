"""One GAL round broken down, and batched generation vs a per-prompt loop. Prints tables; not a test.

    .venv/bin/python bench/bench_round.py [--model tiny|toy] [--m 8] [--repeats 3]
    .venv/bin/python bench/bench_round.py --smoke   # seconds: tiny model, few steps (the suite runs it)

Targets (issue 2): non-compute overhead (DB + image files + Python glue) <= 10 % of a round's wall
time; batched generation of |A|×m images >= 1.5× a per-prompt diffusers loop over the same seeds.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import storage  # noqa: E402
from gal.demo import demo_scenario  # noqa: E402
from gal.engine import Studio  # noqa: E402
from gal.generation import generate, image_seed  # noqa: E402
from gal.models import default_model  # noqa: E402

BUCKETS = ("train", "generate (UNet+VAE)", "oracle (CLIP)", "database", "image files", "other")


class Timers:
    def __init__(self):
        self.seconds = dict.fromkeys(BUCKETS, 0.0)
        self._depth = 0

    def wrap(self, bucket: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self._depth:  # count only the outermost timed call (storage calls nest)
                return fn(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[bucket] += time.perf_counter() - started
                self._depth -= 1

        return timed


SMOKE = dict(train_steps=3, gen_steps=2, anchors=4, eval_prompts=1)  # seconds-long, for the test suite


def wrap_everywhere(name: str, original, replacement) -> list[tuple[object, str]]:
    """Replace ``original`` under ``name`` in every loaded ``gal`` module that holds it (wherever the loop
    imports it from today); return what was patched, to undo."""
    patched = []
    for mod_name, module in list(sys.modules.items()):
        if (mod_name == "gal" or mod_name.startswith("gal.")) and getattr(module, name, None) is original:
            setattr(module, name, replacement)
            patched.append((module, name))
    if not patched:
        raise RuntimeError(f"no gal module holds {name}: the bench's instrumentation is out of date")
    return patched


def shrink(config, smoke: dict | None) -> None:
    if not smoke:
        return
    config.train.steps = smoke["train_steps"]
    config.train.batch_size = 1
    config.generate.steps = smoke["gen_steps"]
    config.anchors = config.anchors[: smoke["anchors"]]
    config.eval.prompts = config.eval.prompts[: smoke["eval_prompts"]]
    config.eval.images_per_prompt = 1


def bench_round(model: str, m: int, smoke: dict | None = None) -> dict[str, float]:
    import gal.steps  # noqa: F401  (loads the modules that hold train_lora)
    from gal import training

    timers = Timers()
    with tempfile.TemporaryDirectory() as tmp:
        studio = Studio(Path(tmp) / "runs", model=model, oracle="toy" if model == "toy" else "tiny")
        config, refs = demo_scenario(Path(tmp) / "refs", "object", model=model)
        config.oracle = studio.default_oracle
        config.gal.m, config.gal.max_rounds = m, 1
        shrink(config, smoke)
        pipe = studio.pipeline(config.model)  # load outside the timed round, as the app does once
        oracle = studio.oracle(config.oracle)
        run_id = studio.create_run(config, refs)

        # Instrument: the model calls, every storage function, and PNG reads/writes.
        original_train = training.train_lora
        undo = wrap_everywhere("train_lora", original_train, timers.wrap("train", original_train))
        pipe_cls = type(pipe)
        original_call = pipe_cls.__call__
        pipe_cls.__call__ = timers.wrap("generate (UNet+VAE)", original_call)
        for name in ("text_similarities", "image_similarities"):
            setattr(oracle, name, timers.wrap("oracle (CLIP)", getattr(oracle, name)))
        for name in storage.__all__:
            fn = getattr(storage, name)
            if callable(fn) and not isinstance(fn, type):
                setattr(storage, name, timers.wrap("database", fn))
        import PIL.Image
        from PIL import Image

        originals = dict(storage.__dict__)
        save, open_ = Image.Image.save, PIL.Image.open
        Image.Image.save = timers.wrap("image files", save)
        PIL.Image.open = timers.wrap("image files", open_)
        try:
            started = time.perf_counter()
            state = studio.advance(run_id)
            wall = time.perf_counter() - started
        finally:
            pipe_cls.__call__ = original_call
            Image.Image.save, PIL.Image.open = save, open_
            for module, name in undo:
                setattr(module, name, original_train)
            for name in storage.__all__:
                setattr(storage, name, originals[name])
    missing = [
        b for b in ("train", "generate (UNet+VAE)", "oracle (CLIP)", "database") if not timers.seconds[b]
    ]
    if missing:  # the loop no longer calls what the bench wraps: fail loudly rather than print zeros
        raise RuntimeError(f"the round ran ({state.get('status')!r}) but never reached {missing}")
    timers.seconds["other"] = wall - sum(v for k, v in timers.seconds.items() if k != "other")
    return {"wall": wall, **timers.seconds}


def bench_batching(model: str, m: int, repeats: int, smoke: dict | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        studio = Studio(Path(tmp) / "runs", model=model)
        config, _ = demo_scenario(Path(tmp) / "refs", "object", model=model)
        shrink(config, smoke)
        pipe = studio.pipeline(config.model)
        resolution = config.train.resolution or 32
        prompts = config.anchor_prompts()
        all_prompts = [p for p in prompts for _ in range(m)]
        seeds = [image_seed(0, a, j) for a in range(len(prompts)) for j in range(m)]
        cfg = config.generate

        def batched():
            return generate(pipe, all_prompts, seeds, cfg, resolution=resolution)

        def per_prompt():  # the usual script: one pipeline call per prompt, m images, a generator each
            images = []
            for a, prompt in enumerate(prompts):
                gens = [torch.Generator().manual_seed(s) for s in seeds[a * m : (a + 1) * m]]
                images += pipe(
                    [prompt] * m,
                    num_inference_steps=cfg.steps,
                    guidance_scale=cfg.guidance_scale,
                    height=resolution,
                    width=resolution,
                    generator=gens,
                ).images
            return images

        batched()  # warm-up
        times = {"batched": [], "per-prompt": []}
        for _ in range(repeats):
            for name, fn in (("per-prompt", per_prompt), ("batched", batched)):
                started = time.perf_counter()
                images = fn()
                times[name].append(time.perf_counter() - started)
                if name == "per-prompt":
                    reference = images
                else:
                    diff = max(
                        np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()
                        for a, b in zip(images, reference)
                    )
        return {
            "images": len(all_prompts),
            "batch_size": cfg.batch_size,
            "batched": float(np.median(times["batched"])),
            "per_prompt": float(np.median(times["per-prompt"])),
            "max_pixel_diff": int(diff),
        }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long: tiny model, 4 anchors, m=2, 3 train / 2 sampling steps",
    )
    args = parser.parse_args(argv)
    smoke = None
    if args.smoke:
        smoke = SMOKE
        args.model, args.m, args.repeats = "tiny", 2, 1
        args.threads = args.threads or 1  # tiny models on a shared CPU: one thread is several times faster
    if args.threads:
        torch.set_num_threads(args.threads)
    anchors = smoke["anchors"] if smoke else 18
    label = " (SMOKE: tiny sizes, not a measurement)" if smoke else ""
    print(
        f"model {args.model}, torch threads {torch.get_num_threads()}, m={args.m}, {anchors} anchors{label}\n"
    )

    row = bench_round(args.model, args.m, smoke)
    wall = row.pop("wall")
    print(f"One round (train + generate + judge + evaluate), wall {wall:.2f} s")
    print(f"{'part':<22}{'seconds':>10}{'share':>9}")
    for name in BUCKETS:
        print(f"{name:<22}{row[name]:>10.3f}{row[name] / wall:>9.1%}")
    overhead = row["database"] + row["image files"] + row["other"]
    print(f"{'non-compute overhead':<22}{overhead:>10.3f}{overhead / wall:>9.1%}   target <= 10 %\n")

    b = bench_batching(args.model, args.m, args.repeats, smoke)
    print(
        f"Generation of {b['images']} images (median of {args.repeats}), "
        f"batch {b['batch_size']} across anchors"
    )
    print(f"{'method':<22}{'seconds':>10}{'img/s':>9}")
    print(f"{'per-prompt loop':<22}{b['per_prompt']:>10.3f}{b['images'] / b['per_prompt']:>9.1f}")
    print(f"{'batched (ours)':<22}{b['batched']:>10.3f}{b['images'] / b['batched']:>9.1f}")
    print(
        f"speed-up {b['per_prompt'] / b['batched']:.2f}x   target >= 1.5x;  max pixel difference "
        f"between the two: {b['max_pixel_diff']} / 255 (same seeds, same images)"
    )


if __name__ == "__main__":
    main()
