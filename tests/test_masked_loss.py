"""Masked loss (issue 28): a mask per reference (its alpha channel or NAME.mask.png) weighs the latent-space
loss, the unmasked area at train.mask_floor. Known answers on the shared helpers and through the real loss
of an epsilon family (tiny SD) and a flow-matching family (tiny FLUX.1)."""

import numpy as np
import pytest
import torch
from PIL import Image

from gal import training
from gal.config import TrainConfig
from gal.dataset import loss_masks
from gal.families.base import LOSS_MASK, fit_mask, of, reduce_loss
from gal.models import load_pipeline
from gal.references import load_mask, pair_masks
from gal.training import TrainExample, train_lora

CPU = torch.device("cpu")
TOL = 1e-5  # relative: float32 sums over a few hundred elements in a different order


def _half(b, h, w, left=True):
    mask = torch.zeros(b, 1, h, w)
    if left:
        mask[..., : w // 2] = 1
    else:
        mask[..., w // 2 :] = 1
    return mask


def test_reduce_loss_known_answers():
    error = torch.ones(2, 4, 8, 8)
    error[..., 4:] = 3.0  # left half 1, right half 3: the unmasked mean is 2
    assert reduce_loss(error, None, 0.1).tolist() == [2.0, 2.0]
    assert reduce_loss(error, _half(2, 8, 8), 0.0).tolist() == [1.0, 1.0]  # the left half's loss
    assert reduce_loss(error, _half(2, 8, 8, left=False), 0.0).tolist() == [3.0, 3.0]
    assert reduce_loss(error, torch.zeros(2, 1, 8, 8), 0.0).tolist() == [0.0, 0.0]  # no NaN from 0 / 0
    assert reduce_loss(error, torch.ones(2, 1, 8, 8), 0.1).tolist() == [2.0, 2.0]  # all ones: the plain mean
    # floor 0.5: left weighs 1, right 0.5 -> (1·1 + 0.5·3) / 1.5
    assert reduce_loss(error, _half(2, 8, 8), 0.5) == pytest.approx([2.5 / 1.5] * 2)


def test_fit_mask_averages_pixels_over_each_latent_cell_and_broadcasts():
    pixels = _half(1, 64, 64)
    assert fit_mask(pixels, torch.zeros(1, 4, 8, 8)).shape == (1, 1, 8, 8)
    assert fit_mask(pixels, torch.zeros(1, 4, 1, 8, 8)).shape == (1, 1, 1, 8, 8)  # a frames axis (Qwen)
    fitted = fit_mask(pixels, torch.zeros(1, 4, 8, 8))
    assert fitted[..., :4].eq(1).all() and fitted[..., 4:].eq(0).all()
    stripe = torch.zeros(1, 1, 64, 64)
    stripe[..., :4] = 1  # half of the first latent column (8 px wide)
    assert fit_mask(stripe, torch.zeros(1, 4, 8, 8))[0, 0, 0].tolist() == [0.5] + [0.0] * 7


@pytest.fixture(scope="module", params=["tiny", "tiny-flux"])
def pipe(request):
    pipe = load_pipeline(request.param, CPU, torch.float32)
    training.attach_adapter(pipe, TrainConfig(rank=4), seed=0, family=of(pipe))
    for name, p in of(pipe).denoiser(pipe).named_parameters():  # a non-zero adapter, so it has gradients
        if "lora_B" in name:
            p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
            p.requires_grad_(True)
    yield pipe
    training.remove_adapter(pipe)


def _loss(pipe, mask, floor, seed=0):
    family = of(pipe)
    resolution = family.native_resolution(pipe)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, *latent_shape(pipe, resolution), generator=g)
    cond = family.encode(pipe, ["a <sks> star"] * 2, resolution)
    if mask is not None:
        cond[LOSS_MASK] = mask
    cfg = TrainConfig(mask_floor=floor)
    return family.per_sample_loss(pipe, family.noise_scheduler(pipe), latents, cond, g, cfg, False)


def latent_shape(pipe, resolution):
    family = of(pipe)
    pixels = torch.zeros(1, 3, resolution, resolution)
    with torch.no_grad():
        mean, _ = family.latent_dist(pipe, pixels)
    return mean.shape[1:]


def _grads(pipe):
    params = [p for n, p in of(pipe).denoiser(pipe).named_parameters() if "lora_" in n]
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def test_all_zero_mask_with_floor_zero_gives_zero_loss_and_zero_gradient(pipe):
    denoiser = of(pipe).denoiser(pipe)
    denoiser.zero_grad(set_to_none=True)
    shape = latent_shape(pipe, of(pipe).native_resolution(pipe))
    loss = _loss(pipe, torch.zeros(2, 1, *shape[-2:]), 0.0)
    assert loss.tolist() == [0.0, 0.0]
    loss.sum().backward()
    assert _grads(pipe).abs().max().item() == 0.0
    denoiser.zero_grad(set_to_none=True)
    plain = _loss(pipe, None, 0.0)
    plain.sum().backward()
    assert _grads(pipe).abs().max().item() > 0  # the same draws without the mask do train
    denoiser.zero_grad(set_to_none=True)


def test_two_complementary_half_masks_average_to_the_unmasked_loss(pipe):
    with torch.no_grad():
        h, w = latent_shape(pipe, of(pipe).native_resolution(pipe))[-2:]
        left = _loss(pipe, _half(2, h, w), 0.0)
        right = _loss(pipe, _half(2, h, w, left=False), 0.0)
        plain = _loss(pipe, None, 0.0)
        ones = _loss(pipe, torch.ones(2, 1, h, w), 0.1)
    assert not torch.allclose(left, right)  # the halves differ: the test can tell them apart
    torch.testing.assert_close((left + right) / 2, plain, rtol=TOL, atol=0)
    torch.testing.assert_close(ones, plain, rtol=TOL, atol=0)


def test_a_half_mask_gives_that_halfs_loss_through_the_family(pipe, monkeypatch):
    """The family's element-wise error, caught on its way into reduce_loss: the masked loss is its half's
    mean."""
    import gal.families.base as base
    import gal.families.flow as flow

    seen = []
    real = base.reduce_loss

    def spy(error, mask, floor):
        seen.append(error.detach().clone())
        return real(error, mask, floor)

    monkeypatch.setattr(base, "reduce_loss", spy)
    monkeypatch.setattr(flow, "reduce_loss", spy)
    with torch.no_grad():
        h, w = latent_shape(pipe, of(pipe).native_resolution(pipe))[-2:]
        left = _loss(pipe, _half(2, h, w), 0.0)
    error = seen[-1]
    expected = error[..., : w // 2].reshape(2, -1).mean(dim=1)
    torch.testing.assert_close(left, expected, rtol=TOL, atol=0)


def test_masks_from_alpha_or_a_mask_file_and_orphan_masks_are_refused(tmp_path):
    rgba = np.zeros((16, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:, 16:, 3] = 0  # the right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    mask = load_mask(tmp_path / "alpha.png")
    assert (
        mask.size == (32, 16)
        and np.asarray(mask)[:, :16].min() == 255
        and np.asarray(mask)[:, 16:].max() == 0
    )
    Image.new("RGBA", (8, 8), (1, 2, 3, 255)).save(tmp_path / "opaque.png")
    assert load_mask(tmp_path / "opaque.png") is None  # a fully opaque alpha is no mask
    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "cat.mask.png")
    assert np.asarray(load_mask(tmp_path / "cat.png")).min() == 255  # found beside its image
    assert pair_masks([tmp_path / "cat.png"]) == [(tmp_path / "cat.png", tmp_path / "cat.mask.png")]
    assert pair_masks([tmp_path / "cat.mask.png", tmp_path / "alpha.png", tmp_path / "cat.png"]) == [
        (tmp_path / "alpha.png", None),
        (tmp_path / "cat.png", tmp_path / "cat.mask.png"),
    ]
    with pytest.raises(ValueError, match="mask dog.mask.png has no image"):
        pair_masks([tmp_path / "cat.png", tmp_path / "dog.mask.png"])
    Image.new("L", (9, 8)).save(tmp_path / "odd.mask.png")
    with pytest.raises(ValueError, match="a mask must have its image's size"):
        load_mask(tmp_path / "cat.png", tmp_path / "odd.mask.png")


def test_added_images_get_no_mask_and_no_masks_mean_the_plain_loss():
    image, half = (
        Image.new("RGB", (64, 64)),
        Image.fromarray(np.asarray(_half(1, 64, 64)[0, 0] * 255, np.uint8)),
    )
    latents = torch.zeros(3, 4, 8, 8)
    real, added = TrainExample(image, "p", 1.0, mask=half), TrainExample(image, "p", 0.1, added=True)
    masks = loss_masks([real, added, TrainExample(image, "p", 1.0)], 64, latents)
    assert masks.shape == (3, 1, 8, 8)
    assert masks[0, 0, :, :4].eq(1).all() and masks[0, 0, :, 4:].eq(0).all()
    assert masks[1:].eq(1).all()  # the added image and the unmasked reference weigh every pixel fully
    assert loss_masks([added, TrainExample(image, "p", 1.0)], 64, latents) is None


def test_mask_floor_is_a_flag_and_out_of_range_values_are_refused():
    from gal.fields import FIELDS

    row = next(f for f in FIELDS if f.path == "train.mask_floor")
    assert row.flag == "--mask-floor" and TrainConfig().mask_floor == 0.1
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="train.mask_floor must be a number from 0 to 1"):
            TrainConfig(mask_floor=bad).validate()


def test_training_on_an_all_zero_mask_at_floor_zero_has_zero_loss():
    pipe = load_pipeline("tiny", CPU, torch.float32)
    reference = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8"))
    zero = Image.new("L", (32, 32), 0)
    cfg = TrainConfig(steps=3, learning_rate=1e-2, batch_size=1, mask_floor=0.0)
    masked = train_lora(
        pipe, [TrainExample(reference, "a <sks> star", 1.0, mask=zero)], cfg, resolution=32, seed=0
    )
    assert masked.losses == [0.0, 0.0, 0.0]
    plain = train_lora(pipe, [TrainExample(reference, "a <sks> star", 1.0)], cfg, resolution=32, seed=0)
    assert min(plain.losses) > 0
    training.remove_adapter(pipe)


def test_a_runs_reference_keeps_its_mask_and_its_rounds_train_with_it(
    shared_studio, reference_files, tmp_path, monkeypatch
):
    """create_run stores NAME.mask.png beside the run's copy of the reference; its rounds train with it."""
    import shutil

    from conftest import tiny_config

    from gal.engine import ReferenceInput

    image = tmp_path / "star.png"
    shutil.copy(reference_files[0], image)
    w, h = Image.open(image).size
    Image.fromarray(np.asarray(_half(1, h, w)[0, 0] * 255, np.uint8)).save(tmp_path / "star.mask.png")
    refs = [ReferenceInput(image, "a <sks> star on stairs", "a star on stairs")]
    refs += [ReferenceInput(p, "a <sks> star on stairs", "a star on stairs") for p in reference_files[1:]]
    run_id = shared_studio.create_run(tiny_config("uncertainty"), refs)
    folder = shared_studio.run_dir(run_id)
    stored = Image.open(folder / "references/real_00.mask.png")
    assert np.array_equal(np.asarray(stored), np.asarray(Image.open(tmp_path / "star.mask.png")))
    assert not (folder / "references/real_01.mask.png").exists()
    seen = []
    real = training.loss_masks

    def spy(examples, resolution, latents):
        seen.append([e.mask is not None for e in examples])
        return real(examples, resolution, latents)

    monkeypatch.setattr(training, "loss_masks", spy)
    assert shared_studio.advance(run_id)["status"] == "finished"
    n = len(reference_files)
    assert seen[0] == [True] + [False] * (n - 1)  # round 1: the real references, the first one masked
    assert (
        len(seen) == 2 and len(seen[1]) > n and seen[1] == [True] + [False] * (len(seen[1]) - 1)
    )  # added: none


def test_the_setup_upload_pairs_a_mask_with_its_image_and_refuses_an_orphan(tmp_path):
    from ui.setup import references_from

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # the page keeps each upload in its own folder, under its own name
    Image.new("RGB", (8, 8)).save(tmp_path / "a/cat.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "b/cat.mask.png")
    files = [str(tmp_path / "a/cat.png"), str(tmp_path / "b/cat.mask.png")]
    refs = references_from(files, [["cat.png", "a <sks> cat", ""]])
    assert len(refs) == 1 and refs[0].mask == tmp_path / "b/cat.mask.png"
    with pytest.raises(ValueError, match="mask cat.mask.png has no image"):
        references_from(files[1:], [["cat.png", "a <sks> cat", ""]])


@pytest.mark.parametrize("model", sorted(__import__("gal.families", fromlist=["TINY"]).TINY))
def test_every_familys_loss_reads_the_mask(model):
    """A family whose loss forgets the mask would train on the background as before: an all-zero mask at
    floor 0 gives loss 0 through each family's own loss, and the same draws without it do not."""
    pipe = load_pipeline(model, CPU, torch.float32)
    shape = latent_shape(pipe, of(pipe).native_resolution(pipe))
    with torch.no_grad():
        masked = _loss(pipe, torch.zeros(2, 1, *shape[-2:]), 0.0)
        plain = _loss(pipe, None, 0.0)
    assert masked.tolist() == [0.0, 0.0], model
    assert (plain > 0).all(), model
