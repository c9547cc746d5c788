"""Ideogram 4 (gal/families/ideogram4.py) on tiny-ideogram4: detection and single-file loading, the script's
loss (and that trimming the text padding leaves it unchanged), the prompt enhancer never run, a 2-round GAL
run with a cancel and resume, both exports redrawn in a fresh process, the ComfyUI file's strength, block
swap, and ComfyUI's own key map where its transcription is present (.comfy/ideogram4_keymap.py)."""

import json

import pytest
import torch
from comfy_shim import apply, available, keymap_module
from family_checks import (
    block_swap_trains_the_same_adapter,
    check_two_rounds,
    killed_cli_run_resumes,
    random_adapter_state,
    replay_in_fresh_process,
    resumed_where_it_stopped,
    shared_run_fixture,
)
from safetensors.torch import load_file, save_file

from gal import families
from gal.config import GenerateConfig, TrainConfig
from gal.families.ideogram4 import IDEOGRAM4_TARGETS, diffusers_transformer_state, patchify
from gal.generation import generate
from gal.models import load_pipeline, model_family

MODEL = "tiny-ideogram4"
FAMILY = families.get("ideogram4")
PROMPTS = ["a <sks> star", "a photo of a <sks> star on the beach at night"]


finished = shared_run_fixture(MODEL, lr=5e-2, alpha=8.0)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(MODEL, torch.device("cpu"), torch.float32)


def _native_file(transformer) -> dict[str, torch.Tensor]:
    """The transformer's weights in ComfyUI's layout (comfy/ldm/ideogram4/model.py: fused qkv, ``o``)."""
    state, out = transformer.state_dict(), {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state[key.replace("to_q", p)] for p in ("to_q", "to_k", "to_v")]
            out["diffusion_model." + key.replace("to_q", "qkv")] = torch.cat(parts)
        else:
            out["diffusion_model." + key.replace("attention.to_out.0", "attention.o")] = value
    return out


def test_detected_from_model_index_and_single_file_keys(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "Ideogram4Pipeline"}))
    assert families.detect(tmp_path / "m") is FAMILY and model_family(MODEL) is FAMILY
    transformer = FAMILY.build_tiny().transformer
    assert families.detect_keys(list(transformer.state_dict())) is FAMILY  # diffusers layout
    native = _native_file(transformer)
    assert any(".attention.qkv." in k for k in native)
    save_file({k: v.contiguous() for k, v in native.items()}, str(tmp_path / "native.safetensors"))
    assert families.detect(tmp_path / "native.safetensors") is FAMILY  # ComfyUI's layout
    assert families.detect_keys([f"conditional_transformer.{k}" for k in transformer.state_dict()]) is FAMILY


def test_a_single_file_in_either_layout_loads_with_the_folders_other_parts(tmp_path):
    """A transformer file (ComfyUI's fused-qkv layout) with a diffusers folder: the conditional transformer
    comes from the file, everything else (the unconditional transformer included) from the folder."""
    folder = tmp_path / "folder"
    base = FAMILY.build_tiny(seed=0)
    base.save_pretrained(folder)
    other = FAMILY.build_tiny(seed=7).transformer  # different weights: the file must win
    save_file(_native_file(other), str(tmp_path / "t.safetensors"))
    loaded = FAMILY.load_single_file(str(tmp_path / "t.safetensors"), str(folder), torch.float32)
    for key, value in other.state_dict().items():
        torch.testing.assert_close(loaded.transformer.state_dict()[key], value, rtol=0, atol=0, msg=key)
    for key, value in base.unconditional_transformer.state_dict().items():
        torch.testing.assert_close(loaded.unconditional_transformer.state_dict()[key], value, rtol=0, atol=0)
    assert loaded.prompt_enhancer_head is None  # the LLM head is never loaded
    assert diffusers_transformer_state(_native_file(other)).keys() == other.state_dict().keys()


def test_prompts_are_the_pipelines_encoding_trimmed_to_the_longest(pipe):
    """``encode`` is the text part of the pipeline's own packed conditioning at the longest prompt's length
    (not 2048 columns of padding); the shorter prompt stays left-padded with its mask."""
    from diffusers.models.transformers.transformer_ideogram4 import LLM_TOKEN_INDICATOR

    cond = FAMILY.encode(pipe, PROMPTS, 32)
    n = FAMILY.max_sequence_length(pipe)
    embeds, _, _, indicator = pipe.encode_prompt(
        PROMPTS, grid_h=8, grid_w=8, max_sequence_length=n, device="cpu"
    )
    lengths = (indicator[:, :n] == LLM_TOKEN_INDICATOR).sum(1)
    t = int(lengths.max())
    assert cond["embeds"].shape == (2, t, 13 * 16) and t < n
    assert cond["mask"].sum(1).tolist() == lengths.tolist() and lengths[0] < lengths[1]
    assert cond["mask"][0, : t - int(lengths[0])].sum() == 0  # left padding, as the pipeline's
    # encoded at length t, not n: the same features up to float rounding of the masked attention
    torch.testing.assert_close(cond["embeds"], embeds[:, n - t : n], rtol=1e-5, atol=1e-6)
    assert t == max(FAMILY.prompt_tokens(pipe, p) for p in PROMPTS)


def test_trimming_the_padding_leaves_the_loss_unchanged(pipe):
    """Padding is its own attention segment and text positions count from the first real token: the loss
    at the pipeline's full padded length equals the trimmed one."""
    from diffusers.models.transformers.transformer_ideogram4 import LLM_TOKEN_INDICATOR

    n = FAMILY.max_sequence_length(pipe)
    embeds, _, _, indicator = pipe.encode_prompt(
        PROMPTS, grid_h=8, grid_w=8, max_sequence_length=n, device="cpu"
    )
    full = {"embeds": embeds[:, :n], "mask": (indicator[:, :n] == LLM_TOKEN_INDICATOR).long()}
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig()
    with torch.no_grad():
        trimmed = FAMILY.per_sample_loss(pipe, None, latents, FAMILY.encode(pipe, PROMPTS, 32),
                                         torch.Generator().manual_seed(5), cfg, False)  # fmt: skip
        padded = FAMILY.per_sample_loss(
            pipe, None, latents, full, torch.Generator().manual_seed(5), cfg, False
        )
    torch.testing.assert_close(trimmed, padded, rtol=1e-5, atol=1e-6)


def test_loss_is_the_scripts(pipe):
    """The script's arithmetic from the same draws: patchify + BatchNorm, σ = sigmoid(N(½·log(px/512²), 1.5))
    used directly, ``[zeros | (1-σ)x + σε]`` at model time ``1 - σ``, target ``x - ε`` on the image tokens."""
    import math

    from diffusers.models.transformers.transformer_ideogram4 import LLM_TOKEN_INDICATOR

    cfg = TrainConfig()
    cfg.flow.weighting_scheme, cfg.flow.logit_std = "logit_normal", 1.5  # the script's defaults
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    loss = FAMILY.per_sample_loss(pipe, None, latents, FAMILY.encode(pipe, PROMPTS, 32),
                                  torch.Generator().manual_seed(5), cfg, False)  # fmt: skip

    vae = pipe.vae
    x = patchify(latents)
    x = (x - vae.bn.running_mean.view(1, 1, -1)) / torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(x.shape, generator=g)
    mu = 0.0 + 0.5 * math.log(32 * 32 / 512**2)  # the pipeline's _resolution_aware_mu at 32 px
    sigmas = torch.sigmoid(torch.normal(mu, 1.5, (2,), generator=g)).view(2, 1, 1)
    n = FAMILY.max_sequence_length(pipe)
    embeds, position_ids, segment_ids, indicator = pipe.encode_prompt(
        PROMPTS, grid_h=8, grid_w=8, max_sequence_length=n, device="cpu"
    )
    assert (indicator[:, :n] == LLM_TOKEN_INDICATOR).any()
    packed = torch.cat([torch.zeros(2, n, x.shape[-1]), (1 - sigmas) * x + sigmas * noise], dim=1)
    with torch.no_grad():
        pred = pipe.transformer(
            hidden_states=packed, timestep=(1 - sigmas).view(2), encoder_hidden_states=embeds,
            position_ids=position_ids, segment_ids=segment_ids, indicator=indicator, return_dict=False,
        )[0][:, n:]  # fmt: skip
    script = ((pred - (x - noise)) ** 2).reshape(2, -1).mean(1)
    torch.testing.assert_close(loss.detach(), script, rtol=1e-5, atol=1e-6)


def test_defaults_targets_and_sampler():
    d = FAMILY.defaults
    assert (d.learning_rate, d.rank, d.steps, d.guidance_scale, d.resolution) == (1e-4, 16, 48, 7.0, 1024)
    assert IDEOGRAM4_TARGETS == ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"]
    assert list(d.target_modules) == IDEOGRAM4_TARGETS
    pipe = FAMILY.build_tiny()
    FAMILY.set_scheduler(pipe, None)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    with pytest.raises(ValueError, match="flow-euler"):
        FAMILY.set_scheduler(pipe, "ddim")
    assert FAMILY.load_kwargs() == {"prompt_enhancer_head": None}
    assert FAMILY.text_encoders(pipe) == [pipe.text_encoder, pipe.unconditional_transformer]


def test_generation_never_runs_the_prompt_enhancer(monkeypatch):
    """Even with an enhancer head attached, drawing passes ``prompt_upsampling=False``: the anchors' prompts
    are drawn as written (an LLM rewrite would change what GAL judges)."""
    from diffusers import Ideogram4PromptEnhancerHead

    pipe = FAMILY.build_tiny()
    pipe.register_modules(prompt_enhancer_head=Ideogram4PromptEnhancerHead(16, len(pipe.tokenizer)))
    calls = []
    monkeypatch.setattr(type(pipe), "upsample_prompt", lambda self, *a, **k: calls.append(a) or ["{}"])
    cfg = GenerateConfig(steps=2, guidance_scale=7.0)
    images = generate(pipe, ["a <sks> star"], [1], cfg, resolution=32)
    assert images[0].size == (32, 32) and calls == []
    assert FAMILY.call_kwargs(pipe)["prompt_upsampling"] is False
    pipe(["a <sks> star"], height=32, width=32, num_inference_steps=2, guidance_scale=7.0,
         guidance_schedule=None, prompt_upsampling=True)  # fmt: skip
    assert len(calls) == 1  # the patch sees a call when one is made: the check above can fail
    with pytest.raises(ValueError, match="no negative prompt"):
        generate(pipe, ["a"], [1], GenerateConfig(steps=2, negative_prompt="blurry"), resolution=32)


def test_a_folder_with_the_enhancer_head_loads_without_it(tmp_path):
    """A diffusers folder that ships the prompt enhancer's LM head: ``load_pipeline`` leaves it out
    (``load_kwargs``), so nothing can rewrite the prompts."""
    from diffusers import Ideogram4PromptEnhancerHead

    pipe = FAMILY.build_tiny()
    pipe.register_modules(prompt_enhancer_head=Ideogram4PromptEnhancerHead(16, len(pipe.tokenizer)))
    pipe.save_pretrained(tmp_path / "folder")
    assert (tmp_path / "folder" / "prompt_enhancer_head").is_dir()
    loaded = load_pipeline(str(tmp_path / "folder"), torch.device("cpu"), torch.float32)
    assert model_family(str(tmp_path / "folder")) is FAMILY and loaded.prompt_enhancer_head is None
    torch.testing.assert_close(loaded.transformer.state_dict(), pipe.transformer.state_dict(), rtol=0, atol=0)


def test_a_batch_split_across_processes_draws_what_one_process_draws(pipe):
    """``rows``: each process's slice gets the noise and σ it would get in one process."""
    cond = FAMILY.encode(pipe, PROMPTS + PROMPTS[:1], 32)
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    cfg = TrainConfig()
    with torch.no_grad():
        whole = FAMILY.per_sample_loss(
            pipe, None, latents, cond, torch.Generator().manual_seed(9), cfg, False
        )
        parts = [
            FAMILY.per_sample_loss(
                pipe, None, latents, cond, torch.Generator().manual_seed(9), cfg, False, rows
            )
            for rows in (slice(0, 2), slice(2, 3), slice(3, 3))
        ]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-6)
    assert len(parts[2]) == 0


def test_comfyui_file_has_the_adapters_strength_per_native_module():
    """The ComfyUI file, read as ComfyUI's LoRA patcher reads one (ΔW = up·down·alpha/rank per key): the
    fused qkv's thirds are the trained to_q/to_k/to_v ΔW, every other module its own, at alpha/r."""
    pipe, state = random_adapter_state(FAMILY, rank=4, alpha=8.0)
    lora = FAMILY.kohya_state_dict(state, {"transformer": (8.0, 4)})
    modules = {k.removesuffix(".lora_down.weight") for k in lora if k.endswith(".lora_down.weight")}
    for module in modules:
        down, up = lora[f"{module}.lora_down.weight"], lora[f"{module}.lora_up.weight"]
        delta = up @ down * float(lora[f"{module}.alpha"]) / down.shape[0]
        native = module.removeprefix("diffusion_model.")
        if native.endswith(".qkv"):
            base = native.removesuffix(".qkv")
            expect = torch.cat([_delta(state, f"{base}.to_{p}") for p in "qkv"]) * 2.0
        else:
            expect = _delta(state, native.replace("attention.o", "attention.to_out.0")) * 2.0
        torch.testing.assert_close(delta, expect, rtol=1e-5, atol=1e-6, msg=module)
    assert len(modules) == 2 * 5  # per block: qkv, o, w1, w2, w3
    with pytest.raises(ValueError, match="no ComfyUI Ideogram 4 name"):
        FAMILY.kohya_state_dict({"transformer.layers.0.attention.norm_q.lora_A.weight": torch.zeros(4, 8),
                                 "transformer.layers.0.attention.norm_q.lora_B.weight": torch.zeros(8, 4)},
                                {"transformer": (4.0, 4)})  # fmt: skip


def _delta(state, module):
    return state[f"transformer.{module}.lora_B.weight"] @ state[f"transformer.{module}.lora_A.weight"]


def test_two_round_gal_run_and_both_exports_redraw_it_in_a_fresh_process(finished, tmp_path):
    """The diffusers LoRA and the ComfyUI file (through diffusers' own Ideogram 4 importer, which reads
    ComfyUI's ``diffusion_model.`` layout) each redraw the run's round-2 images in a fresh process."""
    studio, run_id, config = finished.studio, finished.run_id, finished.config
    check_two_rounds(studio, run_id, config, FAMILY)
    out = tmp_path / "export"
    written = studio.export(run_id, out, ("diffusers", "kohya"))
    comfy = load_file(str(written["kohya"]))
    assert comfy and all(k.startswith("diffusion_model.layers.") for k in comfy)
    assert any(".attention.qkv.lora_down" in k for k in comfy)
    weights = {"diffusers": written["diffusers"].name, "comfy": written["kohya"].name}
    replay_in_fresh_process(studio, run_id, config, out, weights)


def test_comfyui_key_map_loads_every_key_at_the_trained_strength(finished, tmp_path):
    """ComfyUI's own ``model_lora_keys_unet`` (its generic ``diffusion_model.`` map: it has no Ideogram
    branch) over its Ideogram 4 model's weight names, then ``load_lora`` + ``calculate_weight``: 0 keys
    dropped, each patched weight's ΔW the trained one. Needs .comfy/ideogram4_keymap.py (comfy_shim)."""
    missing = available("ideogram4_keymap")
    if missing:
        pytest.skip(missing)
    keymap = keymap_module("ideogram4_keymap")
    studio, run_id, config = finished.studio, finished.run_id, finished.config
    written = studio.export(run_id, tmp_path / "export", ("kohya",))
    lora = load_file(str(written["kohya"]))
    tr = FAMILY.build_tiny().transformer
    c = tr.config
    model = keymap.ideogram4_model(
        in_channels=c.in_channels, num_layers=c.num_layers, num_attention_heads=c.num_attention_heads,
        attention_head_dim=c.attention_head_dim, intermediate_size=c.intermediate_size, adaln_dim=c.adaln_dim,
        llm_features_dim=c.llm_features_dim,
    )  # fmt: skip
    sdk = {f"diffusion_model.{k}": v for k, v in model.state_dict().items()}
    key_map = keymap.ideogram4_lora_keys(sdk, {})
    zeros = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in sdk.items()}
    patched, dropped = apply(lora, key_map, zeros)
    assert dropped == [], f"ComfyUI drops {dropped}"
    trained = load_file(str(studio.run_dir(run_id) / _last_adapter(studio, run_id)))
    scale = config.train.alpha / config.train.rank
    for i in range(c.num_layers):
        qkv = patched[f"diffusion_model.layers.{i}.attention.qkv.weight"]
        want = torch.cat([_delta(trained, f"layers.{i}.attention.to_{p}") for p in "qkv"]) * scale
        torch.testing.assert_close(qkv, want, rtol=1e-4, atol=1e-6)
        out = patched[f"diffusion_model.layers.{i}.attention.o.weight"]
        torch.testing.assert_close(out, _delta(trained, f"layers.{i}.attention.to_out.0") * scale, rtol=1e-4,
                                   atol=1e-6)  # fmt: skip
    assert len(patched) == 5 * c.num_layers  # qkv, o, w1, w2, w3 per block


def _last_adapter(studio, run_id):
    import storage

    with storage.open_db(studio.db_path) as db:
        rounds = storage.list_rounds(db, run_id)
    return f"{rounds[-1]['adapter_path']}/pytorch_lora_weights.safetensors"


def test_block_swap_on_ideogram4_trains_the_same_adapter(reference_files):
    block_swap_trains_the_same_adapter(reference_files, MODEL, 1)


def test_resume_after_a_cancel_mid_generation(finished):
    resumed_where_it_stopped(finished)


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path):
    killed_cli_run_resumes(tmp_path, MODEL)


@pytest.mark.slow
def test_demo_runs_two_rounds_end_to_end(tmp_path):
    """``gal run --demo --model tiny-ideogram4``: the built-in scenario trains, draws, judges and picks
    through round 2 (the unconditional transformer shares the conditional one's random start, so CFG at
    the demo's guidance 5 does not extrapolate two unrelated nets' noise and stop the run at round 1)."""
    import subprocess
    import sys

    import storage

    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "gal", "--runs-dir", str(runs), "run", "--demo", "--model", MODEL],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with storage.open_db(runs / "gal.db") as db:
        (run,) = storage.list_runs(db)
        rounds = storage.list_rounds(db, run["run_id"])
    assert run["status"] == "finished" and len(rounds) >= 2
    assert all(r["state"] == "done" for r in rounds)


def test_the_24gb_preset_options_train_and_draw_on_cpu(reference_files):
    """The preset's options set explicitly (on CPU the preset itself never applies): an int8 base, gradient
    checkpointing, Qwen3-VL and the unconditional transformer offloaded after caching; the step trains and
    the pipeline draws after (both encoders back for generation)."""
    pytest.importorskip("torchao", reason="torchao not installed (pip install 'gal-studio[quant]')")
    import numpy as np
    from PIL import Image

    from gal.training import TrainExample, adapter_state, train_lora

    assert FAMILY.preset_24gb == {
        "quantize_base": "int8",
        "gradient_checkpointing": True,
        "offload_text_encoders": True,
    }
    pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32)
    examples = [TrainExample(Image.open(p).convert("RGB"), "a <sks> star", 1.0) for p in reference_files[:2]]
    cfg = TrainConfig(steps=3, learning_rate=1e-2, batch_size=2, rank=4, alpha=4.0, **FAMILY.preset_24gb)
    result = train_lora(pipe, examples, cfg, resolution=32, seed=0)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    weight = pipe.transformer.layers[0].attention.to_q.base_layer.weight
    assert "Int8" in type(weight).__name__ or "Affine" in type(weight).__name__, type(weight).__name__
    assert type(pipe.unconditional_transformer.layers[0].attention.to_q.weight) is torch.nn.Parameter
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter_state(pipe).items())
    ims = generate(pipe, ["a <sks> star"], [0], GenerateConfig(steps=2), resolution=32)
    assert np.isfinite(np.asarray(ims[0], np.float32)).all()


def test_a_2to1_reference_trains_in_its_own_bucket_and_draws_non_square(monkeypatch):
    """Bucketing: a 2:1 reference's latent grid is packed as it is (grid h × w, its own MRoPE positions),
    and the pipeline draws a 2:1 image (generate.width/height)."""
    import numpy as np
    from PIL import Image

    from gal.training import TrainExample, train_lora

    pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, s, dtype=np.uint8)) for s in ((24, 48, 3), (32, 32, 3))]
    seen = []
    real = FAMILY.per_sample_loss

    def spy(pipe_, scheduler, latents, *a, **k):
        seen.append(tuple(latents.shape[-2:]))
        return real(pipe_, scheduler, latents, *a, **k)

    monkeypatch.setattr(FAMILY, "per_sample_loss", spy)
    examples = [TrainExample(im, "a <sks> star", 1.0) for im in images]
    cfg = TrainConfig(steps=4, learning_rate=1e-2, batch_size=1, bucketing=True)
    result = train_lora(pipe, examples, cfg, resolution=32, seed=0)
    assert all(np.isfinite(result.losses)) and {s[0] != s[1] for s in seen} == {True, False}, seen
    cfg = GenerateConfig(steps=2, width=48, height=24)
    assert generate(pipe, ["a <sks> star"], [0], cfg, resolution=32)[0].size == (48, 24)


def test_fused_export_draws_the_runs_images(finished, tmp_path):
    """The fused export (LoRA merged into the conditional transformer, saved as a diffusers folder) loads
    as an Ideogram 4 folder and redraws the run's round-2 images."""
    import numpy as np
    from PIL import Image

    studio, run_id, config = finished.studio, finished.run_id, finished.config
    written = studio.export(run_id, tmp_path / "export", ("fused",))
    pipe = load_pipeline(str(written["fused"]), torch.device("cpu"), torch.float32)
    assert model_family(str(written["fused"])) is FAMILY
    images = [im for a in studio.review_state(run_id, 2)["anchors"] for im in a["images"]][:2]
    cfg = GenerateConfig(steps=config.generate.steps, guidance_scale=config.generate.guidance_scale)
    drawn = generate(pipe, [im["prompt"] for im in images], [im["seed"] for im in images], cfg, resolution=32)
    gap = max(
        np.abs(np.asarray(d, np.float32) - np.asarray(Image.open(im["path"]), np.float32)).max()
        for d, im in zip(drawn, images)
    )
    assert gap <= 3.0, gap


def test_parts_placement_trains_and_draws_as_whole(reference_files):
    """ "parts" placement (a pipeline larger than the GPU): the unconditional transformer, one of the family's
    ``text_encoders``, visits the device while it runs, as Qwen3-VL's own forward would; on the CPU nothing
    moves, so the adapter and the images are those of "whole"."""
    from PIL import Image

    from gal import placement
    from gal.training import TrainExample, adapter_state, train_lora

    examples = [TrainExample(Image.open(p).convert("RGB"), "a <sks> star", 1.0) for p in reference_files[:2]]
    results = []
    for mode in ("whole", "parts"):
        pipe = load_pipeline(MODEL, torch.device("cpu"), torch.float32, placement=mode)
        cfg = TrainConfig(
            steps=2, learning_rate=1e-2, batch_size=2, blocks_to_swap=1, gradient_checkpointing=True
        )
        result = train_lora(pipe, examples, cfg, resolution=32, seed=1)
        images = generate(pipe, PROMPTS, [1, 2], GenerateConfig(steps=2, batch_size=2), resolution=32)
        results.append((pipe, result.losses, adapter_state(pipe), images))
    (_, loss_w, state_w, ims_w), (pipe, loss_p, state_p, ims_p) = results
    assert placement.is_parts(pipe) and pipe.unconditional_transformer._gal_visiting is not None
    assert loss_w == loss_p and all(torch.equal(state_w[k], state_p[k]) for k in state_w)
    for a, b in zip(ims_w, ims_p, strict=True):
        assert (torch.tensor(list(a.getdata())) - torch.tensor(list(b.getdata()))).abs().max() <= 1
