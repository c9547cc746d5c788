"""Lumina 2 (gal/families/lumina2.py) on tiny-lumina2: detection, the script's loss, a 2-round GAL run with
a cancel and resume, exports reloaded in a fresh process, block swap, ComfyUI's key map where its snapshot
has one for Lumina 2's diffusers names."""

import json

import pytest
import torch
from family_checks import (
    block_swap_trains_the_same_adapter,
    check_two_rounds,
    comfy,
    comfy_check,
    killed_cli_run_resumes,
    random_adapter_state,
    replay_in_fresh_process,
    resumed_where_it_stopped,
    shared_run_fixture,
)
from safetensors import safe_open
from safetensors.torch import save_file

from gal import families
from gal.config import TrainConfig
from gal.families.lumina2 import LUMINA2_TARGETS
from gal.models import load_pipeline, model_family

MODEL = "tiny-lumina2"
FAMILY = families.get("lumina2")


finished = shared_run_fixture(MODEL, lr=5e-2, alpha=8.0)


def test_detected_from_model_index_and_single_file_keys(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "Lumina2Pipeline"}))
    assert families.detect(tmp_path / "m") is FAMILY and model_family(MODEL) is FAMILY
    native = ["layers.0.attention.qkv.weight", "noise_refiner.0.attention.qkv.weight",
              "context_refiner.0.attention.out.weight", "cap_embedder.1.weight"]  # fmt: skip
    prefixed = [f"model.diffusion_model.{k}" for k in native]
    gemma = {"model.diffusion_model.cap_embedder.1.weight": [2304, 2304]}  # fed by Gemma-2-2B
    assert families.detect_keys(prefixed, gemma) is FAMILY
    assert families.detect_keys(
        prefixed, {"model.diffusion_model.cap_embedder.1.weight": [3840, 2560]}
    ).name == (
        "zimage"  # Z-Image's NextDiT, fed by Qwen3-4B
    )
    assert families.detect_keys(prefixed).name == "zimage"  # names alone: the more common model
    assert families.detect_keys([*native, "x_pad_token", "cap_pad_token"], gemma).name == "zimage"
    assert families.detect_keys(list(FAMILY.build_tiny().transformer.state_dict())) is FAMILY
    keys = {
        "noise_refiner.0.attn.to_q.weight": (2, 2),
        "time_caption_embed.caption_embedder.1.weight": (2, 2),
    }
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(tmp_path / "l.safetensors"))
    assert families.detect(tmp_path / "l.safetensors") is FAMILY


def test_loss_is_the_scripts():
    """The reversed lerp (1 - σ)ε + σx, timestep t/1000, target x - ε: the loss equals the script's
    arithmetic from the same draws."""
    pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32)
    cfg = TrainConfig(steps=12, learning_rate=1e-2, batch_size=2)
    cond = FAMILY.encode(pipe, ["a <sks> star", "a photo of a <sks> star on the beach at night"], 32)
    assert cond["mask"].sum(1)[0] < cond["mask"].sum(1)[1]
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    scheduler = FAMILY.noise_scheduler(pipe)
    loss = FAMILY.per_sample_loss(
        pipe, scheduler, latents, cond, torch.Generator().manual_seed(5), cfg, False
    )
    d = FAMILY.flow_draw(scheduler, latents, cond, torch.Generator().manual_seed(5), cfg, None)
    with torch.no_grad():
        noisy = (1 - d.sigmas) * d.noise + d.sigmas * latents
        pred = pipe.transformer(noisy, d.timesteps / 1000, cond["embeds"], cond["mask"], return_dict=False)[0]
    torch.testing.assert_close(loss.detach(), ((pred - (latents - d.noise)) ** 2).mean(dim=(1, 2, 3)))


def test_defaults_and_targets():
    d = FAMILY.defaults
    assert (d.learning_rate, d.rank, d.steps, d.guidance_scale) == (1e-4, 4, 30, 4.0)
    assert list(d.target_modules) == LUMINA2_TARGETS


def test_two_round_gal_run_and_its_exports_reload_in_a_fresh_process(finished, tmp_path):
    studio, run_id, config = finished.studio, finished.run_id, finished.config
    check_two_rounds(studio, run_id, config, FAMILY)
    out = tmp_path / "export"
    written = studio.export(run_id, out, ("diffusers", "kohya"))
    with safe_open(str(written["kohya"]), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
        alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    assert "diffusion_model.layers.0.attention.qkv.lora_A.weight" in keys  # NextDiT's fused qkv
    assert alphas == {3.0 * config.train.rank, float(config.train.rank)}  # folded: scale 1 (qkv rank 3r)
    assert meta["modelspec.architecture"] == "lumina-2/lora"
    # diffusers' importer of NextDiT-named files hard-codes full-size widths: the ComfyUI file is checked
    # by ComfyUI's own code (next test); the diffusers file redraws the run's images in a fresh process
    replay_in_fresh_process(studio, run_id, config, out, {"diffusers": written["diffusers"].name})


@pytest.mark.parametrize("alpha", [4.0, 12.0])
def test_comfyui_maps_every_key_of_the_comfyui_file_at_the_adapters_strength(alpha):
    """ComfyUI's own model_lora_keys_unet + load_lora + calculate_weight for its Lumina2 model at the tiny
    model's widths: 0 keys dropped, and ΔW of each native weight (q/k/v slices of the fused qkv included)
    equals B·A·alpha/r of the trained adapter, at alpha = r and alpha ≠ r."""
    import importlib

    c = comfy()
    supported_models = importlib.import_module("comfy.supported_models")
    uc = dict(image_model="lumina2", patch_size=2, in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
              n_heads=2, n_kv_heads=2, axes_dims=[8, 4, 4], axes_lens=[64, 16, 16], cap_feat_dim=16,
              multiple_of=16, norm_eps=1e-5, qk_norm=True, ffn_dim_multiplier=None)  # fmt: skip
    model = supported_models.Lumina2(uc).get_model({})
    rank = 4
    pipe, state = random_adapter_state(FAMILY, rank, alpha)

    def delta(module):
        return state[f"transformer.{module}.lora_B.weight"] @ state[f"transformer.{module}.lora_A.weight"]

    expected = {}
    blocks = [f"layers.{i}" for i in range(2)] + ["noise_refiner.0", "context_refiner.0"]
    for block in blocks:
        qkv = torch.cat([delta(f"{block}.attn.{x}") for x in ("to_q", "to_k", "to_v")])
        expected[f"diffusion_model.{block}.attention.qkv.weight"] = qkv * (alpha / rank)
        expected[f"diffusion_model.{block}.attention.out.weight"] = delta(f"{block}.attn.to_out.0") * (
            alpha / rank
        )
    lora = FAMILY.kohya_state_dict(state, {"transformer": (alpha, rank)})
    assert comfy_check(c, model, lora, expected) == len(expected) == 2 * len(blocks)


def test_block_swap_on_lumina2_trains_the_same_adapter(reference_files):
    block_swap_trains_the_same_adapter(reference_files, MODEL, 2)


def test_resume_after_a_cancel_mid_generation(finished):
    resumed_where_it_stopped(finished)


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path):
    killed_cli_run_resumes(tmp_path, MODEL)
