"""SD3.5, the family added on the seam (gal/families/sd3.py + one registry line): a 2-round GAL run from
the command line with ``--model tiny-sd3``, its diffusers LoRA redrawing the run's own images in a fresh
pipeline, and its ComfyUI file named by ComfyUI's own key map at the trained strength."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from family_checks import COMFYUI, REPLAYER
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import storage
from gal import families
from gal.families.sd3 import SD3_TARGETS
from gal.training import LORA_FILE

ROOT = Path(__file__).resolve().parents[1]


def _gal(runs: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "gal", "--runs-dir", str(runs), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def sd3_run(tmp_path_factory):
    """``gal run --demo --model tiny-sd3``: two GAL rounds, then ``gal export`` (diffusers + kohya)."""
    runs = tmp_path_factory.mktemp("sd3-runs")
    _gal(runs, "run", "--demo", "--model", "tiny-sd3", "--oracle", "tiny", "--steps", "6", "--lr", "1e-2",
         "--gen-steps", "3", "--m", "3", "--k", "2", "--rounds", "2", "--no-adaptive-stop", "--rank", "4",
         "--alpha", "8")  # fmt: skip
    with storage.open_db(runs / "gal.db") as db:
        (run,) = storage.list_runs(db)
        rounds = storage.list_rounds(db, run["run_id"])
        images = storage.list_images(db, run["run_id"], 2)
    out = tmp_path_factory.mktemp("sd3-export") / "export"
    _gal(runs, "export", run["run_id"], str(out), "--format", "diffusers,kohya")
    return {"runs": runs, "run": run, "rounds": rounds, "images": images, "out": out}


def test_two_round_gal_run_on_tiny_sd3(sd3_run):
    rounds = sd3_run["rounds"]
    assert [r["state"] for r in rounds] == ["done", "done"]
    assert all(np.isfinite(r["metrics"]["train_loss"]) for r in rounds)
    run_dir = Path(sd3_run["run"]["run_dir"])
    with safe_open(str(run_dir / rounds[1]["adapter_path"] / LORA_FILE), "pt") as f:
        keys = list(f.keys())
        adapter = json.loads(f.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert {
        re.sub(r"^transformer\.transformer_blocks\.\d+\.|\.lora_[AB]\.weight$", "", k) for k in keys
    } <= set(SD3_TARGETS)
    assert adapter["transformer.lora_alpha"] == 8 and adapter["transformer.r"] == 4
    assert sd3_run["images"], "round 2 drew no images"


def test_the_diffusers_export_redraws_the_runs_images_in_a_fresh_pipeline(sd3_run):
    config = json.loads((sd3_run["out"] / "gal_config.json").read_text())
    images = [im for im in sd3_run["images"] if im["kind"] != "eval"][:2]
    cases = [{"seed": im["seed"], "prompt": im["prompt"]} for im in images]
    gen = {k: config["generate"][k] for k in ("steps", "guidance_scale", "negative_prompt")} | {
        "batch_size": 2
    }
    # a fresh pipeline in a process of its own (shared with the other families' replays)
    weights = {"diffusers": "pytorch_lora_weights.safetensors"}
    job = {"model": "tiny-sd3", "out": str(sd3_run["out"]), "cases": cases, "weights": weights, "gen": gen}
    results = REPLAYER.ask(job)
    run_dir = Path(sd3_run["run"]["run_dir"])
    saved = [np.asarray(Image.open(run_dir / im["file"]), dtype=np.float32) for im in images]
    for im, redrawn in zip(saved, results["diffusers"]):
        assert np.allclose(np.asarray(redrawn), im, atol=2.0), "the diffusers LoRA does not redraw the image"
    base_gap = max(np.abs(np.asarray(b) - im).max() for b, im in zip(results["base"], saved))
    assert base_gap > 6.0, f"the base model draws the same images (gap {base_gap}): the test would be blind"


def _comfy_sd3_key_map(transformer) -> dict[str, str]:
    """ComfyUI's ``model_lora_keys_unet`` for an SD3 model (comfy/lora.py), the OneTrainer form of its
    diffusers key loop over ``comfy.utils.mmdit_to_diffusers``: ComfyUI's own code when a checkout is at
    ``GAL_COMFYUI``, else the same rule over the transformer's diffusers weight names."""
    if (COMFYUI / "comfy" / "utils.py").exists():
        sys.path.insert(0, str(COMFYUI))
        try:
            import comfy.utils

            depth = transformer.config.num_layers
            names = comfy.utils.mmdit_to_diffusers({"depth": depth, "num_blocks": depth}, "diffusion_model.")
        finally:
            sys.path.remove(str(COMFYUI))
    else:
        names = {n: n for n, _ in transformer.named_parameters()}
    return {
        "lora_transformer_{}".format(k[: -len(".weight")].replace(".", "_")): v
        for k, v in names.items()
        if k.endswith(".weight")
    }


def test_the_comfyui_file_is_named_by_comfyuis_key_map_at_the_trained_strength(sd3_run):
    family = families.get("sd3")
    transformer = family.build_tiny().transformer
    key_map = _comfy_sd3_key_map(transformer)
    kohya = next(p for p in sd3_run["out"].glob("*.safetensors") if p.name != LORA_FILE)
    with safe_open(str(kohya), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    dropped = sorted(m for m in modules if m not in key_map)
    assert modules and dropped == [], f"ComfyUI would drop {dropped[:5]}"
    # ComfyUI applies up·down·alpha/rank; the trained adapter is B·A·alpha/r per module
    run_dir = Path(sd3_run["run"]["run_dir"])
    trained = load_file(str(run_dir / sd3_run["rounds"][-1]["adapter_path"] / LORA_FILE))
    modules_by_key = {"lora_transformer_" + n.replace(".", "_"): n for n, _ in transformer.named_modules()}
    for m in modules:
        down, up = tensors[f"{m}.lora_down.weight"], tensors[f"{m}.lora_up.weight"]
        comfy = up.float() @ down.float() * (float(tensors[f"{m}.alpha"]) / down.shape[0])
        name = "transformer." + modules_by_key[m]
        want = trained[f"{name}.lora_B.weight"] @ trained[f"{name}.lora_A.weight"] * (8 / 4)
        assert torch.allclose(comfy, want, atol=1e-6, rtol=1e-4), m
    assert (
        meta["ss_base_model_version"] == "sd3" and meta["modelspec.architecture"] == "stable-diffusion-3/lora"
    )
    assert "modelspec.prediction_type" not in meta  # flow matching: neither epsilon nor v


def test_sd3_single_file_keys_are_detected():
    assert (
        families.detect_keys(["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"]).name == "sd3"
    )
    diffusers_layout = ["pos_embed.proj.weight", "transformer_blocks.0.attn.to_q.weight"]
    assert families.detect_keys(diffusers_layout).name == "sd3"
