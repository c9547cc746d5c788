"""Qwen-Image (gal/families/qwenimage.py) on tiny-qwenimage: detection, the template's token count, a 2-round
GAL run, resume, exports reloaded in a fresh process, ComfyUI's own key map and strength, block swap."""

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
from gal.config import GenerateConfig
from gal.families.qwenimage import QWEN_IMAGE_TARGETS, template_tokens
from gal.models import load_pipeline, model_family

MODEL = "tiny-qwenimage"
FAMILY = families.get("qwenimage")


finished = shared_run_fixture(MODEL, lr=5e-2)


def test_detected_from_model_index_and_single_file_keys(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    assert families.detect(tmp_path / "m") is FAMILY and model_family(MODEL) is FAMILY
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPipeline"}))
    with pytest.raises(ValueError, match="Qwen-Image-Edit"):
        families.detect(tmp_path / "e")
    keys = {"model.diffusion_model.txt_norm.weight": (2,), "model.diffusion_model.img_in.weight": (2, 64),
            "model.diffusion_model.transformer_blocks.0.img_mod.1.weight": (2, 2)}  # fmt: skip
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(tmp_path / "q.safetensors"))
    assert families.detect(tmp_path / "q.safetensors") is FAMILY


def test_template_prefix_is_the_34_tokens_the_pipeline_drops_and_prompts_stay_whole():
    pipe = FAMILY.build_tiny()
    assert (
        template_tokens(pipe.tokenizer, pipe.prompt_template_encode)
        == 34
        == pipe.prompt_template_encode_start_idx
    )
    cond = FAMILY.encode(pipe, ["a <sks> star", "a star on grass under the night sky"], 32)
    prompt_tokens = [
        len(pipe.tokenizer(p).input_ids) for p in ("a <sks> star", "a star on grass under the night sky")
    ]
    # kept: the prompt + "<|im_end|>\n<|im_start|>assistant\n" (5 tokens), nothing of the system text
    assert cond["mask"].sum(1).tolist() == [n + 5 for n in prompt_tokens]
    assert cond["embeds"].shape[:2] == cond["mask"].shape


def test_defaults_cfg_and_memory_preset():
    d = FAMILY.defaults
    assert (d.learning_rate, d.steps, d.guidance_scale, list(d.target_modules)) == (
        1e-4,
        50,
        4.0,
        QWEN_IMAGE_TARGETS,
    )
    kwargs = FAMILY.pipe_kwargs(GenerateConfig(steps=2, guidance_scale=4.0), 2)
    assert kwargs["true_cfg_scale"] == 4.0 and kwargs["negative_prompt"] == [" ", " "]
    assert FAMILY.preset_24gb["blocks_to_swap"] == 16 and FAMILY.preset_24gb["quantize_base"] == "fp8"
    pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32)
    assert len(blockswap.swappable_blocks(pipe.transformer)) == 2


def test_two_round_gal_run_and_its_exports_reload_in_a_fresh_process(finished, tmp_path):
    """``gal export`` of the run: the diffusers LoRA and the ComfyUI file (``diffusion_model.*``, alpha/r
    folded) both reload with diffusers' ``load_lora_weights`` in a fresh process to the run's own images."""
    studio, run_id, config = finished.studio, finished.run_id, finished.config
    check_two_rounds(studio, run_id, config, FAMILY)
    out = tmp_path / "export"
    written = studio.export(run_id, out, ("diffusers", "kohya"))
    with safe_open(str(written["kohya"]), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == (
        "qwen_image",
        "qwen-image/lora",
    )
    replay_in_fresh_process(
        studio,
        run_id,
        config,
        out,
        {"diffusers": written["diffusers"].name, "comfyui": written["kohya"].name},
    )


def _comfy_qwen(comfy):
    import comfy.supported_models

    uc = dict(image_model="qwen_image", patch_size=2, in_channels=16, out_channels=4, num_layers=2,
              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
              axes_dims_rope=(8, 4, 4))  # fmt: skip
    return comfy.supported_models.QwenImage(uc).get_model({})


@pytest.mark.parametrize("alpha", [4.0, 12.0])
def test_comfyui_key_map_takes_every_key_at_the_adapters_strength(alpha):
    """ComfyUI's QwenImage key map names the model's modules as diffusers does: the folded file loads with
    0 keys dropped and ΔW = B·A·alpha/r per module, at alpha = r and alpha ≠ r."""
    c = comfy()
    model = _comfy_qwen(c)
    rank = 4
    pipe, state = random_adapter_state(FAMILY, rank, alpha)
    expected = {}
    for key, a in state.items():
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            expected[f"diffusion_model.{module}.weight"] = (
                state[key.replace("lora_A", "lora_B")] @ a * (alpha / rank)
            )
    folded = FAMILY.kohya_state_dict(state, {"transformer": (alpha, rank)})
    assert (
        comfy_check(c, model, folded, expected) == len(expected) == 2 * 4
    )  # to_q, to_k, to_v, to_out.0 per block
    if alpha == rank:  # the diffusers file itself also maps (ComfyUI reads no alpha metadata)
        assert comfy_check(c, model, state, expected) == len(expected)


def test_block_swap_on_qwenimage_trains_the_same_adapter(reference_files):
    block_swap_trains_the_same_adapter(reference_files, MODEL, 2)


def test_resume_after_a_cancel_mid_generation(finished):
    resumed_where_it_stopped(finished)


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path):
    killed_cli_run_resumes(tmp_path, MODEL)
