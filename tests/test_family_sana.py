"""Sana (gal/families/sana.py) on tiny-sana: detection, the script's loss with the pipeline's complex human
instruction, a 2-round GAL run with a cancel and resume, the diffusers export reloaded in a fresh process,
block swap, ComfyUI's key map where its snapshot has one for Sana."""

import json

import pytest
import torch
from family_checks import (
    block_swap_trains_the_same_adapter,
    check_two_rounds,
    comfy,
    killed_cli_run_resumes,
    replay_in_fresh_process,
    resumed_where_it_stopped,
    shared_run_fixture,
)
from safetensors.torch import save_file

from gal import families
from gal.config import TrainConfig
from gal.families.sana import SANA_TARGETS, complex_human_instruction
from gal.models import load_pipeline, model_family

MODEL = "tiny-sana"
FAMILY = families.get("sana")


finished = shared_run_fixture(MODEL, lr=5e-2, alpha=8.0)


def test_detected_from_model_index_and_single_file_keys(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "SanaPipeline"}))
    assert families.detect(tmp_path / "m") is FAMILY and model_family(MODEL) is FAMILY
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "model_index.json").write_text(json.dumps({"_class_name": "SanaSprintPipeline"}))
    with pytest.raises(ValueError, match="Sana Sprint"):
        families.detect(tmp_path / "s")
    assert families.detect_keys(list(FAMILY.build_tiny().transformer.state_dict())) is FAMILY
    native = ["y_embedder.y_proj.fc1.weight", "blocks.0.attn.qkv.weight",
              "blocks.0.cross_attn.kv_linear.weight", "blocks.0.mlp.inverted_conv.conv.weight"]  # fmt: skip
    assert families.detect_keys([f"model.diffusion_model.{k}" for k in native]) is FAMILY
    keys = {
        "caption_projection.linear_1.weight": (2, 2),
        "transformer_blocks.0.ff.conv_inverted.weight": (2, 2),
    }
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(tmp_path / "s.safetensors"))
    assert families.detect(tmp_path / "s.safetensors") is FAMILY


def test_prompts_are_encoded_behind_the_pipelines_complex_human_instruction():
    """Training encodes what generation draws with: the pipeline's default instruction before the prompt,
    the last ``max_sequence_length - 1`` tokens kept with the attention mask (the prompt's length shows)."""
    pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32)
    prompts = ["a <sks> star", "a photo of a <sks> star on the beach at night"]
    cond = FAMILY.encode(pipe, prompts, 32)
    n = FAMILY.max_sequence_length(pipe)
    assert cond["embeds"].shape == (2, n, 16) and cond["mask"].shape == (2, n)
    assert cond["mask"].sum(1)[0] < cond["mask"].sum(1)[1]
    embeds, mask, _, _ = pipe.encode_prompt(prompts, False, max_sequence_length=n)  # no instruction
    assert not torch.allclose(embeds, cond["embeds"])
    with_it, _, _, _ = pipe.encode_prompt(
        prompts, False, max_sequence_length=n, complex_human_instruction=complex_human_instruction()
    )
    torch.testing.assert_close(with_it, cond["embeds"])


def test_loss_is_the_scripts():
    """``(1 - σ) x + σ ε``, timestep in 0..1000, target ``ε - x``: the loss equals the script's arithmetic
    from the same draws."""
    pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32)
    cfg = TrainConfig(steps=12, learning_rate=1e-2, batch_size=2)
    cond = FAMILY.encode(pipe, ["a <sks> star", "a photo of a <sks> star on the beach at night"], 32)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler = FAMILY.noise_scheduler(pipe)
    assert scheduler.config.shift == 1.0  # the script's FlowMatchEuler from Sana's DPM-Solver config
    loss = FAMILY.per_sample_loss(
        pipe, scheduler, latents, cond, torch.Generator().manual_seed(5), cfg, False
    )
    d = FAMILY.flow_draw(scheduler, latents, cond, torch.Generator().manual_seed(5), cfg, None)
    assert ((d.timesteps > 1) & (d.timesteps <= 1000)).all()
    with torch.no_grad():
        noisy = (1 - d.sigmas) * latents + d.sigmas * d.noise
        pred = pipe.transformer(
            noisy, encoder_hidden_states=cond["embeds"], encoder_attention_mask=cond["mask"],
            timestep=d.timesteps, return_dict=False,
        )[0]  # fmt: skip
    torch.testing.assert_close(loss.detach(), ((pred - (d.noise - latents)) ** 2).mean(dim=(1, 2, 3)))


def test_defaults_targets_and_samplers():
    d = FAMILY.defaults
    assert (d.learning_rate, d.rank, d.steps, d.guidance_scale) == (1e-4, 4, 20, 4.5)
    assert list(d.target_modules) == SANA_TARGETS
    pipe = FAMILY.build_tiny()
    FAMILY.set_scheduler(pipe, "flow-euler")
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.scheduler.config.shift == 3
    FAMILY.set_scheduler(pipe, None)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.flow_shift == 3
    with pytest.raises(ValueError, match="dpmsolver"):
        FAMILY.set_scheduler(pipe, "ddim")


def test_two_round_gal_run_and_its_export_reloads_in_a_fresh_process(finished, tmp_path):
    studio, run_id, config = finished.studio, finished.run_id, finished.config
    check_two_rounds(studio, run_id, config, FAMILY)
    out = tmp_path / "export"
    written = studio.export(run_id, out)  # the default formats: no kohya file, which nothing would load
    assert "kohya" not in written and [p.name for p in out.glob("*.safetensors")] == [
        written["diffusers"].name
    ]
    with pytest.raises(ValueError, match="no tool loads a kohya/ComfyUI-format LoRA of Sana"):
        studio.export(run_id, tmp_path / "kohya-only", ("kohya",))
    replay_in_fresh_process(studio, run_id, config, out, {"diffusers": written["diffusers"].name})


def test_comfyui_key_map():
    """ComfyUI's own key map, where its snapshot has a Sana model (none did when this family was added)."""
    import importlib

    c = comfy()
    supported_models = importlib.import_module("comfy.supported_models")
    if not any("sana" in name.lower() for name in dir(supported_models)):
        pytest.skip("ComfyUI's snapshot has no Sana model: no key map to check the ComfyUI file against")
    pytest.fail(f"ComfyUI at {c.__file__} now has a Sana model: check the ComfyUI file against its key map")


def test_block_swap_on_sana_trains_the_same_adapter(reference_files):
    block_swap_trains_the_same_adapter(reference_files, MODEL, 1)


def test_resume_after_a_cancel_mid_generation(finished):
    resumed_where_it_stopped(finished)


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path):
    killed_cli_run_resumes(tmp_path, MODEL)
