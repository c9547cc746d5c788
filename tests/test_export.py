"""Exports that load at the trained strength everywhere, carry kohya's metadata, and never delete what
they did not write (issues 12 and 13)."""

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import gal.export.dataset as gx_dataset
import gal.export.target as gx_target
import storage
from gal import export as gx
from gal import families
from gal.cli import main
from gal.config import RunConfig, TrainConfig
from gal.families.sd import SD1_FACTS
from gal.training import LORA_FILE

ALL = ("diffusers", "kohya", "fused", "checkpoint", "dataset", "card")
CASES = [(4, 8.0), (16, 1.0)]  # rank != alpha both ways: scale 2 and 1/16


def _run(studio, references, rank, alpha, name):
    config = tiny_config("uncertainty", max_rounds=1)
    config.name = name
    config.train.rank, config.train.alpha = rank, alpha
    # a learning rate high enough that the LoRA visibly changes images (scale 1/16 needs more)
    config.train.learning_rate = 1e-2 if alpha >= rank else 3e-2
    config.train.steps = 4
    run_id = studio.create_run(config, references)
    studio.advance(run_id)
    return run_id, config


@pytest.fixture(scope="module")
def exports(shared_studio, reference_files, tmp_path_factory):
    from gal.engine import ReferenceInput

    refs = [ReferenceInput(p, "a <sks> star on stairs", "a star on stairs") for p in reference_files]
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for rank, alpha in CASES:
        run_id, config = _run(shared_studio, refs, rank, alpha, f"star r{rank} a{alpha:g}")
        full = shared_studio.export(run_id, root / f"r{rank}-full", ALL)
        ckpt = shared_studio.export(
            run_id, root / f"r{rank}-ckpt", ("checkpoint",)
        )  # weightless config/ folder
        out[rank] = {
            "run_id": run_id,
            "config": config,
            "full": full,
            "ckpt": ckpt,
            "dir": root / f"r{rank}-full",
        }
    return out


REDRAW = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    from gal.models import build_tiny_pipeline
    jobs = json.loads(sys.argv[1])
    def draw(pipe):
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(11)
        return pipe(["a <sks> star in the snow"], num_inference_steps=3, guidance_scale=3.0, height=32,
                    width=32, generator=g, output_type="np").images[0]
    results = {"base": draw(build_tiny_pipeline()).tolist()}
    for job in jobs:
        r = {}
        pipe = build_tiny_pipeline(); pipe.load_lora_weights(job["dir"])  # diffusers' default weight name
        r["diffusers"] = draw(pipe)
        pipe = build_tiny_pipeline()
        pipe.load_lora_weights(job["dir"], weight_name=job["kohya"])  # auto-detected
        r["kohya"] = draw(pipe)
        # what diffusers' convert_state_dict_to_kohya writes: every .alpha = the rank
        state = load_file(job["dir"] + "/" + job["kohya"])
        state = {k: (torch.tensor(float(state[k[:-len(".alpha")] + ".lora_down.weight"].shape[0]))
                     if k.endswith(".alpha") else v) for k, v in state.items()}
        save_file(state, job["tmp"] + "/alpha_is_rank.safetensors")
        pipe = build_tiny_pipeline()
        pipe.load_lora_weights(job["tmp"], weight_name="alpha_is_rank.safetensors")
        r["alpha_is_rank"] = draw(pipe)
        fused = StableDiffusionPipeline.from_pretrained(job["dir"] + "/pipeline", safety_checker=None)
        r["fused"] = draw(fused)
        single = StableDiffusionPipeline.from_single_file(job["ckpt"], config=job["ckpt_config"],
                                                          safety_checker=None)
        r["single_file"] = draw(single)
        results[job["name"]] = {k: v.tolist() for k, v in r.items()}
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def redrawn(exports, tmp_path_factory):
    """One fresh process loads every export of both runs and draws the same seed."""
    tmp = tmp_path_factory.mktemp("redraw")
    jobs = []
    for rank, e in exports.items():
        ckpt = e["ckpt"]["checkpoint"]
        jobs.append(
            {
                "name": str(rank),
                "dir": str(e["dir"]),
                "kohya": e["full"]["kohya"].name,
                "tmp": str(tmp),
                "ckpt": str(ckpt),
                "ckpt_config": str(ckpt.parent / "config"),
            }
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", REDRAW, json.dumps(jobs)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        k: (np.asarray(v) if k == "base" else {f: np.asarray(x) for f, x in v.items()})
        for k, v in data.items()
    }


@pytest.mark.parametrize("rank,alpha", CASES)
def test_every_format_redraws_the_lora_at_its_trained_strength(redrawn, rank, alpha):
    r = redrawn[str(rank)]
    assert np.abs(r["diffusers"] - redrawn["base"]).max() > 5e-3, (
        "the LoRA does not change the image: test is blind"
    )
    assert np.allclose(r["kohya"], r["diffusers"], atol=1e-5), np.abs(r["kohya"] - r["diffusers"]).max()
    assert np.allclose(r["fused"], r["diffusers"], atol=1e-4), np.abs(r["fused"] - r["diffusers"]).max()
    assert np.allclose(r["single_file"], r["fused"], atol=1e-4), np.abs(r["single_file"] - r["fused"]).max()
    # alpha = rank (diffusers' converter) would load at the wrong strength: the rewrite is what fixes it
    assert np.abs(r["alpha_is_rank"] - r["diffusers"]).max() > 1e-3


@pytest.mark.parametrize("rank,alpha", CASES)
def test_the_diffusers_file_holds_the_trained_strength_for_loaders_that_skip_its_header(
    exports, shared_studio, rank, alpha
):
    """ComfyUI, Forge and A1111 read no safetensors header: a LoRA without ``.alpha`` tensors loads at scale
    1. The exported diffusers file folds alpha/r into lora_B and says alpha = r, so B·A alone is the trained
    ΔW = B·A·alpha/r in every loader (issue 22: it loaded at the wrong strength when alpha != rank)."""
    e = exports[rank]
    with shared_studio.db() as db:
        adapter_path = storage.list_rounds(db, e["run_id"])[-1]["adapter_path"]
    trained = load_file(str(shared_studio.run_dir(e["run_id"]) / adapter_path / LORA_FILE))
    exported = load_file(str(e["full"]["diffusers"]))
    assert set(exported) == set(trained)
    pairs = [k.removesuffix(".lora_A.weight") for k in trained if k.endswith(".lora_A.weight")]
    assert pairs
    for name in pairs:
        a, b = trained[f"{name}.lora_A.weight"], trained[f"{name}.lora_B.weight"]
        delta = b @ a * (alpha / rank)
        plain = exported[f"{name}.lora_B.weight"] @ exported[f"{name}.lora_A.weight"]  # what ComfyUI applies
        assert torch.allclose(plain, delta, atol=1e-6, rtol=1e-5), name
    with safe_open(str(e["full"]["diffusers"]), "pt") as f:
        adapter = json.loads(f.metadata()["lora_adapter_metadata"])
    assert adapter["unet.lora_alpha"] == adapter["unet.r"] == rank  # diffusers: scale 1 on the folded B


@pytest.mark.parametrize("rank,alpha", CASES)
def test_kohya_metadata_matches_the_run(exports, shared_studio, rank, alpha):
    e = exports[rank]
    config: RunConfig = e["config"]
    path = e["full"]["kohya"]
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert all(k.startswith("lora_unet_") for k in tensors)
    alphas = {k: float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    downs = [k for k in tensors if k.endswith(".lora_down.weight")]
    assert len(alphas) == len(downs) > 0 and set(alphas.values()) == {alpha}
    assert {tensors[k].shape[0] for k in downs} == {rank}
    with shared_studio.db() as db:
        run = storage.get_run(db, e["run_id"])
        refs = storage.list_references(db, e["run_id"], up_to_round=0)
    expected = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_sd_model_name": "tiny",
        "ss_resolution": "(32, 32)",
        "ss_mixed_precision": "no",
        "ss_num_train_images": str(len(refs)),
        "ss_num_reg_images": "0",
        "ss_learning_rate": str(config.train.learning_rate),
        "ss_max_train_steps": str(config.train.steps),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": run["name"],
        "modelspec.trigger_phrase": "<sks>",
        "modelspec.resolution": "32x32",
        "modelspec.prediction_type": "epsilon",
        "gal.run_id": e["run_id"],
        "gal.round": "1",
        "gal.strategy": "uncertainty",
        "gal.config_hash": config.config_hash(),
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert "ss_v_parameterization" not in meta
    started = float(meta["ss_training_started_at"])
    assert abs(started - gx._created(run).timestamp()) < 1
    # a full ISO 8601 date and time, as sd-scripts writes it (issue 22: it was the date only)
    assert meta["modelspec.date"] == gx._created(run).replace(microsecond=0).isoformat()
    assert "T" in meta["modelspec.date"]
    tags = json.loads(meta["ss_tag_frequency"])
    counts = next(iter(tags.values()))
    assert counts["<sks>"] == len(refs) and counts["a <sks> star on stairs"] == len(refs)
    # kohya's hashes, recomputed here from the file's own bytes: sha256 after the header of the tensors saved
    # with only the ss_* metadata, and sha256 of 64 KiB at 1 MiB (kohya's legacy hash).
    import safetensors.torch

    blob = safetensors.torch.save(tensors, {k: v for k, v in meta.items() if k.startswith("ss_")})
    n = int.from_bytes(blob[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[8 + n :]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    # the same value whatever other (non ss_) metadata the file carries
    raw = path.read_bytes()
    m = int.from_bytes(raw[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(raw[8 + m :]).hexdigest()


def test_kohya_hash_functions_on_a_file_over_one_mebibyte():
    import safetensors.torch

    tensors = {"w": torch.arange(400_000, dtype=torch.float32)}  # 1.6 MB: the legacy hash reads real bytes
    blob = safetensors.torch.save(tensors, {"ss_x": "1", "other": "2"})
    model, legacy = gx.precalculate_safetensors_hashes(tensors, {"ss_x": "1", "other": "2"})
    plain = safetensors.torch.save(tensors, {"ss_x": "1"})
    n = int.from_bytes(plain[:8], "little")
    assert (
        model
        == hashlib.sha256(plain[8 + n :]).hexdigest()
        == hashlib.sha256(tensors["w"].numpy().tobytes()).hexdigest()
    )
    assert (
        legacy
        == hashlib.sha256(plain[0x100000:0x110000]).hexdigest()[:8]
        != hashlib.sha256(b"").hexdigest()[:8]
    )
    assert blob != plain


def test_model_card_front_matter_and_samples(exports):
    e = exports[4]
    out = e["dir"]
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "diffusers" and front["instance_prompt"] == "a <sks> star"
    assert {"lora", "text-to-image", "template:sd-lora", "diffusers-training"} <= set(front["tags"])
    assert front["license"] and "base_model" not in front  # the tiny model is not a Hub model
    widget = front["widget"]
    assert 1 <= len(widget) <= gx.SAMPLES
    for item in widget:
        sample = out / item["output"]["url"]
        assert sample.is_file() and sample.stat().st_size > 0 and item["text"]
    assert len({w["text"] for w in widget}) == len(widget)
    assert e["full"]["kohya"].name in text and "<lora:" in text


def test_model_card_names_a_hub_base_model_and_its_licence():
    config = RunConfig(model="stable-diffusion-v1-5/stable-diffusion-v1-5", name="cat")
    run = {"run_id": "cat-20260101-000000-abcd", "name": "cat"}
    prov = {"gal.run_id": run["run_id"], "gal.round": "1", "gal.config_hash": config.config_hash()}
    card = gx.model_card(
        run, config, [], [], prov, facts=SD1_FACTS, samples=[{"file": "samples/a.png", "prompt": 'say "hi"'}]
    )
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == config.model and front["license"] == "creativeml-openrail-m"
    assert front["widget"][0]["text"] == 'say "hi"'


def test_base_model_versions_per_family():
    """kohya's base-model fields come from the family's export facts (no second vocabulary in export)."""
    from gal.families.flux import FLUX_FACTS
    from gal.families.sd import SD2_FACTS
    from gal.families.sd3 import SD3_FACTS
    from gal.families.sdxl import SDXL_FACTS

    assert gx.base_model_metadata(SD1_FACTS) == {"ss_base_model_version": "sd_v1", "ss_v2": "False"}
    assert gx.base_model_metadata(SD2_FACTS, v_parameterization=True) == {
        "ss_base_model_version": "sd_v2",
        "ss_v2": "True",
        "ss_v_parameterization": "True",
    }
    assert gx.base_model_metadata(SDXL_FACTS)["ss_base_model_version"] == "sdxl_base_v1-0"
    assert gx.base_model_metadata(FLUX_FACTS)["ss_base_model_version"] == "flux1"
    assert FLUX_FACTS.network_module == "networks.lora_flux"  # what sd-scripts' FLUX.1 trainer writes
    assert gx.base_model_metadata(SD3_FACTS)["ss_base_model_version"] == "sd3"


def test_family_detection_from_the_pipeline():
    """sd1 / sd2 / sdxl / flux export facts from real (tiny) pipelines: SD 2 is told apart by its 1024-wide
    text encoder."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from gal.models import build_tiny_pipeline, load_pipeline

    def variant(pipe):  # a loaded pipeline carries its family; sd2, built here, is asked of SD's
        family = getattr(pipe, "gal_family", None) or families.get("sd")
        return family.export_facts(pipe).variant

    sd1 = build_tiny_pipeline()
    assert variant(sd1) == "sd1"
    text = dict(vocab_size=49408, max_position_embeddings=77, num_hidden_layers=1, num_attention_heads=4)
    sd2 = StableDiffusionPipeline(
        **{**sd1.components, "safety_checker": None, "feature_extractor": None},
        requires_safety_checker=False,
    )
    sd2.text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=64, **text))
    sd2.unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        cross_attention_dim=1024,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=16,
    )
    assert variant(sd2) == "sd2"
    cpu = torch.device("cpu")
    assert variant(load_pipeline("tiny-sdxl", cpu, torch.float32)) == "sdxl"
    assert variant(load_pipeline("tiny-flux", cpu, torch.float32)) == "flux"


# Key patterns the community loaders read for SD1 (read, not copied, from ComfyUI comfy/lora.py
# model_lora_keys_clip / model_lora_keys_unet at 00728eb, and sd-scripts networks/lora.py LORA_PREFIX_*):
# the text encoder's LoRA is "lora_te_text_model_encoder_layers_<b>_<module>" with module one of
# mlp_fc1, mlp_fc2, self_attn_{q,k,v,out}_proj; the UNet's is "lora_unet_<diffusers module path, . -> _>".
TE_KEY = re.compile(
    r"^lora_te_text_model_encoder_layers_\d+_(mlp_fc[12]|self_attn_(q|k|v|out)_proj)"
    r"\.(lora_down\.weight|lora_up\.weight|alpha)$"
)


def test_text_encoder_lora_gets_the_sd1_kohya_names_and_loads_back(tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from gal.models import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    te_cfg = LoraConfig(r=4, lora_alpha=2.0, target_modules=["q_proj", "v_proj", "out_proj", "fc1"])
    inject_adapter_in_model(te_cfg, pipe.text_encoder)
    unet_cfg = LoraConfig(r=4, lora_alpha=8.0, target_modules=["to_q", "to_v"])
    pipe.unet.add_adapter(unet_cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in list(pipe.text_encoder.named_parameters()) + list(pipe.unet.named_parameters()):
            if "lora_B" in name:
                p.normal_(0, 0.2)  # non-zero: a fresh adapter is a no-op
    StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(
            get_peft_model_state_dict(pipe.text_encoder)
        ),
        unet_lora_adapter_metadata=unet_cfg.to_dict(),
        text_encoder_lora_adapter_metadata=te_cfg.to_dict(),
    )
    with safe_open(str(tmp_path / LORA_FILE), "pt") as f:
        meta = f.metadata()
    config = RunConfig(train=TrainConfig(rank=4, alpha=8.0))
    kohya = gx.kohya_state_dict(load_file(str(tmp_path / LORA_FILE)), meta, config, families.get("sd"))
    te_keys = [k for k in kohya if k.startswith("lora_te")]
    assert te_keys and all(TE_KEY.match(k) for k in te_keys), [k for k in te_keys if not TE_KEY.match(k)][:3]
    assert len(te_keys) == 2 * 3 * 4  # 2 layers x (down, up, alpha) x 4 targets
    assert {float(kohya[k]) for k in te_keys if k.endswith(".alpha")} == {2.0}  # the TE's own alpha
    assert {float(kohya[k]) for k in kohya if k.startswith("lora_unet") and k.endswith(".alpha")} == {8.0}
    unet_modules = {n.replace(".", "_") for n, _ in build_tiny_pipeline().unet.named_modules()}
    assert all(
        k.split(".")[0][len("lora_unet_") :] in unet_modules for k in kohya if k.startswith("lora_unet_")
    )
    save_file(kohya, str(tmp_path / "k.safetensors"))

    ids = pipe.tokenizer(["a <sks> star"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want = pipe.text_encoder(ids)[0]
        plain = build_tiny_pipeline()
        base = plain.text_encoder(ids)[0]
        plain.load_lora_weights(str(tmp_path), weight_name="k.safetensors")
        got = plain.text_encoder(ids)[0]
    assert (want - base).abs().max() > 1e-3
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_unet_ldm_mapping_covers_every_weight_once():
    from gal.models import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    unet = gx.convert_unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    vae = gx.convert_vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    te = gx.convert_text_encoder_to_ldm(pipe.text_encoder.state_dict(), "sd1")
    assert len(unet) == len(pipe.unet.state_dict()) and len(vae) == len(pipe.vae.state_dict())
    assert all(k.startswith("model.diffusion_model.") for k in unet)
    assert (
        "model.diffusion_model.input_blocks.0.0.weight" in unet
        and "model.diffusion_model.out.2.weight" in unet
    )
    assert all(k.startswith("first_stage_model.") for k in vae)
    assert (
        "first_stage_model.encoder.mid.attn_1.q.weight" in vae
        and vae["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    )
    assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in te)


# -- issue 13: never delete what the export did not write ----------------------------------------


@pytest.fixture(scope="module")
def one_run(shared_studio, reference_files):
    from gal.engine import ReferenceInput

    refs = [ReferenceInput(p, "a <sks> star on stairs", "a star on stairs") for p in reference_files]
    config = tiny_config("uncertainty", max_rounds=1)
    config.train.steps = 2
    config.name = "safety"
    run_id = shared_studio.create_run(config, refs)
    shared_studio.advance(run_id)
    return run_id


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


def test_export_refuses_the_runs_folder_and_run_folders(shared_studio, one_run, tmp_path):
    studio = shared_studio
    before = _tree(studio.runs_root)
    run_dir = studio.run_dir(one_run)
    for target in (
        studio.runs_root,
        run_dir,
        run_dir / "rounds",
        studio.runs_root / "new-folder",
        studio.runs_root.parent,
    ):
        for force in (False, True):
            with pytest.raises(ValueError, match="runs folder|run folder"):
                studio.export(one_run, target, ("card",), force=force)
    assert _tree(studio.runs_root) == before
    assert not (studio.runs_root / "new-folder").exists()


def test_export_refuses_a_foreign_folder_and_keeps_it(shared_studio, one_run, tmp_path):
    out = tmp_path / "loras"
    out.mkdir()
    (out / "someone_else.safetensors").write_bytes(b"x" * 10)
    for force in (False, True):
        with pytest.raises(ValueError, match="not a GAL Studio export"):
            shared_studio.export(one_run, out, ("card",), force=force)
    assert _tree(out) == {"someone_else.safetensors": 10}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loras"]  # no staging folder left
    with pytest.raises(ValueError) as err:
        shared_studio.export(one_run, out, ("kohya",))
    suggested = Path(re.search(r"e\.g\. (\S+)", str(err.value))[1])
    assert suggested.parent == out
    written = shared_studio.export(one_run, suggested, ("kohya",))  # the suggestion works, beside the others
    assert written["kohya"].is_file() and (out / "someone_else.safetensors").read_bytes() == b"x" * 10


def test_force_replaces_only_our_previous_export(shared_studio, one_run, tmp_path):
    out = tmp_path / "ex"
    shared_studio.export(one_run, out, ("kohya", "card"))
    marker = json.loads((out / gx.MARKER).read_text())
    assert marker["run_id"] == one_run and marker["complete"] and "README.md" in marker["entries"]
    with pytest.raises(ValueError, match="--force"):
        shared_studio.export(one_run, out, ("card",))
    (out / "my-notes.txt").write_text("mine")  # the user added a file: not ours, so no replace at all
    with pytest.raises(ValueError, match="did not write"):
        shared_studio.export(one_run, out, ("card",), force=True)
    (out / "my-notes.txt").unlink()
    shared_studio.export(one_run, out, ("dataset",), force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([gx.MARKER, "dataset", "gal_config.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]


def test_two_runs_export_side_by_side(shared_studio, exports, one_run, tmp_path):
    a, b = exports[4], exports[16]
    names_a = {p.name for p in a["full"].values()}
    names_b = {p.name for p in b["full"].values()}
    assert a["full"]["kohya"].name != b["full"]["kohya"].name
    assert a["full"]["checkpoint"].name != b["full"]["checkpoint"].name
    loras = tmp_path / "loras"  # what a user does: gather the LoRA files of several runs in models/Lora
    loras.mkdir()
    for e in (a, b):
        for fmt in ("kohya", "checkpoint"):
            target = loras / e["full"][fmt].name
            assert not target.exists()
            target.write_bytes(e["full"][fmt].read_bytes())
    assert len(list(loras.iterdir())) == 4
    assert names_a & names_b <= {LORA_FILE, "pipeline", "dataset", "README.md"}
    # exporting run B into run A's export folder is refused, even with --force, and A's export is untouched
    before = _tree(a["dir"])
    for force in (False, True):
        with pytest.raises(ValueError, match="holds the export of run"):
            shared_studio.export(b["run_id"], a["dir"], ("card",), force=force)
    assert _tree(a["dir"]) == before


def test_file_stems_are_sanitised_and_unique():
    assert (
        gx.export_stem({"run_id": "star-20261201-101010-ab12", "name": "star"}) == "star-20261201-101010-ab12"
    )
    odd = gx.export_stem({"run_id": "run-20261201-101010-ab12", "name": "Étoile / <b>:*?"})
    assert odd == "Étoile-b-20261201-101010-ab12"
    assert (
        gx.export_stem({"run_id": "con-20261201-101010-ab12", "name": "CON"}) == "_CON-20261201-101010-ab12"
    )
    assert "/" not in gx.export_stem({"run_id": "x-1-2-3", "name": "../../etc"})


def test_bad_formats_are_refused_with_the_choices(shared_studio, one_run, tmp_path, capsys):
    for bad in ((), ",", " , "):
        with pytest.raises(ValueError, match="no export format given"):
            gx.parse_formats(bad)
    with pytest.raises(ValueError, match="unknown export format.*choose from diffusers"):
        gx.parse_formats("kohya,ckpt")
    assert gx.parse_formats(None) == gx.DEFAULT_FORMATS
    runs = str(shared_studio.runs_root)
    assert main(["--runs-dir", runs, "export", one_run, str(tmp_path / "x"), "--format", ","]) == 2
    assert "no export format given" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_full_disk_leaves_nothing_behind(shared_studio, one_run, tmp_path, monkeypatch):
    out = tmp_path / "ex"
    shared_studio.export(one_run, out, ("card",))
    before = _tree(out)
    real = gx_dataset._write_dataset

    def full_disk(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gx_dataset, "_write_dataset", full_disk)
    with pytest.raises(ValueError, match="free some space or export to another folder"):
        shared_studio.export(one_run, out, ("dataset", "card"), force=True)
    assert _tree(out) == before  # the earlier export is unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]  # no staging folder left


def test_a_killed_export_leaves_a_complete_export_and_is_cleaned_next_time(shared_studio, one_run, tmp_path):
    out = tmp_path / "ex"
    shared_studio.export(one_run, out, ("card",))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    # a kill while writing the new export: its staging folder stays, the target is the old export
    stale = tmp_path / f".ex.gal-staging-{dead}-0a0b"
    stale.mkdir()
    (stale / gx.MARKER).write_text(json.dumps({"tool": "gal-studio", "run_id": one_run, "complete": False}))
    # a staging-like folder of someone else (no marker, not empty) and of a live process are left alone
    theirs = tmp_path / f".ex.gal-staging-{dead}-ffff"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("k")
    live = tmp_path / f".ex.gal-staging-{os.getpid()}-0c0d"
    live.mkdir()
    (live / gx.MARKER).write_text(json.dumps({"tool": "gal-studio", "run_id": one_run}))
    shared_studio.export(one_run, out, ("card", "dataset"), force=True)
    assert not stale.exists() and theirs.exists() and live.exists()
    assert (out / "dataset" / "metadata.jsonl").exists() and "dataset/" in (out / "README.md").read_text()

    # a kill between "old aside" and "new in" (the fallback without RENAME_EXCHANGE): the old comes back
    aside = tmp_path / f".ex.gal-old-{dead}-0e0f"
    out.rename(aside)
    shared_studio.export(one_run, out, ("card",), force=True)
    assert not aside.exists() and (out / "README.md").exists() and not (out / "dataset").exists()


def test_the_swap_keeps_the_target_complete_when_exchange_is_missing(
    shared_studio, one_run, tmp_path, monkeypatch
):
    out = tmp_path / "ex"
    shared_studio.export(one_run, out, ("card",))
    monkeypatch.setattr(gx_target, "_exchange", lambda a, b: False)
    shared_studio.export(one_run, out, ("dataset",), force=True)
    assert (out / "dataset").is_dir() and not (out / "README.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]


def test_app_export_folder_inside_the_run_is_allowed(shared_studio, one_run):
    out = shared_studio.run_dir(one_run) / "export"
    written = shared_studio.export(one_run, out, ("card",), force=True)
    assert written["card"] == out / "README.md" and out.is_dir()
    with pytest.raises(ValueError, match="lies inside the runs folder"):
        shared_studio.export(one_run, shared_studio.run_dir(one_run) / "export2", ("card",))


def test_rank_alpha_rule():
    assert TrainConfig().lora_alpha == 8.0 and TrainConfig(rank=16).lora_alpha == 16.0
    t = TrainConfig(rank=4)
    t.rank = 32
    assert t.lora_alpha == 32.0  # alpha follows the rank when it was not given
    t.alpha = 8.0
    t.rank = 4
    assert t.lora_alpha == 8.0  # an explicit alpha stays
    old = RunConfig.from_dict({"train": {"rank": 16, "alpha": 8.0}})
    assert old.train.lora_alpha == 8.0
    assert RunConfig.from_dict({"train": {"rank": 16, "alpha": None}}).train.lora_alpha == 16.0
    assert RunConfig().config_hash() == RunConfig(train=TrainConfig(alpha=8.0)).config_hash()


def test_cli_rank_and_alpha_flags(tmp_path):
    from gal.cli import _new_config, build_parser

    def cfg(*flags):
        args = build_parser().parse_args(["--runs-dir", str(tmp_path), "run", "--demo", *flags])
        return _new_config(args)[0].train

    assert cfg().lora_alpha == cfg().rank
    assert (cfg("--rank", "16").rank, cfg("--rank", "16").lora_alpha) == (16, 16.0)
    assert cfg("--rank", "4", "--alpha", "8").lora_alpha == 8.0
    with pytest.raises(ValueError, match="train.alpha must be a number > 0"):
        t = cfg("--alpha", "0")
        t.validate()


def test_sd2_text_encoder_layout_is_what_diffusers_single_file_reads_back():
    """SD2's OpenCLIP layout (fused in_proj): diffusers' own single-file converter restores every weight."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    from gal.models import build_tiny_pipeline

    te = build_tiny_pipeline().text_encoder
    state = {k: v for k, v in te.state_dict().items() if not k.endswith("position_ids")}
    ldm = gx.convert_text_encoder_to_ldm(state, "sd2")
    assert all(k.startswith("cond_stage_model.model.") for k in ldm)
    assert any(k.endswith(".attn.in_proj_weight") for k in ldm)
    back = {k.removeprefix("text_model."): v for k, v in convert_open_clip_checkpoint(te, ldm).items()}
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_fused_folders_do_not_ask_for_a_safety_checker_and_the_config_folder_has_no_weights(exports):
    e = exports[4]
    index = json.loads((e["dir"] / "pipeline" / "model_index.json").read_text())
    assert index["requires_safety_checker"] is False
    config = e["ckpt"]["checkpoint"].parent / "config"
    assert (config / "model_index.json").is_file() and (config / "unet" / "config.json").is_file()
    assert not [
        p for p in config.rglob("*") if p.suffix in (".safetensors", ".bin")
    ]  # weights come from the file
    with safe_open(str(e["ckpt"]["checkpoint"]), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["gal.run_id"] == e["run_id"]


def test_safetensors_disk_errors_and_short_writes_leave_nothing_behind(
    shared_studio, one_run, tmp_path, monkeypatch
):
    import safetensors
    import safetensors.torch

    out = tmp_path / "ex"
    real = safetensors.torch.save_file

    def full(*args, **kwargs):
        raise safetensors.SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull })"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ValueError, match="is full .*free some space or export to another folder"):
        shared_studio.export(one_run, out, ("kohya", "card"))
    assert list(tmp_path.iterdir()) == []

    def short(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(Path(path).stat().st_size - 64)

    monkeypatch.setattr(safetensors.torch, "save_file", short)
    with pytest.raises(ValueError, match="not written completely.*another folder"):
        shared_studio.export(one_run, out, ("kohya", "card"))
    assert list(tmp_path.iterdir()) == []


KILL_LOOP = textwrap.dedent("""
    import sys
    from gal.engine import Studio
    studio = Studio(sys.argv[1], model="tiny", oracle="tiny")
    studio.export(sys.argv[2], sys.argv[3], ("kohya", "dataset", "card", "diffusers"), force=True)
    print("ready", flush=True)
    while True:
        studio.export(sys.argv[2], sys.argv[3], ("kohya", "dataset", "card", "diffusers"), force=True)
""")


@pytest.mark.slow
def test_a_real_kill_at_any_moment_leaves_a_complete_export(shared_studio, one_run, tmp_path):
    import random
    import signal
    import time

    out = tmp_path / "ex"
    shared_studio.export(one_run, out, ("card",))
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_LOOP, str(shared_studio.runs_root), one_run, str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        marker = json.loads((out / gx.MARKER).read_text())  # the target is always a complete export
        assert marker["complete"] and all((out / e).exists() for e in marker["entries"])
        with safe_open(str(next(out.glob("*-*.safetensors"))), "pt") as f:
            assert len(list(f.keys())) > 0
    shared_studio.export(one_run, out, ("card",), force=True)  # and the next export cleans up after the kills
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]


def test_an_export_written_before_markers_is_recognised_as_this_runs(shared_studio, one_run, tmp_path):
    with shared_studio.db() as db:
        config = RunConfig.from_dict(storage.get_run(db, one_run)["config"])
    old = tmp_path / "old"
    old.mkdir()
    (old / "gal_config.json").write_text(config.to_json())
    (old / "gal_lora_kohya.safetensors").write_bytes(b"old")
    (old / "README.md").write_text("old card")
    with pytest.raises(ValueError, match="--force"):
        shared_studio.export(one_run, old, ("card",))
    shared_studio.export(one_run, old, ("card",), force=True)
    assert not (old / "gal_lora_kohya.safetensors").exists() and (old / gx.MARKER).exists()
    other = tmp_path / "other"  # the same file names but another run's config: not ours
    other.mkdir()
    config.seed += 1
    (other / "gal_config.json").write_text(config.to_json())
    with pytest.raises(ValueError, match="not a GAL Studio export"):
        shared_studio.export(one_run, other, ("card",), force=True)
    assert sorted(p.name for p in other.iterdir()) == ["gal_config.json"]
