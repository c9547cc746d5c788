"""How a training step mixes real and added references (train.reference_sampling)."""

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

import storage
from gal import training
from gal.config import TrainConfig
from gal.training import TrainExample, draw_batch, lr_factor

BLANK = Image.new("RGB", (8, 8))


def _examples(n_real: int, added_weights: list[float]) -> list[TrainExample]:
    real = [TrainExample(BLANK, "real", 1.0) for _ in range(n_real)]
    return real + [TrainExample(BLANK, "added", w, added=True) for w in added_weights]


def _expected_loss(examples, cfg, losses, draws=20_000, n_class=0, class_losses=None):
    """Monte-Carlo mean of Σ coef · weight · ℓ over many draws, and the share of slots real refs got."""
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([e.weight for e in examples] + [1.0] * n_class)
    values = torch.tensor(list(losses) + list(class_losses or []))
    total, real_slots, slots = 0.0, 0, 0
    for _ in range(draws):
        batch, coef = draw_batch(examples, cfg, g, n_class=n_class)
        total += float((coef * weights[batch] * values[batch]).sum())
        inst = batch[batch < len(examples)]
        real_slots += sum(not examples[i].added for i in inst.tolist())
        slots += len(inst)
    return total / draws, real_slots / slots


def test_pooled_estimates_the_mean_over_all_references_so_added_ones_dilute_the_real_ones():
    cfg = TrainConfig(batch_size=4, reference_sampling="pooled")
    examples = _examples(4, [0.001] * 6)
    losses = np.arange(1, 11, dtype=float)
    mean, real_share = _expected_loss(examples, cfg, losses)
    w = np.array([e.weight for e in examples])
    assert mean == pytest.approx((w * losses).sum() / 10, rel=0.03)
    assert real_share == pytest.approx(0.4, abs=0.01)  # 6 near-zero-weight images take 60 % of the slots


def test_real_rate_keeps_the_real_references_gradient_and_adds_the_weighted_ones_on_top():
    cfg = TrainConfig(batch_size=4, reference_sampling="real-rate")
    examples = _examples(4, [0.5, 0.5, 0.25])
    losses = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 40.0])
    mean, _ = _expected_loss(examples, cfg, losses)
    w = np.array([e.weight for e in examples])
    assert mean == pytest.approx((w * losses).sum() / 4, rel=0.03)  # Σ w ℓ / n_real
    g = torch.Generator().manual_seed(1)
    batch, coef = draw_batch(examples, cfg, g)
    assert len(batch) == 4 + 2  # batch_size real + half a batch of added ones
    assert all(not examples[i].added for i in batch[:4].tolist()) and all(
        examples[i].added for i in batch[4:].tolist()
    )
    assert float(coef[:4].sum()) == pytest.approx(1.0)  # the real half is round 1's loss exactly


def test_real_rate_with_nothing_added_is_round_one_and_class_images_average_in():
    examples = _examples(3, [])
    for sampling in ("pooled", "real-rate"):
        cfg = TrainConfig(batch_size=2, reference_sampling=sampling)
        a = draw_batch(examples, cfg, torch.Generator().manual_seed(5), n_class=4)
        b = draw_batch(examples, TrainConfig(batch_size=2), torch.Generator().manual_seed(5), n_class=4)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    batch, coef = a
    assert len(batch) == 4 and (batch[2:] >= 3).all()  # one class image per instance sample
    assert float(coef.sum()) == pytest.approx(1.0)
    mean, _ = _expected_loss(
        examples, TrainConfig(batch_size=2), [1.0, 1.0, 1.0], n_class=4, class_losses=[3.0] * 4
    )
    assert mean == pytest.approx((1.0 + 3.0) / 2, rel=0.02)  # (instance loss + prior loss) / 2


def test_bad_reference_sampling_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="pooled or real-rate"):
        TrainConfig(reference_sampling="uniform").validate()


def test_real_rate_run_trains_round_two_on_both_halves(shared_studio, references, monkeypatch):
    seen = []
    real_draw = training.draw_batch

    def spy(examples, cfg, generator, *, n_class=0):
        batch, coef = real_draw(examples, cfg, generator, n_class=n_class)
        seen.append((sum(e.added for e in examples), len(batch), cfg.reference_sampling))
        return batch, coef

    monkeypatch.setattr(training, "draw_batch", spy)
    config = tiny_config("uncertainty")
    config.train.reference_sampling = "real-rate"
    run_id = shared_studio.create_run(config, references)
    assert shared_studio.advance(run_id)["status"] == "finished"
    steps = config.train.steps
    assert len(seen) == 2 * steps
    assert {s[1] for s in seen[:steps]} == {2}  # round 1: only the real references
    assert {s[:2] for s in seen[steps:]} == {
        (2, 2 + 1)
    }  # round 2: 2 added images, a real batch of 2 + 1 added
    with storage.open_db(shared_studio.db_path) as db:
        stored = storage.get_run(db, run_id)["config"]
        assert stored["train"]["reference_sampling"] == "real-rate"
        assert np.isfinite(storage.get_round(db, run_id, 2)["metrics"]["train_loss"])


def test_cosine_schedule_warms_up_then_decays_to_zero_and_constant_stays_put():
    total = 900
    factors = [lr_factor(s, total, "cosine") for s in range(total)]
    warm = total // 20
    assert factors[0] == pytest.approx(1 / warm) and factors[warm - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warm - 1 :], factors[warm:]))  # never rises after warm-up
    assert factors[-1] < 1e-4 and factors[warm + (total - warm) // 2] == pytest.approx(0.5, abs=0.01)
    assert {lr_factor(s, total, "constant") for s in range(0, total, 50)} == {1.0}
    with pytest.raises(ValueError, match="constant or cosine"):
        TrainConfig(lr_schedule="linear").validate()


def _adapter_and_images(studio, run_id):
    from safetensors.torch import load_file

    folder = studio.folder(run_id)
    adapters = {
        p.parent.parent.name: load_file(str(p))
        for p in sorted(folder.root.glob("rounds/r*/adapter/*.safetensors"))
    }
    images = {
        str(p.relative_to(folder.root)): np.asarray(Image.open(p)).tobytes()
        for p in sorted(folder.root.glob("rounds/**/*.png"))
    }
    return adapters, images


def test_cancel_mid_training_then_continue_resumes_at_the_step_and_ends_bit_for_bit(
    shared_studio, references
):
    """Cancel at step 3 of 6 (between the every-2-steps saves: the cancel saves its own state), then
    Continue (the engine's advance, as the app's button and ``gal run --resume`` call it): training goes
    on from step 3, the job log says so, and the run ends with the adapters and images of an
    uninterrupted run exactly."""
    config = tiny_config("uncertainty")
    plain = shared_studio.create_run(config, references)
    assert shared_studio.advance(plain)["status"] == "finished"

    run_id = shared_studio.create_run(config, references)
    steps_seen = []

    def cancel_at_three(stage, done, total, info):
        if stage == "train":
            steps_seen.append(done)
            if done == 3 and info.get("round") == 1:
                shared_studio.cancel(run_id)

    with pytest.raises(training.Cancelled, match="step 3/6"):
        shared_studio.advance(run_id, cancel_at_three)
    state_file = shared_studio.folder(run_id).root / "rounds" / "r01" / "train_state.pt"
    assert torch.load(state_file, weights_only=True)["step"] == 3
    steps_seen.clear()
    assert shared_studio.advance(run_id, lambda stage, done, total, info: steps_seen.append(done)
                                 if stage == "train" else None)["status"] == "finished"  # fmt: skip
    assert steps_seen[:4] == [3, 4, 5, 6]  # not 0/6 again: step 3 reported as the resume point, then 4..6
    assert any("train: resumed at step 3/6" in line for line in shared_studio.job(run_id)["log"])
    assert not state_file.exists()
    adapters, images = _adapter_and_images(shared_studio, run_id)
    adapters0, images0 = _adapter_and_images(shared_studio, plain)
    assert sorted(adapters) == sorted(adapters0) == ["r01", "r02"] and images.keys() == images0.keys()
    for r in adapters0:
        assert adapters[r].keys() == adapters0[r].keys()
        assert all(torch.equal(adapters[r][k], adapters0[r][k]) for k in adapters0[r])
    assert images == images0


def test_a_saved_state_of_another_round_or_config_is_never_used(tmp_path):
    from gal.trainstate import TrainState, fingerprint

    examples = _examples(2, [0.5])
    mine = fingerprint("run-a", 1, tiny_config().to_json(), examples, 6)
    others = [
        fingerprint("run-b", 1, tiny_config().to_json(), examples, 6),
        fingerprint("run-a", 2, tiny_config().to_json(), examples, 6),
        fingerprint("run-a", 1, tiny_config("uncertainty").to_json(), examples, 6),
        fingerprint("run-a", 1, tiny_config().to_json(), _examples(2, [0.25]), 6),
        fingerprint("run-a", 1, tiny_config().to_json(), examples, 8),
    ]
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "train_state.pt"
    for other in others:
        assert other != mine
        TrainState(path, other, 2).save(2, [p], opt, sched, g, [0.1, 0.2])
        assert TrainState(path, mine, 2).load() is None
    TrainState(path, mine, 2).save(2, [p], opt, sched, g, [0.1, 0.2])
    assert TrainState(path, mine, 2).load()["step"] == 2
    assert TrainState(path, mine, 0).load() is None  # checkpoint_every 0: off, a stale file is ignored
    path.write_bytes(b"torn")
    assert TrainState(path, mine, 2).load() is None
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(checkpoint_every=-1).validate()
