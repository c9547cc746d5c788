"""HiDream-I1 (gal/families/hidream.py) on tiny-hidream: detection, the script's prompt encoding (four
encoders, Llama's layers per block) and loss (the prediction negated, the MoE's inference path), a 2-round GAL
run with a cancel and resume, the diffusers and ComfyUI files reloaded in a fresh process, ComfyUI's own key
map and strength on ComfyUI's own HiDream model, block swap over double- and single-stream blocks."""

import json
import shutil

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
from gal.config import TrainConfig
from gal.families.hidream import HIDREAM_TARGETS
from gal.models import load_pipeline, model_family

MODEL = "tiny-hidream"
FAMILY = families.get("hidream")


finished = shared_run_fixture(MODEL, lr=5e-2, alpha=8.0)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(MODEL, torch.device("cpu"), torch.float32)


def test_detected_from_model_index_and_single_file_keys(tmp_path, pipe):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "HiDreamImagePipeline"}))
    assert families.detect(tmp_path / "m") is FAMILY and model_family(MODEL) is FAMILY
    keys = list(pipe.transformer.state_dict())
    assert families.detect_keys(keys) is FAMILY
    assert families.detect_keys([f"model.diffusion_model.{k}" for k in keys]) is FAMILY
    shapes = {
        "double_stream_blocks.0.block.attn1.to_q.weight": (2, 2),
        "caption_projection.0.linear.weight": (2, 2),
    }
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(tmp_path / "h.safetensors"))
    assert families.detect(tmp_path / "h.safetensors") is FAMILY


def test_a_folder_without_llama_loads_with_the_llama_the_script_loads(tmp_path, monkeypatch):
    """HiDream-I1's repositories ship no Llama: ``load_pipeline`` adds Llama-3.1 (``GAL_HIDREAM_LLAMA``, here
    the tiny one saved alone; loaded in bf16 as the script does, then in the pipeline's dtype), and the
    loaded pipeline trains on the script's MoE path and draws at its own size what the tiny model draws."""
    import numpy as np

    from gal.config import GenerateConfig
    from gal.generation import generate

    tiny = FAMILY.build_tiny()
    tiny.save_pretrained(tmp_path / "hidream")
    tiny.text_encoder_4.save_pretrained(tmp_path / "llama")
    tiny.tokenizer_4.save_pretrained(tmp_path / "llama")
    for part in ("text_encoder_4", "tokenizer_4"):
        shutil.rmtree(tmp_path / "hidream" / part)
    index = json.loads((tmp_path / "hidream" / "model_index.json").read_text())
    index.update(text_encoder_4=[None, None], tokenizer_4=[None, None])
    (tmp_path / "hidream" / "model_index.json").write_text(json.dumps(index))
    monkeypatch.setenv("GAL_HIDREAM_LLAMA", str(tmp_path / "llama"))
    loaded = load_pipeline(str(tmp_path / "hidream"), torch.device("cpu"), torch.float32)
    assert loaded.text_encoder_4.dtype == torch.float32 and loaded.transformer.config.force_inference_output
    assert loaded.default_sample_size == 16 and FAMILY.native_resolution(loaded) == 32
    cfg = GenerateConfig(steps=3, guidance_scale=5.0)
    a, b = (generate(p, ["a <sks> star"], [1], cfg, resolution=32)[0] for p in (tiny, loaded))
    assert b.size == (32, 32)
    assert np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max() <= 3.0  # Llama went via bf16


def test_prompts_are_the_pipelines_four_encoders(pipe):
    """T5 and every Llama layer padded to ``max_sequence_length`` (batch first), the two CLIPs' pooled
    projections side by side: what ``encode_prompt`` gives the pipeline's own draws."""
    prompts = ["a <sks> star", "a photo of a <sks> star on the beach at night"]
    cond = FAMILY.encode(pipe, prompts, 32)
    n = FAMILY.max_sequence_length(pipe)
    layers = pipe.text_encoder_4.config.num_hidden_layers
    assert cond["t5"].shape == (2, n, 32) and cond["llama3"].shape == (2, layers, n, 16)
    assert cond["pooled"].shape == (2, 64)
    t5, _, llama, _, pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                                    max_sequence_length=n)  # fmt: skip
    torch.testing.assert_close(cond["llama3"], llama.transpose(0, 1))
    torch.testing.assert_close(cond["t5"], t5)
    ids = pipe.tokenizer_4(prompts[0]).input_ids
    assert ids[0] == pipe.tokenizer_4.bos_token_id  # Llama 3.1's <|begin_of_text|> first
    with torch.no_grad():
        hidden = pipe.text_encoder_4(torch.tensor([ids]), output_hidden_states=True).hidden_states
    # Llama's layer outputs (not its embeddings), each a different layer
    torch.testing.assert_close(cond["llama3"][0, :, : len(ids)], torch.stack(hidden[1:])[:, 0])
    assert not torch.allclose(cond["llama3"][:, 0], cond["llama3"][:, 1])
    clip = pipe.text_encoder(pipe.tokenizer(prompts, padding="max_length", max_length=n,
                                            return_tensors="pt").input_ids).text_embeds  # fmt: skip
    torch.testing.assert_close(cond["pooled"][:, :32], clip)


def test_loss_is_the_scripts(pipe):
    """``(1 - σ) x + σ ε``, the scheduler's timestep, the prediction negated, target ``ε - x`` (shift-3
    table), with the transformer in training mode on the MoE's inference path (``force_inference_output``)."""
    cfg = TrainConfig(steps=12, learning_rate=1e-2, batch_size=2)
    cond = FAMILY.encode(pipe, ["a <sks> star", "a photo of a <sks> star on the beach at night"], 32)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    scheduler = FAMILY.noise_scheduler(pipe)
    assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and scheduler.config.shift == 3.0
    assert pipe.transformer.config.force_inference_output
    pipe.transformer.train()
    try:
        loss = FAMILY.per_sample_loss(
            pipe, scheduler, latents, cond, torch.Generator().manual_seed(5), cfg, False
        )
        d = FAMILY.flow_draw(scheduler, latents, cond, torch.Generator().manual_seed(5), cfg, None)
        with torch.no_grad():
            noisy = (1 - d.sigmas) * latents + d.sigmas * d.noise
            pred = pipe.transformer(
                hidden_states=noisy, timesteps=d.timesteps, encoder_hidden_states_t5=cond["t5"],
                encoder_hidden_states_llama3=cond["llama3"].transpose(0, 1), pooled_embeds=cond["pooled"],
                return_dict=False,
            )[0]  # fmt: skip
    finally:
        pipe.transformer.eval()
    assert ((d.timesteps > 1) & (d.timesteps <= 1000)).all() and pred.shape == latents.shape
    expected = ((-pred - (d.noise - latents)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss.detach(), expected)
    assert not torch.allclose(loss.detach(), ((pred - (d.noise - latents)) ** 2).mean(dim=(1, 2, 3)))


def test_aspect_buckets_train_below_the_token_cap_and_are_refused_above_it(pipe):
    """A non-square latent is padded to ``max_seq`` tokens: buckets (up to 1.2 × the native area) beyond it
    are refused by name before training; below the native size they train."""
    from PIL import Image

    from gal.adapters import remove_adapter
    from gal.training import TrainExample, train_lora

    images = [Image.new("RGB", size, color) for size, color in (((48, 32), "red"), ((32, 48), "green"))]
    examples = [TrainExample(im, "a <sks> star", 1.0) for im in images]
    cfg = TrainConfig(steps=2, batch_size=2, bucketing=True)
    with pytest.raises(ValueError, match=r"at most 64 image tokens .* 40x28 bucket has 70"):
        train_lora(pipe, examples, cfg, resolution=32, seed=0)
    result = train_lora(pipe, examples, cfg, resolution=24, seed=0)
    assert len(result.losses) == 2 and all(loss > 0 for loss in result.losses)
    remove_adapter(pipe)


def test_defaults_targets_samplers_and_blocks():
    d = FAMILY.defaults
    assert (d.resolution, d.learning_rate, d.rank, d.steps, d.guidance_scale) == (1024, 1e-4, 4, 50, 5.0)
    assert list(d.target_modules) == HIDREAM_TARGETS
    pipe, state = random_adapter_state(FAMILY, 4, 4.0)
    modules = sorted({k.removeprefix("transformer.").rpartition(".lora_")[0] for k in state})
    # the image stream's q/k/v/out of the 2 double and 2 single blocks; no text-stream (*_t) projection
    assert len(modules) == 4 * 4 and all(m.rpartition(".")[2] in HIDREAM_TARGETS for m in modules)
    blocks = blockswap.swappable_blocks(pipe.transformer)
    assert blocks == [*pipe.transformer.double_stream_blocks, *pipe.transformer.single_stream_blocks]
    FAMILY.set_scheduler(pipe, "flow-euler")
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.scheduler.config.shift == 3
    FAMILY.set_scheduler(pipe, None)  # keeps what the model ships (Dev's and Fast's Euler)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    FAMILY.set_scheduler(pipe, "unipc")
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.flow_shift == 3
    with pytest.raises(ValueError, match="unipc"):
        FAMILY.set_scheduler(pipe, "ddim")


def test_two_round_gal_run_and_its_exports_reload_in_a_fresh_process(finished, tmp_path):
    """``gal export``: the diffusers LoRA and the ComfyUI file (``diffusion_model.*``, alpha folded), each
    reloaded by diffusers' ``load_lora_weights`` in a fresh process to the run's own images; the ComfyUI
    file carries no kohya base-model version or network module (kohya defines none for HiDream)."""
    studio, run_id, config = finished.studio, finished.run_id, finished.config
    check_two_rounds(studio, run_id, config, FAMILY)
    out = tmp_path / "export"
    written = studio.export(run_id, out, ("diffusers", "kohya"))
    with safe_open(str(written["kohya"]), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.startswith("diffusion_model.") and ".lora_" in k for k in keys)
    assert "ss_base_model_version" not in meta and "ss_network_module" not in meta
    assert meta["modelspec.architecture"] == "hidream-i1/lora"
    assert meta["ss_network_dim"] == str(config.train.rank)
    replay_in_fresh_process(
        studio,
        run_id,
        config,
        out,
        {"diffusers": written["diffusers"].name, "kohya": written["kohya"].name},
    )


def _comfy_hidream(comfy, transformer):
    """ComfyUI's own HiDream model (``supported_models.HiDream``) at the tiny transformer's config."""
    import comfy.supported_models

    keys = ("patch_size", "in_channels", "out_channels", "num_layers", "num_single_layers",
            "attention_head_dim", "num_attention_heads", "caption_channels", "text_emb_dim",
            "num_routed_experts", "num_activated_experts", "axes_dims_rope", "max_resolution",
            "llama_layers")  # fmt: skip
    unet_config = {"image_model": "hidream", **{k: transformer.config[k] for k in keys}}
    return comfy.supported_models.HiDream(unet_config).get_model({})


@pytest.mark.parametrize("alpha", [4.0, 12.0])
def test_comfyui_key_map_takes_every_key_at_the_adapters_strength(alpha):
    """ComfyUI's HiDream model has diffusers' parameter names; its key map takes every key of our ComfyUI
    file (alpha = r and alpha ≠ r) and of the diffusers file (alpha = r: ComfyUI reads no header), and its
    own weight maths adds ΔW = B·A·alpha/r to each adapted weight."""
    c = comfy()
    rank = 4
    pipe, state = random_adapter_state(FAMILY, rank, alpha)
    model = _comfy_hidream(c, pipe.transformer)
    ours = {k.replace(".base_layer.", ".") for k in pipe.transformer.state_dict() if "lora_" not in k}
    sd = model.state_dict()
    theirs = {k.removeprefix("diffusion_model.") for k in sd if k.startswith("diffusion_model.")}
    assert ours == theirs and len(ours) > 100
    expected = {}
    for key, a in state.items():
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            b = state[key.replace("lora_A", "lora_B")]
            expected[f"diffusion_model.{module}.weight"] = b @ a * (alpha / rank)
    kohya = FAMILY.kohya_state_dict(state, {"transformer": (alpha, rank)})
    assert comfy_check(c, model, kohya, expected) == len(expected) == 16
    if alpha == rank:
        assert comfy_check(c, model, state, expected) == len(expected)


def test_block_swap_on_hidream_trains_the_same_adapter(reference_files):
    """3 of 4 blocks swapped: a double-stream block and both single-stream blocks."""
    block_swap_trains_the_same_adapter(reference_files, MODEL, 3)


def test_the_24gb_presets_options_train_the_moe_transformer(reference_files):
    """The preset's int8 base (the experts' linears too; the router's weight is a bare parameter) with
    blocks swapped and checkpointing trains: finite losses, a LoRA that moved."""
    pytest.importorskip("torchao", reason="torchao not installed (pip install 'gal-studio[quant]')")
    from PIL import Image

    from gal.training import TrainExample, adapter_state, train_lora

    assert FAMILY.preset_24gb["quantize_base"] == "int8" and FAMILY.preset_24gb["blocks_to_swap"] > 0
    pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32)
    examples = [TrainExample(Image.open(p).convert("RGB"), "a <sks> star", 1.0) for p in reference_files[:2]]
    cfg = TrainConfig(steps=2, learning_rate=1e-2, batch_size=2, quantize_base="int8", blocks_to_swap=2,
                      gradient_checkpointing=True)  # fmt: skip
    result = train_lora(pipe, examples, cfg, resolution=32, seed=1)
    expert = pipe.transformer.single_stream_blocks[0].block.ff_i.experts[0]
    assert "Int8" in type(expert.w1.weight).__name__  # torchao's int8 tensor
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert any(v.abs().max() > 0 for k, v in adapter_state(pipe).items() if "lora_B" in k)


def test_resume_after_a_cancel_mid_generation(finished):
    resumed_where_it_stopped(finished)


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path):
    killed_cli_run_resumes(tmp_path, MODEL)
