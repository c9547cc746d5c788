"""Z-Image: detection, the script's loss, a 2-round GAL run on the tiny model, resume after a kill, and the
exports — diffusers' load_lora_weights redraws the run's images in a fresh process, ComfyUI's own LoRA code
maps every key of the ComfyUI file (0 dropped) to ΔW = B·A·alpha/r per module."""

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

MODEL = "tiny-zimage"
FAMILY = families.get("zimage")
CPU = torch.device("cpu")


def zimage_config(**gal):
    config = tiny_config(**gal)
    config.model = MODEL
    config.train.learning_rate = 1e-2  # 6 steps at 1e-3 barely move the tiny model's images
    config.train.alpha = 2.0 * config.train.rank  # alpha != rank: the exports must carry the scale
    return config


finished = shared_run_fixture(
    MODEL, zimage_config().train.learning_rate, zimage_config().train.alpha
)  # alpha = 2r


# -- detection ----------------------------------------------------------------------------------------


def test_zimage_is_detected_from_its_folder_and_its_single_file_keys(tmp_path):
    family = families.get("zimage")
    pipe = family.build_tiny()
    pipe.save_pretrained(tmp_path / "z")
    assert families.detect(tmp_path / "z").name == "zimage"
    comfy_keys = ["layers.0.attention.qkv.weight", "noise_refiner.0.attention.qkv.weight",
                  "context_refiner.0.attention.out.weight", "cap_embedder.1.weight"]  # fmt: skip
    assert families.detect_keys([f"model.diffusion_model.{k}" for k in comfy_keys]).name == "zimage"
    assert families.detect_keys(list(pipe.transformer.state_dict())).name == "zimage"  # diffusers layout
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "model_index.json").write_text(json.dumps({"_class_name": "ZImageOmniPipeline"}))
    with pytest.raises(ValueError, match="Omni"):
        families.detect(tmp_path / "e")


def test_tiny_zimage_is_the_same_in_every_build():
    a, b = families.get("zimage").build_tiny(), families.get("zimage").build_tiny()
    for part in ("transformer", "text_encoder", "vae"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    assert all(torch.isfinite(v).all() for v in a.transformer.state_dict().values())
    # The chat template and the tokenizer put the prompt's words in as whole tokens.
    text = a.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a <sks> star"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\na <sks> star<|im_end|>\n<|im_start|>assistant\n"


# -- training -----------------------------------------------------------------------------------------


def test_zimage_loss_is_the_scripts_and_training_lowers_it(reference_files):
    """The loss equals the script's arithmetic (negated prediction vs ε − x), and 8 steps on a fixed
    batch lower it."""
    pipe = load_pipeline(MODEL, CPU, torch.float32)
    family = families.get("zimage")
    cfg = zimage_config().train
    cond = family.encode(pipe, ["a <sks> star", "a photo of a <sks> star on the beach at night"], 32)
    assert cond["lengths"].tolist()[0] < cond["lengths"].tolist()[1]  # variable lengths survive the cache
    latents = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    scheduler = family.noise_scheduler(pipe)
    loss = family.per_sample_loss(
        pipe, scheduler, latents, cond, torch.Generator().manual_seed(5), cfg, False
    )
    # The same by hand, from the same draws.
    d = family.flow_draw(scheduler, latents, cond, torch.Generator().manual_seed(5), cfg, None)
    embeds = [e[:n] for e, n in zip(cond["embeds"], cond["lengths"])]
    with torch.no_grad():
        out = pipe.transformer(list(d.noisy.unsqueeze(2).unbind(0)), (1000 - d.timesteps) / 1000, embeds)[0]
    by_hand = ((-torch.stack(out).squeeze(2) - (d.noise - latents)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss.detach(), by_hand)

    examples = [
        TrainExample(Image.open(p).convert("RGB"), "a <sks> star on stairs", 1.0) for p in reference_files
    ]
    cfg.steps, cfg.batch_size = 12, 2
    result = train_lora(pipe, examples, cfg, resolution=32, seed=0)
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4]), result.losses


# -- the GAL loop -------------------------------------------------------------------------------------


def test_two_round_gal_run(finished):
    check_two_rounds(finished.studio, finished.run_id, finished.config, families.get("zimage"))


def test_resume_after_a_cancel_mid_generation(finished):
    resumed_where_it_stopped(finished)


@pytest.mark.slow
def test_killed_zimage_cli_run_resumes(tmp_path):
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
    missing = comfy_shim.available("zimage_keymap")
    if missing:
        pytest.skip(missing)
    c = FAMILY.build_tiny().transformer.config
    unet_config = {"n_layers": c.n_layers, "dim": c.dim, "n_refiner_layers": c.n_refiner_layers}
    return comfy_shim.check_file(
        FAMILY, "zimage_keymap", "z_image_to_diffusers", unet_config, lora, trained, scale
    )


def test_comfyui_maps_every_key_at_the_trained_strength(finished, tmp_path):
    """ComfyUI's load_lora + calculate_weight (its own code) on the exported ComfyUI file: 0 keys dropped,
    and each module's ΔW (slices of the fused qkv included) equals B·A·alpha/r of the trained adapter."""
    lora, trained, scale = comfy_shim.exported_and_trained(finished, tmp_path / "export")
    alphas = {k: float(v) for k, v in lora.items() if k.endswith(".alpha")}
    # alpha/r folded into lora_B: the file's alpha is r (scale 1)
    assert alphas and set(alphas.values()) == {finished.config.train.rank}
    modules = _comfy_check(lora, trained, scale)
    tr = FAMILY.build_tiny().transformer
    assert len(modules) == 4 * (tr.config.n_layers + 2 * tr.config.n_refiner_layers)  # the script's targets


@pytest.mark.parametrize("alpha", [4.0, 12.0])
def test_comfyui_file_loads_at_alpha_over_rank(alpha):
    """alpha = r and alpha ≠ r: the ComfyUI file's ΔW in ComfyUI's own maths is B·A·alpha/r per module."""
    rank = 4
    _, state = random_adapter_state(FAMILY, rank, alpha)
    lora = FAMILY.kohya_state_dict(state, {"transformer": (alpha, rank)})
    tr = FAMILY.build_tiny().transformer
    assert len(_comfy_check(lora, state, alpha / rank)) == 4 * (
        tr.config.n_layers + 2 * tr.config.n_refiner_layers
    )
