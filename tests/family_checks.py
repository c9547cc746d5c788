"""Checks every new family's test file runs on its ``tiny-<family>`` model: a 2-round GAL run whose LoRA
changes the images, resume after a cancel in a fresh Studio, exports reloaded by diffusers'
``load_lora_weights`` to the run's own images in a fresh process, and ComfyUI's own key map (a ComfyUI
tree at ``$GAL_COMFYUI``, default ``~/.cache/gal-studio/comfyui``; extract ``comfy/`` from the
``Comfy-Org/ComfyUI`` repository there) accepting every key with the adapter's strength."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

import storage
from gal.config import RunConfig
from gal.generation import generate
from gal.training import LORA_FILE, adapter_state

COMFYUI = Path(os.environ.get("GAL_COMFYUI", Path.home() / ".cache" / "gal-studio" / "comfyui"))


def family_config(model: str, lr: float = 1e-2, **gal) -> RunConfig:
    config = tiny_config(**gal)
    config.model = model
    config.train.learning_rate = lr  # 6 steps at 1e-3 barely move the tiny models' images
    return config


def two_rounds(studio, references, model: str, family, lr: float = 1e-2) -> tuple[str, RunConfig]:
    config = family_config(model, lr)
    run_id = studio.create_run(config, references)
    run = studio.advance(run_id)
    assert run["status"] == "finished"
    with storage.open_db(studio.db_path) as db:
        rounds = storage.list_rounds(db, run_id)
        refs = storage.list_references(db, run_id)
        images_r2 = storage.list_images(db, run_id, 2)
    assert [r["state"] for r in rounds] == ["done", "done"]
    assert all(np.isfinite(r["metrics"]["train_loss"]) for r in rounds)
    added = [x for x in refs if x["source"] == "synthetic"]
    assert added and [x["weight"] for x in added] == pytest.approx([rounds[0]["openness"]] * len(added))
    assert len(images_r2) == 3 * (4 - config.gal.k)  # selected anchors left the pool
    from safetensors import safe_open

    with safe_open(str(studio.run_dir(run_id) / rounds[1]["adapter_path"] / LORA_FILE), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(family.lora_prefix + ".") for k in keys)
    # the trained LoRA visibly changes what the round draws (same seeds, adapter on vs off)
    adapter = studio.folder(run_id).path(rounds[1]["adapter_path"])
    pipe = studio.models.with_adapter(config.model, (run_id, 2), adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter_state(pipe).items())
    prompts, seeds = ["a <sks> star on grass"] * 2, [3, 4]
    with_lora = generate(pipe, prompts, seeds, config.generate, resolution=32)
    base = generate(studio.models.base(config.model), prompts, seeds, config.generate, resolution=32)
    diff = np.mean(
        [
            np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean()
            for a, b in zip(with_lora, base)
        ]
    )
    assert diff > 1.0, f"{model}: the LoRA changed images by only {diff:.3f}/255"
    return run_id, config


def resume_after_cancel(studios, references, model: str) -> None:
    """Cancel in the middle of round 1's generation, resume in a fresh Studio (adapter from disk)."""
    from gal.engine import Studio
    from gal.training import Cancelled

    studio = studios(model)
    config = family_config(model)
    config.generate.batch_size = 4
    run_id = studio.create_run(config, references)

    def progress(stage, done, total, info):
        if stage == "generate" and done >= 4:
            studio.cancel(run_id)

    with pytest.raises(Cancelled):
        studio.advance(run_id, progress)
    with storage.open_db(studio.db_path) as db:
        assert storage.get_round(db, run_id, 1)["state"] == "generating"
        before = {im["id"]: im["file"] for im in storage.list_images(db, run_id, 1)}
        adapter = studio.run_dir(run_id) / storage.get_round(db, run_id, 1)["adapter_path"] / LORA_FILE
    assert 0 < len(before) < 12
    mtime = adapter.stat().st_mtime_ns
    fresh = Studio(studio.runs_root, model=model, oracle="tiny")
    assert fresh.advance(run_id)["status"] == "finished"
    with storage.open_db(fresh.db_path) as db:
        after = storage.list_images(db, run_id, 1)
    assert len(after) == 12 and {i["id"]: i["file"] for i in after if i["id"] in before} == before
    assert adapter.stat().st_mtime_ns == mtime  # round 1 was not retrained


REPLAY = textwrap.dedent("""
    import json, sys
    import numpy as np
    from gal import families
    from gal.config import GenerateConfig
    from gal.generation import generate
    model, out, cases, weights = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    cfg = GenerateConfig(**json.loads(sys.argv[5]))
    family = families.get(families.TINY[model])
    results = {}
    for name, weight in list(weights.items()) + [("base", None)]:
        pipe = family.build_tiny()
        if weight:
            pipe.load_lora_weights(out, weight_name=weight)
        ims = generate(pipe, [c["prompt"] for c in cases], [c["seed"] for c in cases], cfg, resolution=32)
        results[name] = [np.asarray(im, dtype=np.float32).tolist() for im in ims]
    print(json.dumps(results))
""")


def replay_in_fresh_process(
    studio, run_id, config, out: Path, weights: dict[str, str], round_index=2
) -> dict:
    """Redraw two images of round ``round_index`` (the one exported: the last) in a fresh process from each
    exported file; assert each file redraws them (atol 3/255) and that the base model does not."""
    images = [im for a in studio.review_state(run_id, round_index)["anchors"] for im in a["images"]][:2]
    assert len(images) == 2
    cases = [{"seed": im["seed"], "prompt": im["prompt"]} for im in images]
    gen = {
        "steps": config.generate.steps,
        "guidance_scale": config.generate.guidance_scale,
        "negative_prompt": config.generate.negative_prompt,
        "batch_size": 2,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            REPLAY,
            config.model,
            str(out),
            json.dumps(cases),
            json.dumps(weights),
            json.dumps(gen),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    saved = [np.asarray(Image.open(im["path"]), dtype=np.float32) for im in images]
    gaps = {}
    for name in weights:
        gaps[name] = max(np.abs(np.asarray(r) - im).max() for r, im in zip(results[name], saved))
        assert gaps[name] <= 3.0, f"the {name} LoRA does not redraw the run's images (max gap {gaps[name]})"
    gaps["base"] = max(np.abs(np.asarray(b) - im).max() for b, im in zip(results["base"], saved))
    assert gaps["base"] > 6.0, (
        f"the base draws the same images (gap {gaps['base']}): the round trip proves nothing"
    )
    return gaps


def comfy():
    """ComfyUI's own ``comfy`` package (CPU mode), or skip when no ComfyUI tree is at ``COMFYUI``."""
    if not (COMFYUI / "comfy" / "lora.py").exists():
        pytest.skip(f"no ComfyUI tree at {COMFYUI} (set GAL_COMFYUI): its key map cannot be checked")
    pytest.importorskip("einops")  # comfy.utils imports it
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.lora
    import comfy.model_base
    import comfy.utils

    return comfy


def comfy_check(comfy, model, lora: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> int:
    """Run ComfyUI's ``model_lora_keys_unet`` + ``load_lora`` on ``lora`` for a ComfyUI ``model``; assert 0
    keys dropped (``load_lora`` logs every key it did not load) and that ComfyUI's own ``calculate_weight``
    (patches as ``ModelPatcher.add_patches`` builds them, strength 1) adds ``expected[weight name]`` to
    each patched weight: ΔW = B·A·alpha/r per adapted module, summed over the slices of fused weights.
    Returns the number of patched weights."""
    import logging

    key_map = comfy.lora.model_lora_keys_unet(model, {})
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        patches = comfy.lora.load_lora(lora, key_map, log_missing=True)
    finally:
        logging.getLogger().removeHandler(handler)
    dropped = [r for r in records if r.startswith("lora key not loaded")]
    assert not dropped, f"ComfyUI drops {len(dropped)} keys, e.g. {dropped[:4]}"
    assert patches, "ComfyUI maps none of the keys"
    sd = model.state_dict()
    totals: dict[str, torch.Tensor] = {}
    for target, adapter in patches.items():
        name, offset = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        # ComfyUI builds its models without initialising weights: patch zeros, the result is ΔW itself
        weight = torch.zeros(sd[name].shape, dtype=torch.float32)
        weight = comfy.lora.calculate_weight([(1.0, adapter, 1.0, offset, None)], weight, name)
        totals[name] = totals.get(name, 0) + weight
    assert set(totals) == set(expected), sorted(set(totals) ^ set(expected))[:6]
    for name, delta in totals.items():
        torch.testing.assert_close(delta, expected[name].float(), rtol=1e-4, atol=1e-6, msg=name)
    return len(totals)


def killed_cli_run_resumes(tmp_path, model: str) -> None:
    """SIGKILL a real ``gal run --demo`` in the middle of round 1's generation, then ``gal run --resume``
    finishes it with every image recorded before the kill kept."""
    from conftest import kill_demo_run_mid_generation

    runs = tmp_path / "runs"
    run_id, before = kill_demo_run_mid_generation(runs, model)
    done = subprocess.run(
        [sys.executable, "-m", "gal", "--runs-dir", str(runs), "run", "--resume", run_id],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with storage.open_db(runs / "gal.db") as db:
        assert storage.get_run(db, run_id)["status"] == "finished"
        after = {im["id"]: im["file"] for im in storage.list_images(db, run_id, 1)}
    assert len(after) == 180 and all(after[im["id"]] == im["file"] for im in before)
