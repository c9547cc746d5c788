"""Chroma (gal/families/chroma.py) on tiny-chroma: detection, a 2-round GAL run, resume, exports reloaded in a
fresh process, ComfyUI's own key map and strength, block swap."""

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

from gal import blockswap, families
from gal.families.chroma import ChromaFamily
from gal.models import load_pipeline, model_family

MODEL = "tiny-chroma"
FAMILY = families.get("chroma")


finished = shared_run_fixture(MODEL)


def test_detected_from_model_index_and_single_file_keys(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "ChromaPipeline"}))
    assert families.detect(tmp_path / "m") is FAMILY
    assert model_family(MODEL) is FAMILY and isinstance(FAMILY, ChromaFamily)
    bfl = {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": (3, 1),
           "model.diffusion_model.distilled_guidance_layer.in_proj.weight": (2, 2)}  # fmt: skip
    diffusers_layout = {
        "transformer_blocks.0.attn.to_q.weight": (2, 2),
        "distilled_guidance_layer.in_proj.weight": (2, 2),
    }
    flux = {"double_blocks.0.img_attn.qkv.weight": (3, 1), "img_in.weight": (8, 64)}
    for name, keys, family in (
        ("bfl", bfl, "chroma"),
        ("diff", diffusers_layout, "chroma"),
        ("flux", flux, "flux"),
    ):
        save_file({k: torch.zeros(s) for k, s in keys.items()}, str(tmp_path / f"{name}.safetensors"))
        assert families.detect(tmp_path / f"{name}.safetensors").name == family, name


def test_defaults_negative_prompts_and_memory_preset():
    d = FAMILY.defaults
    assert (d.resolution, d.steps, d.scheduler) == (1024, 35, "flow-euler") and d.gradient_checkpointing
    assert len(d.target_modules) == 12
    pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32)
    assert FAMILY.pipe_kwargs(
        type("G", (), {"negative_prompt": "blurry", "steps": 2, "guidance_scale": 4.0})(), 2
    )["negative_prompt"] == ["blurry", "blurry"]
    assert len(blockswap.swappable_blocks(pipe.transformer)) == 4  # 2 double + 2 single blocks


def test_two_round_gal_run_and_its_exports_reload_in_a_fresh_process(finished, tmp_path):
    """``gal export`` of the run: the diffusers LoRA (``ChromaPipeline.save_lora_weights``, alpha/r folded)
    reloads in a fresh process to the run's own images; the kohya/BFL file (the ComfyUI file) carries
    Chroma's kohya/modelspec facts. diffusers' kohya importer hard-codes FLUX.1's widths for fused single
    blocks, so the BFL file is checked by ComfyUI's own code (next test), not reloaded by diffusers here."""
    studio, run_id, config = finished.studio, finished.run_id, finished.config
    check_two_rounds(studio, run_id, config, FAMILY)
    out = tmp_path / "export"
    written = studio.export(run_id, out, ("diffusers", "kohya"))
    with safe_open(str(written["kohya"]), "pt") as f:
        kohya = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    assert kohya and all(
        k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in kohya
    )
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == ("chroma", "chroma/lora")
    assert meta["ss_network_module"] == "networks.lora_flux"
    gaps = replay_in_fresh_process(studio, run_id, config, out, {"diffusers": written["diffusers"].name})
    assert gaps["diffusers"] <= 3.0


def _comfy_chroma(comfy):
    uc = dict(image_model="chroma", in_channels=16, out_channels=16, context_in_dim=32, hidden_size=32,
              mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[4, 4, 8], theta=10000,
              patch_size=2, qkv_bias=True, in_dim=16, out_dim=32, hidden_dim=32, n_layers=1)  # fmt: skip
    import comfy.supported_models

    return comfy.supported_models.Chroma(uc).get_model({})


def _expected(comfy, model, state, alpha, rank):
    """ΔW = B·A·alpha/r per diffusers module, placed where ComfyUI's flux_to_diffusers says it lives."""
    mapping = comfy.utils.flux_to_diffusers(model.model_config.unet_config, output_prefix="diffusion_model.")
    sd = model.state_dict()
    out = {}
    for key, a in state.items():
        if not key.endswith("lora_A.weight"):
            continue
        module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
        delta = state[key.replace("lora_A", "lora_B")] @ a * (alpha / rank)
        target = mapping[f"{module}.weight"]
        name, offset = (target, None) if isinstance(target, str) else target
        out.setdefault(name, torch.zeros_like(sd[name], dtype=torch.float32))
        view = out[name] if offset is None else out[name].narrow(*offset)
        view += delta
    return out


@pytest.mark.parametrize("alpha", [4.0, 12.0])
def test_comfyui_key_map_takes_every_key_at_the_adapters_strength(alpha):
    """The kohya/BFL file (the ComfyUI file) at alpha = r and alpha ≠ r; the diffusers file at alpha = r
    (ComfyUI reads no safetensors metadata, so a diffusers file with alpha ≠ r loads at scale 1 there)."""
    c = comfy()
    model = _comfy_chroma(c)
    rank = 4
    pipe, state = random_adapter_state(FAMILY, rank, alpha)
    expected = _expected(c, model, state, alpha, rank)
    kohya = FAMILY.kohya_state_dict(state, {"transformer": (alpha, rank)})
    assert (
        comfy_check(c, model, kohya, expected) == len(expected) == 2 * 8 + 2 * 1
    )  # 8 per double block, linear1 per single
    if alpha == rank:
        assert comfy_check(c, model, state, expected) == len(expected)


def test_block_swap_on_chroma_trains_the_same_adapter(reference_files):
    block_swap_trains_the_same_adapter(reference_files, MODEL, 4)


def test_resume_after_a_cancel_mid_generation(finished):
    resumed_where_it_stopped(finished)


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path):
    killed_cli_run_resumes(tmp_path, MODEL)
