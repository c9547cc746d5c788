"""FLUX.2 (klein; dev shares the family): detection, the scripts' loss, a 2-round GAL run on the tiny
model, resume after a kill, and the exports — diffusers' load_lora_weights redraws the run's images in a
fresh process, ComfyUI's own LoRA code maps every key of the ComfyUI file (0 dropped) to
ΔW = B·A·alpha/r per module."""

import json

import comfy_shim
import numpy as np
import pytest
import torch
from conftest import tiny_config
from family_checks import (
    check_two_rounds,
    killed_cli_run_resumes,
    random_adapter_state,
    replay_in_fresh_process,
    resumed_where_it_stopped,
    shared_run_fixture,
)
from PIL import Image

from gal import families
from gal.models import load_pipeline
from gal.training import TrainExample, train_lora

MODEL = "tiny-flux2"
FAMILY = families.get("flux2")
CPU = torch.device("cpu")


def flux2_config(**gal):
    config = tiny_config(**gal)
    config.model = MODEL
    config.train.learning_rate = 3e-2  # 6 steps at 1e-3 (or 1e-2) barely move the tiny model's images
    config.train.alpha = 2.0 * config.train.rank  # alpha != rank: the exports must carry the scale
    return config


finished = shared_run_fixture(
    MODEL, flux2_config().train.learning_rate, flux2_config().train.alpha
)  # alpha = 2r


# -- detection ----------------------------------------------------------------------------------------


def test_flux2_is_detected_from_its_folder_and_its_single_file_keys(tmp_path):
    family = families.get("flux2")
    pipe = family.build_tiny()
    pipe.save_pretrained(tmp_path / "k")
    assert families.detect(tmp_path / "k").name == "flux2"
    bfl = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight",
           "double_stream_modulation_img.lin.weight", "img_in.weight"]  # fmt: skip
    assert families.detect_keys([f"model.diffusion_model.{k}" for k in bfl]).name == "flux2"
    assert families.detect_keys(list(pipe.transformer.state_dict())).name == "flux2"  # diffusers layout
    flux1 = ["double_blocks.0.img_attn.qkv.weight", "double_blocks.0.img_mod.lin.weight", "img_in.weight"]
    assert families.detect_keys(flux1).name == "flux"  # FLUX.1 stays FLUX.1
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinKVPipeline"}))
    with pytest.raises(ValueError, match="KV"):
        families.detect(tmp_path / "e")


def test_tiny_flux2_is_the_same_in_every_build():
    a, b = families.get("flux2").build_tiny(), families.get("flux2").build_tiny()
    for part in ("transformer", "text_encoder", "vae"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    assert all(torch.isfinite(v).all() for v in a.transformer.state_dict().values())
    # The chat template and the tokenizer put the prompt's words in as whole tokens.
    text = a.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a <sks> star"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\na <sks> star<|im_end|>\n<|im_start|>assistant\n"
    assert a.vae.bn.running_var.min() >= 0.5  # a non-identity BatchNorm: the normalisation is exercised


# -- training -----------------------------------------------------------------------------------------


def test_flux2_loss_is_the_scripts_and_training_lowers_it(reference_files):
    """The loss equals the script's arithmetic (patchify, BatchNorm normalisation, packed tokens and ids,
    unpack, ε − x), and 12 steps on the references lower it."""
    pipe = load_pipeline(MODEL, CPU, torch.float32)
    family = families.get("flux2")
    cfg = flux2_config().train
    cond = family.encode(pipe, ["a <sks> star", "a photo of a <sks> star on the beach at night"], 32)
    assert cond["embeds"].shape == (2, 64, 48)  # 3 tapped layers x hidden 16, padded to 64 tokens
    latents = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    scheduler = family.noise_scheduler(pipe)
    loss = family.per_sample_loss(
        pipe, scheduler, latents, cond, torch.Generator().manual_seed(5), cfg, False
    )
    # The same by hand, as train_dreambooth_lora_flux2_klein.py writes it.
    P = type(pipe)
    x = P._patchify_latents(latents)
    bn = pipe.vae.bn
    x = (x - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 1e-4)
    d = family.flow_draw(scheduler, x, cond, torch.Generator().manual_seed(5), cfg, None)
    ids = P._prepare_latent_ids(x)
    packed = P._pack_latents(d.noisy)
    with torch.no_grad():
        out = pipe.transformer(
            hidden_states=packed,
            timestep=d.timesteps / 1000,
            guidance=None,
            encoder_hidden_states=cond["embeds"],
            txt_ids=P._prepare_text_ids(cond["embeds"]),
            img_ids=ids,
            return_dict=False,
        )[0]
    pred = P._unpack_latents_with_ids(out[:, : packed.size(1)], ids)
    by_hand = ((pred - (d.noise - x)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss.detach(), by_hand)

    examples = [
        TrainExample(Image.open(p).convert("RGB"), "a <sks> star on stairs", 1.0) for p in reference_files
    ]
    cfg.steps, cfg.batch_size = 12, 2
    result = train_lora(pipe, examples, cfg, resolution=32, seed=0)
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4]), result.losses


# -- the GAL loop -------------------------------------------------------------------------------------


def test_two_round_gal_run(finished):
    check_two_rounds(finished.studio, finished.run_id, finished.config, families.get("flux2"))


def test_resume_after_a_cancel_mid_generation(finished):
    resumed_where_it_stopped(finished)


@pytest.mark.slow
def test_killed_flux2_cli_run_resumes(tmp_path):
    killed_cli_run_resumes(tmp_path, MODEL)


# -- exports ------------------------------------------------------------------------------------------


def _export(studio, run_id, out):
    return studio.export(run_id, out, ("diffusers", "kohya"))


def test_exports_redraw_the_runs_images_in_a_fresh_process(finished, tmp_path):
    out = tmp_path / "export"
    written = _export(finished.studio, finished.run_id, out)
    weights = {"diffusers": written["diffusers"].name, "comfy": written["kohya"].name}
    replay_in_fresh_process(finished.studio, finished.run_id, finished.config, out, weights)


def _comfy_check(lora, trained, scale):
    missing = comfy_shim.available("flux2_keymap")
    if missing:
        pytest.skip(missing)
    c = FAMILY.build_tiny().transformer.config
    unet_config = {
        "depth": c.num_layers,
        "depth_single_blocks": c.num_single_layers,
        "hidden_size": c.num_attention_heads * c.attention_head_dim,
    }
    return comfy_shim.check_file(
        FAMILY, "flux2_keymap", "flux_to_diffusers", unet_config, lora, trained, scale
    )


def test_comfyui_maps_every_key_at_the_trained_strength(finished, tmp_path):
    """ComfyUI's load_lora + calculate_weight (its own code) on the exported ComfyUI file: 0 keys dropped,
    and each module's ΔW (slices of the fused qkv included) equals B·A·alpha/r of the trained adapter."""
    lora, trained, scale = comfy_shim.exported_and_trained(finished, tmp_path / "export")
    assert not any(k.endswith(".alpha") for k in lora)  # alpha folded into lora_B: scale 1 everywhere
    modules = _comfy_check(lora, trained, scale)
    tr = FAMILY.build_tiny().transformer
    assert len(modules) == 4 * tr.config.num_layers + 2 * tr.config.num_single_layers  # the script's targets


@pytest.mark.parametrize("alpha", [4.0, 12.0])
def test_comfyui_file_loads_at_alpha_over_rank(alpha):
    """alpha = r and alpha ≠ r: the ComfyUI file's ΔW in ComfyUI's own maths is B·A·alpha/r per module."""
    rank = 4
    _, state = random_adapter_state(FAMILY, rank, alpha)
    lora = FAMILY.kohya_state_dict(state, {"transformer": (alpha, rank)})
    tr = FAMILY.build_tiny().transformer
    assert (
        len(_comfy_check(lora, state, alpha / rank))
        == 4 * tr.config.num_layers + 2 * tr.config.num_single_layers
    )


def test_flux2_dev_trains_with_its_guidance_and_reloads_to_the_same_images(reference_files, tmp_path):
    """FLUX.2 dev (Flux2Pipeline: Mistral-3 encoder, Pixtral processor, guidance embedding) through the
    same family: the loss feeds the distilled guidance, training lowers it, the saved LoRA changes the
    images and a freshly built dev pipeline loads it back to the same images."""
    from gal.config import GenerateConfig
    from gal.generation import generate
    from gal.training import save_adapter

    family = families.get("flux2")
    pipe = family.build_tiny_dev()
    assert type(pipe).__name__ == "Flux2Pipeline" and pipe.transformer.config.guidance_embeds
    cond = family.encode(pipe, ["a <sks> star", "a dog"], 32)
    assert (
        cond["embeds"][0] - cond["embeds"][1]
    ).abs().max() > 0  # the system prompt left room for the prompt
    cfg = flux2_config().train
    calls = []
    hook = pipe.transformer.time_guidance_embed.register_forward_hook(lambda m, a, o: calls.append(a))
    examples = [
        TrainExample(Image.open(p).convert("RGB"), "a <sks> star on stairs", 1.0) for p in reference_files
    ]
    cfg.steps, cfg.batch_size = 12, 2
    result = train_lora(pipe, examples, cfg, resolution=32, seed=0)
    hook.remove()
    assert calls and calls[0][1] is not None  # guidance went in
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4]), result.losses
    gen = GenerateConfig(steps=3, guidance_scale=4.0, batch_size=2)
    trained = generate(pipe, ["a <sks> star on grass"] * 2, [1, 2], gen, resolution=32)
    save_adapter(pipe, tmp_path / "lora", cfg)
    fresh = family.build_tiny_dev()
    base = generate(fresh, ["a <sks> star on grass"] * 2, [1, 2], gen, resolution=32)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    reloaded = generate(fresh, ["a <sks> star on grass"] * 2, [1, 2], gen, resolution=32)
    for a, b, c in zip(trained, reloaded, base):
        a, b, c = (np.asarray(x, np.float32) for x in (a, b, c))
        assert np.abs(a - b).max() <= 1.0
        assert np.abs(a - c).mean() > 0.5
