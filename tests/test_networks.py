"""train.network: LoRA, DoRA, LoKr and LoHa (peft) train on the tiny SD, change its images, and reload."""

import numpy as np
import pytest
import torch
from PIL import Image

from gal import training
from gal.config import GenerateConfig, TrainConfig
from gal.fields import FIELDS
from gal.generation import generate
from gal.models import load_pipeline
from gal.training import TrainExample, adapter_state, load_adapter, save_adapter, train_lora

PARAMETERS = {"lora": "lora_B", "dora": "lora_magnitude_vector", "lokr": "lokr_w", "loha": "hada_w1_a"}


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny", torch.device("cpu"), torch.float32)


def _draw(pipe) -> np.ndarray:
    images = generate(pipe, ["a <sks> star"], [0], GenerateConfig(steps=2, batch_size=1), resolution=32)
    return np.asarray(images[0], dtype=np.float64)


@pytest.mark.parametrize("network", ["lora", "dora", "lokr", "loha"])
def test_each_network_trains_changes_the_images_and_reloads_the_same(pipe, network, tmp_path):
    training.remove_adapter(pipe)
    base = _draw(pipe)
    reference = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8"))
    cfg = TrainConfig(steps=4, learning_rate=1e-2, batch_size=1, network=network)
    cfg.validate()
    result = train_lora(pipe, [TrainExample(reference, "a <sks> star", 1.0)], cfg, resolution=32, seed=0)
    assert len(result.losses) == 4 and np.isfinite(result.losses).all()
    state = adapter_state(pipe)
    assert any(PARAMETERS[network] in k for k in state)  # the variant's own parameters, not a plain LoRA
    trained = _draw(pipe)
    assert np.abs(trained - base).max() > 0  # the adapter changed what the model draws
    save_adapter(pipe, tmp_path, cfg)
    training.remove_adapter(pipe)
    assert np.array_equal(_draw(pipe), base)  # removed: the base again
    load_adapter(pipe, tmp_path)
    again = adapter_state(pipe)
    assert set(again) == set(state)
    assert max(float((again[k] - state[k]).abs().max()) for k in state) == 0.0
    assert np.array_equal(_draw(pipe), trained)  # the reloaded adapter draws the trained images
    training.remove_adapter(pipe)


def test_network_is_a_flag_and_bad_values_are_refused():
    row = next(f for f in FIELDS if f.path == "train.network")
    assert row.flag == "--network" and row.values() == ("lora", "dora", "lokr", "loha")
    with pytest.raises(ValueError, match="lora | dora | lokr | loha"):
        TrainConfig(network="ia3").validate()
    with pytest.raises(ValueError, match="train_text_encoder"):
        TrainConfig(network="lokr", train_text_encoder=True).validate()
