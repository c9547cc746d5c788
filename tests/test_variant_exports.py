"""Issue 28: the fused and single-file exports merge every variant (LoRA, DoRA, LoKr, LoHa), and FLUX.1's
LyCORIS keys (``lycoris_<module>``) load in ComfyUI's own maths at the trained strength.

ΔW is computed here from the exported adapter's factors by the variants' own formulas (not through peft):
LoRA s·B·A; DoRA m ⊙ (W + s·B·A) / ‖W + s·B·A‖ (per output row) − W; LoKr s·(w1 ⊗ w2); LoHa
s·(w1a·w1b) ⊙ (w2a·w2b), with s = alpha / r."""

import json

import numpy as np
import pytest
import torch
from family_checks import comfy
from PIL import Image

from gal import training
from gal.config import RunConfig, TrainConfig
from gal.export.kohya import variant_state_dict
from gal.export.lycoris import _by_module
from gal.families.base import of
from gal.models import load_pipeline
from gal.training import TrainExample, adapter_state, train_lora

NETWORKS = ["lora", "dora", "lokr", "loha"]


def _factor(kinds, name):
    return kinds[name] if name in kinds else kinds[f"{name}_a"] @ kinds[f"{name}_b"]


def delta_w(network: str, kinds: dict, base: torch.Tensor, scale: float) -> torch.Tensor:
    """ΔW of one module from its adapter factors (float64)."""
    kinds = {k: v.double() for k, v in kinds.items()}
    base = base.double()
    if network in ("lora", "dora"):
        delta = scale * kinds["lora_B"] @ kinds["lora_A"]
        if network == "lora":
            return delta
        merged = base + delta
        return kinds["lora_magnitude_vector"][:, None] * merged / merged.norm(dim=1, keepdim=True) - base
    if network == "lokr":
        return scale * torch.kron(_factor(kinds, "lokr_w1"), _factor(kinds, "lokr_w2"))
    return scale * (kinds["hada_w1_a"] @ kinds["hada_w1_b"]) * (kinds["hada_w2_a"] @ kinds["hada_w2_b"])


def _adapter(path):
    """The exported diffusers adapter file: {part: {module: {kind: tensor}}}, and its (alpha, r) per part."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    state = load_file(str(path))
    part = next(iter(state)).partition(".")[0]
    modules = _by_module({k.partition(".")[2]: v for k, v in state.items()})
    alpha = float(meta.get(f"{part}.alpha", meta.get(f"{part}.lora_alpha")))
    return modules, alpha / float(meta[f"{part}.r"])


@pytest.mark.parametrize("network", NETWORKS)
def test_fused_and_single_file_exports_merge_each_variant(shared_studio, references, tmp_path, network):
    from conftest import tiny_config
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    config = tiny_config("uncertainty", max_rounds=1)
    config.train.network, config.train.rank, config.train.alpha = network, 4, 2.0  # s = 0.5
    config.train.learning_rate = 5e-2  # a ΔW well above float noise
    run_id = shared_studio.create_run(config, references)
    assert shared_studio.advance(run_id)["status"] == "finished"
    written = shared_studio.export(run_id, tmp_path / "out", ("diffusers", "fused", "checkpoint"))
    modules, scale = _adapter(written["diffusers"])
    base = load_pipeline("tiny", torch.device("cpu"), torch.float32).unet.state_dict()
    fused = load_file(str(written["fused"] / "unet" / "diffusion_pytorch_model.safetensors"))
    ckpt = written["checkpoint"]
    config_dir = str(written["fused"])  # the fused folder beside it holds the configs
    single = StableDiffusionPipeline.from_single_file(str(ckpt), config=config_dir, safety_checker=None)
    single = single.unet.state_dict()
    worst = {"fused": 0.0, "single-file": 0.0}
    for module, kinds in modules.items():
        w = base[f"{module}.weight"]
        delta = delta_w(network, kinds, w, scale)
        assert float(delta.abs().max()) > 1e-4, module  # trained: a zero ΔW would prove nothing
        for name, merged in (("fused", fused), ("single-file", single)):
            err = (merged[f"{module}.weight"].double() - (w.double() + delta)).abs().max() / delta.abs().max()
            worst[name] = max(worst[name], float(err))
    print(f"{network}: max |merged - (W + ΔW)| / max |ΔW| over {len(modules)} modules: {worst}")
    assert worst["fused"] < 1e-4 and worst["single-file"] < 1e-4


def _comfy_flux(c):
    uc = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
              hidden_size=32, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[4, 4, 8],
              theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)  # fmt: skip
    import comfy.supported_models  # noqa: F401  (loads the submodule onto c)

    return c.supported_models.Flux(uc).get_model({})


@pytest.mark.parametrize("network", NETWORKS)
def test_flux_lycoris_keys_load_in_comfyui_at_the_trained_strength(network):
    """Every ``lycoris_<module>`` key lands where ComfyUI's FLUX.1 key map says (slices of its fused qkv
    included) and ComfyUI's calculate_weight, on the real base weights, adds this module's ΔW."""
    import logging

    c = comfy()
    model = _comfy_flux(c)
    pipe = load_pipeline("tiny-flux", torch.device("cpu"), torch.float32)
    reference = Image.fromarray((np.random.RandomState(1).rand(32, 32, 3) * 255).astype("uint8"))
    cfg = TrainConfig(steps=3, learning_rate=5e-2, batch_size=1, network=network, rank=4, alpha=2.0)
    train_lora(pipe, [TrainExample(reference, "a <sks> star", 1.0)], cfg, resolution=32, seed=0)
    transformer = pipe.transformer
    layers = dict(transformer.named_modules())
    state = adapter_state(pipe)
    modules = _by_module(state)
    base = {m: layers[m].get_base_layer().weight.detach().clone() for m in modules}
    run = RunConfig(train=cfg)  # the kohya export's own path: alpha and r from the config, DoRA's W from pipe
    lora = variant_state_dict({f"transformer.{k}": v for k, v in state.items()}, {}, run, of(pipe), pipe)
    assert all(k.startswith("lycoris_") for k in lora)

    key_map = c.lora.model_lora_keys_unet(model, {})
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        patches = c.lora.load_lora(lora, key_map, log_missing=True)
    finally:
        logging.getLogger().removeHandler(handler)
    assert not [r for r in records if r.startswith("lora key not loaded")]
    mapping = c.utils.flux_to_diffusers(model.model_config.unet_config, output_prefix="diffusion_model.")
    sd = model.state_dict()
    weights, placed = {}, {}
    for module, w in base.items():  # ComfyUI's weights hold our base weights where its key map puts them
        target = mapping[f"{module}.weight"]
        name, offset = (target, None) if isinstance(target, str) else target
        weights.setdefault(name, torch.zeros(sd[name].shape, dtype=torch.float32))
        view = weights[name] if offset is None else weights[name].narrow(*offset)
        view.copy_(w)
        placed[module] = (name, offset)
    by_name: dict[str, list] = {}
    for target, adapter in patches.items():
        name, offset = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        by_name.setdefault(name, []).append((1.0, adapter, 1.0, offset, None))
    assert set(by_name) == set(weights)
    patched = {n: c.lora.calculate_weight(p, weights[n].clone(), n) for n, p in by_name.items()}
    scale, worst = cfg.alpha / cfg.rank, 0.0
    for module, kinds in modules.items():
        name, offset = placed[module]
        ours = delta_w(network, kinds, base[module], scale)
        view = patched[name] if offset is None else patched[name].narrow(*offset)
        theirs = view.double() - base[module].double()
        assert float(ours.abs().max()) > 1e-4, module
        worst = max(worst, float((theirs - ours).abs().max() / ours.abs().max()))
    print(f"FLUX.1 {network}: max |ΔW_ComfyUI - ΔW| / max |ΔW| over {len(modules)} modules = {worst:.2e}")
    assert worst < 1e-4
    training.remove_adapter(pipe)
