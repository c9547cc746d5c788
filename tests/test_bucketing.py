"""Aspect-ratio bucketing (issue 28): references train whole at their aspect ratio, a batch comes from one
bucket, SDXL gets each image's true original size and crop, generation is square unless --width/--height."""

import numpy as np
import pytest
import torch
from PIL import Image

from gal import training
from gal.config import GenerateConfig, TrainConfig
from gal.dataset import Bucket, bucket_size, bucket_step, crop_facts, draw_bucketed, image_to_tensor
from gal.families.base import of
from gal.generation import generate
from gal.models import load_pipeline
from gal.training import TrainExample, train_lora

CPU = torch.device("cpu")


def _wide(w=64, h=32) -> Image.Image:
    """A 2:1 image whose left column is red and right column blue (a square crop loses both)."""
    array = np.full((h, w, 3), 128, dtype=np.uint8)
    array[:, :4] = (255, 0, 0)
    array[:, -4:] = (0, 0, 255)
    return Image.fromarray(array)


def test_buckets_hold_the_native_pixel_count_at_the_images_aspect_ratio():
    assert bucket_step(512, 8) == 32 and bucket_step(1024, 8) == 64 and bucket_step(32, 2) == 4
    assert bucket_size((2000, 1000), 512, 32) == (704, 352)  # 2:1, 0.95 of 512²
    assert bucket_size((2000, 1000), 1024, 64) == (1408, 704)  # SDXL's own 2:1 bucket
    assert bucket_size((1000, 2000), 1024, 64) == (704, 1408)
    assert bucket_size((777, 777), 1328, 96) == (1328, 1328)  # a square stays the native square
    for size in [(2000, 1000), (3000, 4000), (1920, 1080), (500, 3000)]:
        w, h = bucket_size(size, 1024, 64)
        assert w % 64 == 0 and h % 64 == 0 and 0.8 <= w * h / 1024**2 <= 1.2


def test_a_2to1_reference_keeps_its_whole_content():
    image, size = _wide(), bucket_size((64, 32), 32, 4)
    assert size == (48, 24)
    pixels = image_to_tensor(image, size)
    assert pixels.shape == (3, 24, 48)
    assert pixels[0, :, 0].min() > 0.9 and pixels[2, :, -1].min() > 0.9  # both edge stripes are there
    assert crop_facts(image, size) == ((32, 64), (0, 0), (24, 48))  # nothing cropped
    square = image_to_tensor(image, 32)  # without buckets: the centre square loses both edges
    assert square[0, :, 0].max() < 0.1 and square[2, :, -1].max() < 0.1


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny", CPU, torch.float32)


def _shapes(pipe, monkeypatch):
    family, seen = of(pipe), []
    real = family.per_sample_loss

    def spy(pipe, scheduler, latents, cond, *args, **kwargs):
        seen.append((tuple(latents.shape), {k: v.detach().clone() for k, v in cond.items()}))
        return real(pipe, scheduler, latents, cond, *args, **kwargs)

    monkeypatch.setattr(family, "per_sample_loss", spy)
    return seen


def test_a_2to1_reference_trains_in_a_2to1_batch_and_a_square_one_in_a_square_batch(tiny, monkeypatch):
    seen = _shapes(tiny, monkeypatch)
    examples = [TrainExample(_wide(), "a <sks> star", 1.0), TrainExample(_wide(32, 32), "a <sks> star", 1.0)]
    cfg = TrainConfig(steps=12, learning_rate=1e-3, batch_size=2, bucketing=True)
    result = train_lora(tiny, examples, cfg, resolution=32, seed=0)
    assert np.isfinite(result.losses).all()
    shapes = {s for s, _ in seen}
    assert shapes == {(2, 4, 12, 24), (2, 4, 16, 16)}  # latents of 48×24 px (2:1) and 32×32: one bucket each
    seen.clear()
    train_lora(tiny, examples, TrainConfig(steps=2, batch_size=2), resolution=32, seed=0)
    assert {s for s, _ in seen} == {(2, 4, 16, 16)}  # off (the default): every reference a square
    training.remove_adapter(tiny)


def test_batches_come_from_one_bucket_at_each_buckets_share():
    image = Image.new("RGB", (8, 8))
    examples = [TrainExample(image, "p", 1.0) for _ in range(6)]
    buckets = [Bucket((48, 24), [0, 1, 2, 3]), Bucket((32, 32), [4, 5])]
    g = torch.Generator().manual_seed(0)
    hits = [0, 0]
    for _ in range(3000):
        batch, coef = draw_bucketed(buckets, examples, TrainConfig(batch_size=3), g)
        kind = {0 if i < 4 else 1 for i in batch.tolist()}
        assert len(kind) == 1 and float(coef.sum()) == pytest.approx(1.0)
        hits[kind.pop()] += 1
    assert hits[0] / 3000 == pytest.approx(4 / 6, abs=0.03)  # each reference keeps its rate


def test_sdxl_gets_each_images_true_original_size_and_crop(monkeypatch):
    pipe = load_pipeline("tiny-sdxl", CPU, torch.float32)
    seen = _shapes(pipe, monkeypatch)
    resolution = of(pipe).native_resolution(pipe)
    wide = _wide(4 * resolution, 2 * resolution)
    cfg = TrainConfig(steps=1, batch_size=1, bucketing=True)
    train_lora(pipe, [TrainExample(wide, "a <sks> star", 1.0)], cfg, resolution=resolution, seed=0)
    (shape, cond) = seen[0]
    w, h = bucket_size(wide.size, resolution, bucket_step(resolution, pipe.vae_scale_factor))
    assert shape[-1] * pipe.vae_scale_factor == w and shape[-2] * pipe.vae_scale_factor == h
    assert cond["time_ids"][0].tolist() == [2 * resolution, 4 * resolution, 0, 0, h, w]
    seen.clear()
    train_lora(
        pipe, [TrainExample(wide, "a <sks> star", 1.0)], TrainConfig(steps=1), resolution=resolution, seed=0
    )
    r = resolution  # off: the square the image is cropped to, as before
    assert seen[0][1]["time_ids"][0].tolist() == [r, r, 0, 0, r, r]
    training.remove_adapter(pipe)


def test_generation_is_square_unless_width_and_height_are_set(tiny):
    square = generate(tiny, ["a <sks> star"], [0], GenerateConfig(steps=2, batch_size=1), resolution=32)
    wide = generate(tiny, ["a <sks> star"], [0], GenerateConfig(steps=2, width=48, height=24), resolution=32)
    assert square[0].size == (32, 32) and wide[0].size == (48, 24)
    with pytest.raises(ValueError, match="generate.width must be a multiple of 8"):
        GenerateConfig(width=50).validate()


def test_a_bucketed_run_exports_the_original_references_and_their_masks(shared_studio, tmp_path):
    from conftest import tiny_config

    from gal.engine import ReferenceInput

    _wide(96, 48).save(tmp_path / "wide.png")
    Image.new("L", (96, 48), 255).save(tmp_path / "wide.mask.png")
    _wide(32, 32).save(tmp_path / "square.png")
    config = tiny_config("uncertainty", max_rounds=1)
    config.train.bucketing = True
    prompt, non_soi = "a <sks> star on stairs", "a star on stairs"
    refs = [ReferenceInput(tmp_path / n, prompt, non_soi) for n in ("wide.png", "square.png")]
    run_id = shared_studio.create_run(config, refs)
    assert shared_studio.advance(run_id)["status"] == "finished"
    written = shared_studio.export(run_id, tmp_path / "out", ("dataset",))
    folder = written["dataset"]
    assert Image.open(folder / "real_00.png").size == (96, 48)  # the original, not a bucket or a square
    assert Image.open(folder / "real_00.mask.png").size == (96, 48)
    assert not (folder / "real_01.mask.png").exists()


def test_bucketing_and_image_size_are_flags_that_reach_the_config():
    import argparse

    from gal.config import RunConfig
    from gal.fields import add_flags, apply_flags

    parser = argparse.ArgumentParser()
    add_flags(parser)
    config = RunConfig()
    apply_flags(
        config, parser.parse_args(["--bucketing", "--width", "48", "--height", "24", "--mask-floor", "0"])
    )
    assert config.train.bucketing is True and config.train.mask_floor == 0.0
    assert (config.generate.width, config.generate.height) == (48, 24)
    config.train.validate()
    config.generate.validate()
    default = RunConfig()
    apply_flags(default, parser.parse_args([]))
    assert default.train.bucketing is False and default.generate.width is None  # off / square by default
