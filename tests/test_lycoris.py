"""The kohya/LyCORIS keys of DoRA / LoKr / LoHa adapters, run through ComfyUI's own load_lora and
calculate_weight on the real base weights: the same ΔW as peft's merge of the trained adapter."""

import numpy as np
import pytest
import torch
from family_checks import comfy
from PIL import Image

from gal import training
from gal.config import TrainConfig
from gal.export.lycoris import lycoris_state_dict
from gal.models import load_pipeline
from gal.training import ADAPTER, TrainExample, adapter_state, train_lora


@pytest.fixture(scope="module", params=["tiny", "tiny-sdxl"])
def pipe(request):
    return load_pipeline(request.param, torch.device("cpu"), torch.float32)


def _ours(unet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path -> (base weight, peft's merged weight)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer) and ADAPTER in getattr(module, "merged_adapters", []) + list(
            getattr(module, "active_adapters", [])
        ):
            base = module.get_base_layer().weight.detach().clone()
            module.merge(adapter_names=[ADAPTER])
            merged = module.get_base_layer().weight.detach().clone()
            module.unmerge()
            out[name] = (base, merged)
    return out


@pytest.mark.parametrize("network", ["lora", "dora", "lokr", "loha"])
def test_comfyui_draws_each_variant_at_the_trained_strength(pipe, network):
    c = comfy()
    training.remove_adapter(pipe)
    reference = Image.fromarray((np.random.RandomState(1).rand(32, 32, 3) * 255).astype("uint8"))
    # alpha != rank: the scale alpha/r must reach ComfyUI's maths
    cfg = TrainConfig(steps=3, learning_rate=5e-2, batch_size=1, network=network, rank=4, alpha=2.0)
    resolution = training.of(pipe).native_resolution(pipe)
    train_lora(pipe, [TrainExample(reference, "a <sks> star", 1.0)], cfg, resolution=resolution, seed=0)
    unet = pipe.unet
    ours = _ours(unet)
    state = adapter_state(pipe)
    lora = lycoris_state_dict(state, network, cfg.alpha, cfg.rank, {m: w for m, (w, _) in ours.items()})
    to_load = {f"lora_unet_{m.replace('.', '_')}": f"{m}.weight" for m in ours}
    patches = c.lora.load_lora(lora, to_load, log_missing=True)
    assert set(patches) == {f"{m}.weight" for m in ours}
    worst = absolute = 0.0
    for module, (base, merged) in ours.items():
        patched = c.lora.calculate_weight(
            [(1.0, patches[f"{module}.weight"], 1.0, None, None)], base.clone(), module
        )
        theirs, delta = patched - base, merged - base
        assert float(delta.abs().max()) > 0  # the adapter trained: a zero ΔW would prove nothing
        worst = max(worst, float((theirs - delta).abs().max() / delta.abs().max()))
        absolute = max(absolute, float((theirs - delta).abs().max()))
    print(
        f"{training.of(pipe).name} {network}: max |ΔW_ours - ΔW_ComfyUI| / max |ΔW_ours| over {len(ours)} "
        f"modules = {worst:.2e} (absolute {absolute:.2e})"
    )
    assert worst < 1e-4
    training.remove_adapter(pipe)


@pytest.mark.parametrize("network", ["dora", "lokr"])
def test_a_variant_run_exports_diffusers_and_lycoris_keys(shared_studio, references, tmp_path, network):
    import json

    from conftest import tiny_config
    from safetensors import safe_open
    from safetensors.torch import load_file

    config = tiny_config("uncertainty", max_rounds=1)
    config.train.network = network
    run_id = shared_studio.create_run(config, references)
    assert shared_studio.advance(run_id)["status"] == "finished"
    written = shared_studio.export(run_id, tmp_path / "out", ("diffusers", "kohya"))
    kohya_file = next(p for f, p in written.items() if f == "kohya")
    lora = load_file(str(kohya_file))
    with safe_open(str(kohya_file), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == ("lora" if network == "dora" else network)
    own = {"dora": ".dora_scale", "lokr": ".lokr_w1"}[network]
    assert sum(k.endswith(own) for k in lora) == 32 and all(k.startswith("lora_unet_") for k in lora)
    # the exported diffusers file reloads as the run's adapter
    pipe = shared_studio.models.pipeline(config.model)
    trained = adapter_state(
        shared_studio.models.with_adapter(config.model, (run_id, 1), written["diffusers"].parent)
    )
    training.remove_adapter(pipe)
    shared_studio.models.mark(config.model, None)
    training.load_adapter(pipe, written["diffusers"].parent)
    again = adapter_state(pipe)
    assert set(again) == set(trained) and all(torch.equal(again[k], trained[k]) for k in trained)
