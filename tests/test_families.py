"""Model families (SD 1.x/2.x, SDXL, FLUX.1): detection, a 2-round GAL run per family on tiny random-init
pipelines, export round trips in a fresh process, resume, flow matching, quantized base, text-encoder LoRA."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import kill_demo_run_mid_generation, tiny_config
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import storage
from gal import families
from gal.config import FlowOptions, GenerateConfig, RunConfig, TrainConfig
from gal.families.flux import FLUX_TARGETS, bfl_state_dict
from gal.families.memory import advice, training_bytes
from gal.generation import generate
from gal.models import load_pipeline, model_family
from gal.training import (
    LORA_FILE,
    TrainExample,
    adapter_state,
    attach_adapter,
    load_adapter,
    remove_adapter,
    save_adapter,
    train_lora,
)

FAMILY_MODELS = {"sdxl": "tiny-sdxl", "flux": "tiny-flux"}
CPU = torch.device("cpu")


def family_config(model: str, **gal) -> RunConfig:
    config = tiny_config(**gal)
    config.model = model
    config.train.learning_rate = 1e-2  # 6 steps at 1e-3 barely move the tiny models' images
    return config


@pytest.fixture(scope="module")
def studios(tmp_path_factory):
    """One Studio per family for this module (models load once, as in the app)."""
    from gal.engine import Studio

    made = {}

    def get(model):
        if model not in made:
            made[model] = Studio(tmp_path_factory.mktemp(model), model=model, oracle="tiny")
        return made[model]

    return get


# -- detection --------------------------------------------------------------------------------------


def _index(folder, class_name, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, **extra}))
    return folder


@pytest.mark.parametrize(
    "class_name, family",
    [("StableDiffusionPipeline", "sd"), ("StableDiffusionXLPipeline", "sdxl"), ("FluxPipeline", "flux")],
)
def test_family_from_model_index(tmp_path, class_name, family):
    assert (
        families.detect(_index(tmp_path / "m", class_name, text_encoder=["transformers", "X"])).name == family
    )


@pytest.mark.parametrize(
    "class_name, words",
    [
        ("StableDiffusionXLImg2ImgPipeline", "refiner"),
        ("StableDiffusionInpaintPipeline", "inpainting"),
        ("StableVideoDiffusionPipeline", "video"),
        ("SomeNewVideoPipeline", "video"),
    ],
)
def test_unsupported_pipelines_are_refused_naming_what_is_supported(tmp_path, class_name, words):
    with pytest.raises(ValueError, match=words) as err:
        families.detect(_index(tmp_path / "m", class_name))
    assert "StableDiffusionXLPipeline" in str(err.value) and "FluxPipeline" in str(err.value)


def test_refiner_config_and_bad_folders_are_refused(tmp_path):
    refiner = _index(
        tmp_path / "r", "StableDiffusionXLPipeline", text_encoder=[None, None], requires_aesthetics_score=True
    )
    with pytest.raises(ValueError, match="refiner"):
        families.detect(refiner)
    with pytest.raises(ValueError, match="model_index.json"):
        families.detect(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="save_pretrained"):
        families.detect(tmp_path / "bad")
    with pytest.raises(ValueError, match="unknown model family"):
        families.get("sd9")


def _checkpoint(path, shapes: dict):
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


@pytest.mark.parametrize(
    "keys, family",
    [
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                "cond_stage_model.transformer.x": (1,),
            },
            "sd",
        ),
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                "conditioner.embedders.0.transformer.x": (1,),
                "conditioner.embedders.1.model.x": (1,),
            },
            "sdxl",
        ),
        ({"double_blocks.0.img_attn.qkv.weight": (3, 1), "img_in.weight": (8, 64)}, "flux"),
        ({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": (3, 1)}, "flux"),
        (
            {
                "transformer_blocks.0.attn.to_q.weight": (2, 2),
                "single_transformer_blocks.0.attn.to_q.weight": (2, 2),
                "x_embedder.weight": (8, 64),
            },
            "flux",
        ),
    ],
)
def test_family_from_single_file_keys(tmp_path, keys, family):
    assert families.detect(_checkpoint(tmp_path / "m.safetensors", keys)).name == family


@pytest.mark.parametrize(
    "keys, words",
    [
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                "conditioner.embedders.0.model.transformer.x": (1,),
            },
            "refiner",
        ),
        (
            {"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3), "cond_stage_model.x": (1,)},
            "inpainting",
        ),
        ({"model.diffusion_model.input_blocks.1.0.time_stack.0.weight": (1,)}, "video"),
        ({"double_blocks.0.img_attn.qkv.weight": (3, 1), "img_in.weight": (8, 384)}, "Fill"),
        ({"some.other.weight": (1,)}, "no UNet"),
    ],
)
def test_unsupported_single_files_are_refused(tmp_path, keys, words):
    with pytest.raises(ValueError, match=words):
        families.detect(_checkpoint(tmp_path / "m.safetensors", keys))


def test_tiny_names_resolve_offline_for_the_app_check():
    from gal.models import resolve_model_path

    assert [resolve_model_path(m) for m in ("tiny", "tiny-sdxl", "tiny-flux")] == [
        "tiny",
        "tiny-sdxl",
        "tiny-flux",
    ]
    assert [model_family(m).name for m in ("tiny", "tiny-sdxl", "tiny-flux")] == ["sd", "sdxl", "flux"]


def test_single_file_without_a_config_folder_names_the_fix(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.safetensors", {"double_blocks.0.img_attn.qkv.weight": (3, 1)})
    with pytest.raises(ValueError, match=r"\?config="):
        load_pipeline(str(ckpt), CPU, torch.float32)


def test_flux_single_file_loads_offline_with_its_config_folder(tmp_path):
    """A FLUX.1 single file holds the transformer; text encoders, VAE and tokenizers come from
    ``?config=``."""
    pipe = load_pipeline("tiny-flux", CPU, torch.float32)
    pipe.save_pretrained(tmp_path / "flux")
    ckpt = tmp_path / "flux1-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}, str(ckpt))
    assert families.detect(ckpt).name == "flux"
    again = load_pipeline(f"{ckpt}?config={tmp_path / 'flux'}", CPU, torch.float32)
    assert type(again).__name__ == "FluxPipeline"
    cfg = GenerateConfig(steps=2, batch_size=2)
    a, b = (generate(p, ["a star", "a cat"], [1, 2], cfg, resolution=32) for p in (pipe, again))
    assert all(
        np.allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=1.0) for x, y in zip(a, b)
    )


def test_saved_tiny_sdxl_folder_loads_as_sdxl_and_draws_the_same(tmp_path):
    pipe = load_pipeline("tiny-sdxl", CPU, torch.float32)
    pipe.save_pretrained(tmp_path / "sdxl")
    again = load_pipeline(str(tmp_path / "sdxl"), CPU, torch.float32)
    assert (
        type(again).__name__ == "StableDiffusionXLPipeline"
        and model_family(str(tmp_path / "sdxl")).name == "sdxl"
    )
    cfg = GenerateConfig(steps=2, batch_size=2)
    a = generate(pipe, ["a star", "a cat"], [1, 2], cfg, resolution=32)
    b = generate(again, ["a star", "a cat"], [1, 2], cfg, resolution=32)
    assert all(
        np.allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=1.0) for x, y in zip(a, b)
    )


def test_tiny_models_are_the_same_in_every_build():
    for model in ("tiny-sdxl", "tiny-flux"):
        a, b = (families.get(families.TINY[model]).build_tiny() for _ in range(2))
        fam = families.family_of(a)
        for (name, p), (_, q) in zip(
            fam.denoiser(a).state_dict().items(), fam.denoiser(b).state_dict().items()
        ):
            assert torch.equal(p, q), f"{model}: {name} differs between builds"


def test_defaults_and_target_modules_per_family():
    assert families.defaults("sdxl").resolution == 1024 and families.defaults("flux").guidance_scale == 3.5
    assert families.defaults("flux").target_modules == FLUX_TARGETS and len(FLUX_TARGETS) == 12
    from gal.training import target_modules

    cfg = TrainConfig()
    assert target_modules(cfg, families.get("flux")) == FLUX_TARGETS  # SD default -> the family's
    cfg.target_modules = ["attn.to_q", "attn.to_v"]
    assert target_modules(cfg, families.get("flux")) == ["attn.to_q", "attn.to_v"]  # an explicit choice stays
    merged = RunConfig.from_dict(
        {
            **family_config("x").to_dict(),
            **{
                k: {**family_config("x").to_dict()[k], **v}
                for k, v in families.config_defaults("flux").items()
            },
        }
    )
    merged.validate()  # the family's defaults are a valid config
    assert merged.generate.scheduler == "flow-euler" and merged.train.target_modules == FLUX_TARGETS
    config = family_config("tiny-flux")
    config.train.quantize_base, config.train.optimizer, config.generate.vae_tiling = "int8", "adamw8bit", True
    assert RunConfig.from_dict(json.loads(config.to_json())) == config
    config.train.quantize_base = "int4"
    with pytest.raises(ValueError, match="quantize_base"):
        config.validate()


def test_flux_refuses_sd_samplers_and_negative_prompts():
    pipe = load_pipeline("tiny-flux", CPU, torch.float32)
    with pytest.raises(ValueError, match="flow-euler"):
        load_pipeline("tiny-flux", CPU, torch.float32, scheduler="ddim")
    with pytest.raises(ValueError, match="negative prompt"):
        generate(pipe, ["a star"], [0], GenerateConfig(steps=2, negative_prompt="blurry"), resolution=32)


# -- the GAL loop per family --------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-flux"])
def test_two_round_gal_run_per_family(studios, references, model):
    studio = studios(model)
    config = family_config(model)
    run_id = studio.create_run(config, references)
    run = studio.advance(run_id)
    assert run["status"] == "finished"
    with storage.open_db(studio.db_path) as db:
        rounds = storage.list_rounds(db, run_id)
        refs = storage.list_references(db, run_id)
        selections = storage.list_selections(db, run_id)
        images_r2 = storage.list_images(db, run_id, 2)
    assert [r["state"] for r in rounds] == ["done", "done"]
    assert all(np.isfinite(r["metrics"]["train_loss"]) for r in rounds)
    assert len(selections) == config.gal.k  # round 1 selected k anchors...
    added = [x for x in refs if x["source"] == "synthetic"]
    assert added and [x["weight"] for x in added] == pytest.approx(
        [rounds[0]["openness"]] * len(added)
    )  # Δ (Eq. 9)
    assert len(images_r2) == 3 * (4 - config.gal.k)  # selected anchors left the pool
    family = families.get(families.TINY[model])
    with safe_open(str(studio.run_dir(run_id) / rounds[1]["adapter_path"] / LORA_FILE), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(family.lora_prefix + ".") for k in keys)

    # The trained LoRA visibly changes what the round draws (same seeds, adapter on vs off).
    adapter = studio.folder(run_id).path(rounds[1]["adapter_path"])
    pipe = studio.models.with_adapter(config.model, (run_id, 2), adapter)
    state = adapter_state(pipe)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in state.items())
    prompts, seeds = ["a <sks> star on grass"] * 2, [3, 4]
    with_lora = generate(pipe, prompts, seeds, config.generate, resolution=32)
    pipe = studio.models.base(config.model)
    base = generate(pipe, prompts, seeds, config.generate, resolution=32)
    diff = np.mean(
        [
            np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean()
            for a, b in zip(with_lora, base)
        ]
    )
    assert diff > 1.0, f"{model}: the LoRA changed images by only {diff:.3f}/255"


REPLAY = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from gal import families
    from gal.config import GenerateConfig
    from gal.generation import generate
    model, out, cases, kohya = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    cfg = GenerateConfig(**json.loads(sys.argv[5]))
    family = families.get(families.TINY[model])
    results = {}
    for name, weight in (("diffusers", "pytorch_lora_weights.safetensors"), ("kohya", kohya), ("base", None)):
        pipe = family.build_tiny()
        if weight:
            pipe.load_lora_weights(out, weight_name=weight)
        ims = generate(pipe, [c["prompt"] for c in cases], [c["seed"] for c in cases], cfg, resolution=32)
        results[name] = [np.asarray(im, dtype=np.float32).tolist() for im in ims]
    print(json.dumps(results))
""")


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-flux"])
def test_export_round_trip_per_family_in_a_fresh_process(studios, references, tmp_path, model):
    studio = studios(model)
    config = family_config(model, strategy="uncertainty", max_rounds=1)
    if model == "tiny-flux":
        # diffusers' BFL importer hard-codes FLUX.1's widths (3072) for single blocks' fused linear1, so on
        # the tiny model only double blocks can go through it; test_bfl_fused_lora_equals_the_per_module_loras
        # checks the single-block mapping exactly.
        config.train.target_modules = [f"transformer_blocks.{i}.{m}" for i in (0, 1) for m in FLUX_TARGETS]
    run_id = studio.create_run(config, references)
    studio.advance(run_id)
    out = tmp_path / "export"
    written = studio.export(run_id, out, ("diffusers", "kohya"))
    with safe_open(str(written["kohya"]), "pt") as f:
        kohya = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)
    alphas = {k: float(v) for k, v in kohya.items() if k.endswith(".alpha")}
    if model == "tiny-flux":  # BFL layout: fused qkv at rank 3r, alpha 3·alpha
        assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in kohya
        assert (
            kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 3 * config.train.rank
        )
        assert alphas["lora_unet_double_blocks_0_img_attn_qkv.alpha"] == 3 * config.train.lora_alpha
        # the unfused modules are padded to the fused rank 3r (alpha 3·alpha, the same scale), so kohya's
        # one ss_network_dim / ss_network_alpha are true of every module (issue 22)
        assert alphas["lora_unet_double_blocks_0_img_mlp_0.alpha"] == 3 * config.train.lora_alpha
        downs = {v.shape[0] for k, v in kohya.items() if k.endswith(".lora_down.weight")}
        assert downs == {3 * config.train.rank}
        assert meta["ss_network_dim"] == str(3 * config.train.rank)
        assert float(meta["ss_network_alpha"]) == 3 * config.train.lora_alpha
        assert meta["ss_network_module"] == "networks.lora_flux"
        assert meta["ss_base_model_version"] == "flux1"
    else:
        assert set(alphas.values()) == {config.train.lora_alpha} and meta["ss_base_model_version"].startswith(
            "sdxl"
        )

    images = studio.review_state(run_id, 1)["anchors"][0]["images"][:2]
    cases = [{"seed": im["seed"], "prompt": im["prompt"]} for im in images]
    gen = {"steps": config.generate.steps, "guidance_scale": config.generate.guidance_scale, "batch_size": 2}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            REPLAY,
            model,
            str(out),
            json.dumps(cases),
            written["kohya"].name,
            json.dumps(gen),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    saved = [np.asarray(Image.open(im["path"]), dtype=np.float32) for im in images]
    for im, redrawn in zip(saved, results["diffusers"]):
        assert np.allclose(np.asarray(redrawn), im, atol=2.0), (
            "the diffusers LoRA does not redraw the run's image"
        )
    for im, redrawn in zip(saved, results["kohya"]):  # fp16 tensors: a little more rounding
        assert np.allclose(np.asarray(redrawn), im, atol=3.0), (
            "the kohya/BFL LoRA does not redraw the run's image"
        )
    base_gap = max(np.abs(np.asarray(b) - im).max() for b, im in zip(results["base"], saved))
    assert base_gap > 6.0, (
        f"the base model draws the same images (gap {base_gap}): the round trip would prove nothing"
    )


def test_bfl_fused_lora_equals_the_per_module_loras():
    """A rank-r LoRA on each of q, k, v == one rank-3r LoRA on the fused qkv
    (and alpha 3·alpha keeps the scale)."""
    g = torch.Generator().manual_seed(0)
    r, width, alpha = 4, 32, 8.0
    state = {}
    for mod in FLUX_TARGETS[:8]:
        state[f"transformer.transformer_blocks.0.{mod}.lora_A.weight"] = torch.randn(r, width, generator=g)
        state[f"transformer.transformer_blocks.0.{mod}.lora_B.weight"] = torch.randn(width, r, generator=g)
    for mod in ("attn.to_q", "attn.to_k", "attn.to_v"):
        state[f"transformer.single_transformer_blocks.0.{mod}.lora_A.weight"] = torch.randn(
            r, width, generator=g
        )
        state[f"transformer.single_transformer_blocks.0.{mod}.lora_B.weight"] = torch.randn(
            width, r, generator=g
        )
    bfl = bfl_state_dict(state, alpha)

    def delta(prefix):
        down, up = bfl[f"{prefix}.lora_down.weight"], bfl[f"{prefix}.lora_up.weight"]
        return float(bfl[f"{prefix}.alpha"]) / down.shape[0] * up @ down

    def per_module(block, mods):
        return torch.cat(
            [
                alpha
                / r
                * state[f"transformer.{block}.{m}.lora_B.weight"]
                @ state[f"transformer.{block}.{m}.lora_A.weight"]
                for m in mods
            ]
        )

    q = ("attn.to_q", "attn.to_k", "attn.to_v")
    torch.testing.assert_close(
        delta("lora_unet_double_blocks_0_img_attn_qkv"), per_module("transformer_blocks.0", q)
    )
    # an unfused module, padded to the file's rank 3r with zeros (alpha scaled): the same ΔW
    assert bfl["lora_unet_double_blocks_0_img_attn_proj.lora_down.weight"].shape[0] == 3 * r
    torch.testing.assert_close(
        delta("lora_unet_double_blocks_0_img_attn_proj"),
        per_module("transformer_blocks.0", ["attn.to_out.0"]),
    )
    single = delta("lora_unet_single_blocks_0_linear1")
    assert single.shape[0] == 3 * width + 4 * width and not single[3 * width :].any()  # MLP rows untouched
    torch.testing.assert_close(single[: 3 * width], per_module("single_transformer_blocks.0", q))
    with pytest.raises(ValueError, match="all of"):
        bfl_state_dict({k: v for k, v in state.items() if "transformer_blocks.0.attn.to_k." not in k}, alpha)


# -- resume -------------------------------------------------------------------------------------------


def test_flux_run_resumes_from_a_persisted_generating_state(studios, references, tmp_path):
    """Cancel in the middle of round 1's generation, then resume in a fresh Studio (adapter from disk)."""
    from gal.engine import Studio
    from gal.training import Cancelled

    studio = studios("tiny-flux")
    config = family_config("tiny-flux")
    config.generate.batch_size = 4
    run_id = studio.create_run(config, references)

    def progress(stage, done, total, info):
        if stage == "generate" and done >= 4:
            studio.cancel(run_id)

    with pytest.raises(Cancelled):
        studio.advance(run_id, progress)
    with storage.open_db(studio.db_path) as db:
        assert storage.get_round(db, run_id, 1)["state"] == "generating"
        before = {im["id"]: im["file"] for im in storage.list_images(db, run_id, 1)}
        adapter = studio.run_dir(run_id) / storage.get_round(db, run_id, 1)["adapter_path"] / LORA_FILE
    assert 0 < len(before) < 12
    mtime = adapter.stat().st_mtime_ns
    fresh = Studio(studio.runs_root, model="tiny-flux", oracle="tiny")
    assert fresh.advance(run_id)["status"] == "finished"
    with storage.open_db(fresh.db_path) as db:
        after = storage.list_images(db, run_id, 1)
    assert len(after) == 12 and {i["id"]: i["file"] for i in after if i["id"] in before} == before
    assert adapter.stat().st_mtime_ns == mtime  # round 1 was not retrained


@pytest.mark.slow
def test_killed_flux_cli_run_resumes(tmp_path):
    runs = tmp_path / "runs"
    run_id, _ = kill_demo_run_mid_generation(runs, "tiny-flux")
    done = subprocess.run(
        [sys.executable, "-m", "gal", "--runs-dir", str(runs), "run", "--resume", run_id],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with storage.open_db(runs / "gal.db") as db:
        assert storage.get_run(db, run_id)["status"] == "finished"
        assert len(storage.list_images(db, run_id, 1)) == 180


# -- training objectives and memory options -------------------------------------------------------------


def _star_examples(reference_files, n=2):
    return [
        TrainExample(Image.open(p).convert("RGB"), "a <sks> star on stairs", 1.0) for p in reference_files[:n]
    ]


def test_flux_flow_matching_loss_decreases_on_a_fixed_batch(reference_files):
    pipe = load_pipeline("tiny-flux", CPU, torch.float32)
    family = families.family_of(pipe)
    cfg = TrainConfig(rank=4, alpha=4.0)
    image = _star_examples(reference_files, 1)[0].image
    from gal.training import image_to_tensor

    with torch.no_grad():
        x = pipe.vae.encode(image_to_tensor(image, 32)[None]).latent_dist.mean
        x = (x - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    cond = family.encode(pipe, ["a <sks> star on stairs"], 32)
    sched = family.noise_scheduler(pipe)
    batch = x.repeat(4, 1, 1, 1)
    cond4 = {k: v.repeat(4, *[1] * (v.dim() - 1)) for k, v in cond.items()}

    def fixed_loss():  # the same noise and timesteps every time
        with torch.no_grad():
            return float(
                family.per_sample_loss(
                    pipe, sched, batch, cond4, torch.Generator().manual_seed(1), cfg, False
                ).mean()
            )

    params = attach_adapter(pipe, cfg, seed=0, family=family)
    assert (
        len([n for n, _ in pipe.transformer.named_modules() if n.endswith("lora_A")]) == 30
    )  # notes: 30 modules
    before = fixed_loss()
    opt = torch.optim.Adam(params, lr=1e-2)
    for step in range(30):
        loss = family.per_sample_loss(
            pipe, sched, batch, cond4, torch.Generator().manual_seed(100 + step), cfg, False
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.9 * before, f"flow-matching loss {before:.4f} -> {after:.4f}"
    logit = TrainConfig(flow=FlowOptions(weighting_scheme="logit_normal"))
    value = family.per_sample_loss(pipe, sched, batch, cond4, torch.Generator().manual_seed(1), logit, False)
    assert value.shape == (4,) and torch.isfinite(value).all()


def test_sample_weights_scale_each_family_loss(reference_files):
    """A zero-weight reference contributes nothing: its loss weight multiplies the family's
    per-sample loss."""
    for model in ("tiny-sdxl", "tiny-flux"):
        pipe = load_pipeline(model, CPU, torch.float32)
        examples = _star_examples(reference_files, 2)
        for e in examples:
            e.weight = 0.0
        result = train_lora(pipe, examples, TrainConfig(steps=2, batch_size=2), resolution=32, seed=0)
        assert result.losses == [0.0, 0.0], model


def test_quantized_int8_base_trains_a_flux_step_on_cpu(reference_files):
    pytest.importorskip("torchao", reason="torchao not installed (pip install 'gal-studio[quant]')")
    pipe = load_pipeline("tiny-flux", CPU, torch.float32)
    cfg = TrainConfig(steps=3, learning_rate=1e-2, quantize_base="int8", rank=4, alpha=4.0)
    result = train_lora(pipe, _star_examples(reference_files), cfg, resolution=32, seed=0)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    weight = pipe.transformer.transformer_blocks[0].attn.to_q.base_layer.weight
    assert "Int8" in type(weight).__name__ or "Affine" in type(weight).__name__, type(weight).__name__
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter_state(pipe).items())
    ims = generate(pipe, ["a star"], [0], GenerateConfig(steps=2), resolution=32)
    assert np.isfinite(np.asarray(ims[0], np.float32)).all()


def test_generation_memory_options_on_cpu():
    pipe = load_pipeline("tiny-sdxl", CPU, torch.float32)
    plain = generate(pipe, ["a star"], [0], GenerateConfig(steps=2), resolution=32)
    sliced = generate(
        pipe, ["a star"], [0], GenerateConfig(steps=2, vae_tiling=True, vae_slicing=True), resolution=32
    )
    assert np.allclose(np.asarray(plain[0], np.float32), np.asarray(sliced[0], np.float32), atol=2.0)
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    generate(pipe, ["a star"], [0], GenerateConfig(steps=2), resolution=32)
    assert not pipe.vae.use_tiling  # None on CPU: off, as before
    with pytest.raises(ValueError, match="cpu_offload needs"):
        generate(pipe, ["a star"], [0], GenerateConfig(steps=2, cpu_offload=True), resolution=32)


def test_8bit_adam_without_cuda_names_the_fix(reference_files):
    pipe = load_pipeline("tiny-sdxl", CPU, torch.float32)
    with pytest.raises(ValueError, match="adamw8bit.*CUDA|bitsandbytes"):
        train_lora(
            pipe,
            _star_examples(reference_files),
            TrainConfig(steps=1, optimizer="adamw8bit"),
            resolution=32,
            seed=0,
        )


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-flux"])
def test_text_encoder_lora_outside_sd1_is_refused(reference_files, model):
    pipe = load_pipeline(model, CPU, torch.float32)
    with pytest.raises(ValueError, match="train_text_encoder off"):
        train_lora(
            pipe,
            _star_examples(reference_files),
            TrainConfig(steps=1, train_text_encoder=True),
            resolution=32,
            seed=0,
        )


def test_memory_estimate_of_a_loaded_pipeline_follows_the_options():
    """The estimate train_lora checks on CUDA, computed here for the tiny Flux on CPU."""
    from gal.families.memory import estimate_from_pipe

    pipe = load_pipeline("tiny-flux", CPU, torch.float32)
    flux = families.family_of(pipe)
    plain = estimate_from_pipe(pipe, flux, TrainConfig(), 32)
    assert (
        plain["denoiser"] == 4 * sum(p.numel() for p in pipe.transformer.parameters())
        and plain["lora_and_grads"] > 0
    )
    saving = estimate_from_pipe(
        pipe,
        flux,
        TrainConfig(quantize_base="int8", offload_text_encoders=True, gradient_checkpointing=True),
        32,
    )
    assert saving["denoiser"] == plain["denoiser"] / 4 and saving["text_encoders"] == 0
    assert saving["activations"] < plain["activations"]
    assert "quantize_base" not in advice(saving, 1.0, TrainConfig(quantize_base="int8"), flux)


def test_memory_advice_names_the_option_to_turn_on():
    flux = families.get("flux")
    need = training_bytes(
        denoiser_params=11_900_000_000,
        text_encoder_params=4_900_000_000,
        vae_params=84_000_000,
        lora_params=20_000_000,
        activations_16bit=30e9,
        activations_ckpt_16bit=2e9,
    )
    cfg = TrainConfig(gradient_checkpointing=False, offload_text_encoders=False)
    message = advice(need, 24 * 2**30, cfg, flux)
    assert "gradient_checkpointing" in message and "quantize_base" in message and "FLUX.1" in message
    small = training_bytes(
        denoiser_params=11_900_000_000,
        text_encoder_params=4_900_000_000,
        vae_params=84_000_000,
        lora_params=20_000_000,
        activations_16bit=30e9,
        activations_ckpt_16bit=2e9,
        quantize_base="int8",
        offload_text_encoders=True,
        gradient_checkpointing=True,
    )
    assert small["total"] < need["total"] / 2
    assert advice(small, 24 * 2**30, TrainConfig(), flux) is None
    done = TrainConfig(
        gradient_checkpointing=True, offload_text_encoders=True, quantize_base="int8", optimizer="adamw8bit"
    )
    assert "lower train.resolution" in advice(need, 2**30, done, flux)


# -- text-encoder LoRA (SD 1.x) ----------------------------------------------------------------------------


def test_text_encoder_lora_saves_and_reloads_in_a_fresh_pipeline(reference_files, tmp_path):
    pipe = load_pipeline("tiny", CPU, torch.float32)
    cfg = TrainConfig(steps=4, learning_rate=1e-2, batch_size=2, train_text_encoder=True)
    train_lora(pipe, _star_examples(reference_files), cfg, resolution=32, seed=0)
    path = save_adapter(pipe, tmp_path / "a", cfg)
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    gen = GenerateConfig(steps=3, batch_size=2)
    drawn = generate(pipe, ["a <sks> star"] * 2, [5, 6], gen, resolution=32)
    fresh = load_pipeline("tiny", CPU, torch.float32)
    base = generate(fresh, ["a <sks> star"] * 2, [5, 6], gen, resolution=32)
    load_adapter(fresh, tmp_path / "a")
    again = generate(fresh, ["a <sks> star"] * 2, [5, 6], gen, resolution=32)
    arr = lambda ims: np.stack([np.asarray(i, np.float32) for i in ims])  # noqa: E731
    assert np.allclose(arr(again), arr(drawn), atol=1.0)
    load_adapter(fresh, tmp_path / "a")  # a resume reloads over a loaded adapter: replaced, not stacked
    assert np.allclose(
        arr(generate(fresh, ["a <sks> star"] * 2, [5, 6], gen, resolution=32)), arr(drawn), atol=1.0
    )
    assert np.abs(arr(base) - arr(drawn)).max() > 1.0
    from gal.export import kohya_state_dict

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    kohya = kohya_state_dict(_load(path), meta, RunConfig(train=cfg), families.get("sd"))
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in kohya)
    remove_adapter(pipe)  # drops the text encoder's adapter too
    assert not getattr(pipe.text_encoder, "peft_config", {})


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))
