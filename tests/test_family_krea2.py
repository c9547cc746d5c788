"""Krea 2 (gal/families/krea2.py) on tiny-krea2: detection, the template's token counts, a 2-round GAL run,
resume, exports reloaded in a fresh process, ComfyUI's own Krea 2 key map (from ``.comfy/krea2_keymap.py``,
written by ``scripts/comfy_keymaps.py``: the whole ComfyUI tree here predates Krea 2), block swap."""

import json

import comfy_shim
import pytest
import torch
from family_checks import (
    block_swap_trains_the_same_adapter,
    check_two_rounds,
    killed_cli_run_resumes,
    random_adapter_state,
    replay_in_fresh_process,
    resumed_where_it_stopped,
    shared_run_fixture,
)
from safetensors import safe_open
from safetensors.torch import save_file

from gal import blockswap, families
from gal.config import GenerateConfig, TrainConfig
from gal.families.krea2 import KREA2_TARGETS
from gal.families.qwenimage import template_tokens
from gal.models import load_pipeline, model_family

MODEL = "tiny-krea2"
FAMILY = families.get("krea2")


finished = shared_run_fixture(MODEL, lr=5e-2)


def test_detected_from_model_index_and_single_file_keys(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "Krea2Pipeline"}))
    assert families.detect(tmp_path / "m") is FAMILY and model_family(MODEL) is FAMILY
    keys = {"text_fusion.projector.weight": (2, 2), "transformer_blocks.0.attn.to_q.weight": (2, 2)}
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(tmp_path / "k.safetensors"))
    assert families.detect(tmp_path / "k.safetensors") is FAMILY
    qwen = {"txt_norm.weight": (2,), "transformer_blocks.0.img_mod.1.weight": (2, 2)}
    save_file({k: torch.zeros(s) for k, s in qwen.items()}, str(tmp_path / "q.safetensors"))
    assert families.detect(tmp_path / "q.safetensors").name == "qwenimage"


def test_template_counts_and_the_fixed_length_text_layout():
    pipe = FAMILY.build_tiny()
    assert template_tokens(pipe.tokenizer, pipe.prompt_template_encode_prefix + "{}") == 34
    assert len(pipe.tokenizer(pipe.prompt_template_encode_suffix).input_ids) == 5
    cond = FAMILY.encode(pipe, ["a <sks> star", "a star on grass under the night sky"], 32)
    n = FAMILY.max_sequence_length(pipe)
    assert cond["embeds"].shape == (2, n, 3, 16)  # [prompts, fixed text length, tapped layers, width]
    words = [
        len(pipe.tokenizer(p).input_ids) for p in ("a <sks> star", "a star on grass under the night sky")
    ]
    assert cond["mask"].sum(1).tolist() == [w + 5 for w in words]  # the prompt + the 5 suffix tokens


def test_defaults_cfg_and_targets():
    d = FAMILY.defaults
    assert (d.learning_rate, d.rank, d.steps, d.guidance_scale) == (3e-4, 32, 28, 4.5)
    assert list(d.target_modules) == KREA2_TARGETS and len(KREA2_TARGETS) == 15
    assert FAMILY.pipe_kwargs(GenerateConfig(steps=2, guidance_scale=4.5), 2)["guidance_scale"] == 4.5
    pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32)
    assert len(blockswap.swappable_blocks(pipe.transformer)) == 2


def test_two_round_gal_run_and_its_exports_reload_in_a_fresh_process(finished, tmp_path):
    studio, run_id, config = finished.studio, finished.run_id, finished.config
    check_two_rounds(studio, run_id, config, FAMILY)
    out = tmp_path / "export"
    written = studio.export(run_id, out, ("diffusers", "kohya"))
    with safe_open(str(written["kohya"]), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    assert (
        "diffusion_model.blocks.0.attn.wq.lora_A.weight" in keys
        and "diffusion_model.first.lora_B.weight" in keys
    )
    assert meta["modelspec.architecture"] == "krea-2/lora"
    replay_in_fresh_process(
        studio,
        run_id,
        config,
        out,
        {"diffusers": written["diffusers"].name, "comfyui": written["kohya"].name},
    )


def _comfy_check(lora, trained, scale):
    missing = comfy_shim.available("krea2_keymap")
    if missing:
        pytest.skip(missing)
    unet_config = {"layers": FAMILY.build_tiny().transformer.config.num_layers}
    return comfy_shim.check_file(
        FAMILY, "krea2_keymap", "krea2_to_diffusers", unet_config, lora, trained, scale
    )


def test_comfyui_maps_every_key_at_the_trained_strength(finished, tmp_path):
    """ComfyUI's model_lora_keys_unet (its generic loop + its Krea 2 branch), load_lora and calculate_weight
    on the run's exported ComfyUI file: 0 keys dropped, each module's ΔW equals B·A·alpha/r."""
    lora, trained, scale = comfy_shim.exported_and_trained(finished, tmp_path / "export")
    assert len(_comfy_check(lora, trained, scale)) == 36  # every adapted module


@pytest.mark.parametrize("alpha", [4.0, 12.0])
def test_comfyui_file_loads_at_alpha_over_rank(alpha):
    """alpha = r and alpha ≠ r: ComfyUI reads no alpha from this file, so alpha/r must be in lora_B."""
    rank = 4
    _, state = random_adapter_state(FAMILY, rank, alpha)
    lora = FAMILY.kohya_state_dict(state, {"transformer": (alpha, rank)})
    assert len(_comfy_check(lora, state, alpha / rank)) == 36


def test_original_names_invert_diffusers_importer():
    """Every diffusers module the script adapts gets krea-ai/krea-2's name, and diffusers' own importer maps
    that name back (ΔW per module unchanged: alpha/r folded into lora_B)."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_krea2_lora_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from gal.training import attach_adapter

    pipe = FAMILY.build_tiny()
    rank, alpha = 4, 12.0
    attach_adapter(pipe.transformer, TrainConfig(rank=rank, alpha=alpha), seed=0, family=FAMILY)
    state = {
        f"transformer.{k}": v
        for k, v in get_peft_model_state_dict(pipe.transformer, adapter_name="gal").items()
    }
    original = FAMILY.kohya_state_dict(state, {"transformer": (alpha, rank)})
    back = _convert_non_diffusers_krea2_lora_to_diffusers(dict(original))
    assert set(back) == set(state) and len(state) == 2 * 36  # 36 adapted modules on the tiny model
    for key, value in state.items():
        scale = alpha / rank if "lora_B" in key else 1.0
        torch.testing.assert_close(back[key], value * scale)
    with pytest.raises(ValueError, match="no Krea 2 original name"):
        FAMILY.kohya_state_dict({"transformer.rotary_emb.x.lora_A.weight": torch.zeros(1)}, {})


def test_block_swap_on_krea2_trains_the_same_adapter(reference_files):
    block_swap_trains_the_same_adapter(reference_files, MODEL, 2)


def test_resume_after_a_cancel_mid_generation(finished):
    resumed_where_it_stopped(finished)


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path):
    killed_cli_run_resumes(tmp_path, MODEL)
