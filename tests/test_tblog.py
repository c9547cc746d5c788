"""train.log_dir: TensorBoard event files that tensorboard's own reader reads back."""

import pytest
from conftest import tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import storage
from gal.config import TrainConfig
from gal.fields import FIELDS
from gal.training import lr_factor


def test_a_two_round_run_writes_loss_lr_round_metrics_and_a_sample_grid(shared_studio, references, tmp_path):
    config = tiny_config("uncertainty+balance")
    config.train.log_dir = str(tmp_path / "tb")
    config.train.lr_schedule = "cosine"
    run_id = shared_studio.create_run(config, references)
    assert shared_studio.advance(run_id)["status"] == "finished"
    rounds = config.gal.max_rounds
    steps = config.train.steps
    acc = EventAccumulator(str(tmp_path / "tb" / run_id), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) >= {"train/loss", "train/lr", "round/txt_aln", "round/img_aln", "round/ovf"}
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, rounds * steps + 1))  # steps count on across rounds
    with storage.open_db(shared_studio.db_path) as db:
        stored = [storage.get_round(db, run_id, r)["metrics"] for r in range(1, rounds + 1)]
    assert [e.step for e in acc.Scalars("round/txt_aln")] == list(range(1, rounds + 1))
    for e, m in zip(acc.Scalars("round/ovf"), stored, strict=True):
        assert e.value == pytest.approx(m["ovf"], abs=1e-6)
    # Δ is the weight a committed round gives its picks; the last round picks nothing (its weight is logged
    # when it has one).
    delta = {e.step: e.value for e in acc.Scalars("round/delta")}
    assert delta and all(delta[r] == pytest.approx(stored[r - 1]["weight"], rel=1e-5) for r in delta)
    lr = [e.value for e in acc.Scalars("train/lr")]
    want = [config.train.learning_rate * lr_factor(i % steps, steps, "cosine") for i in range(rounds * steps)]
    assert lr == pytest.approx(want, rel=1e-5) and lr[-1] < lr[0]  # each round's cosine, as trained
    images = acc.Images("round/samples")
    assert [e.step for e in images] == list(range(1, rounds + 1))
    assert images[0].width > 0 and images[0].height > 0


def test_log_dir_is_off_by_default_and_a_flag_and_blank_is_refused():
    assert TrainConfig().log_dir is None
    row = next(f for f in FIELDS if f.path == "train.log_dir")
    assert row.flag == "--log-dir"
    with pytest.raises(ValueError, match="train.log_dir"):
        TrainConfig(log_dir="  ").validate()
