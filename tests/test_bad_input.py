"""Bad input gets a clear message that says what to fix, and loses nothing already saved."""

import sqlite3
import time

import pytest
from conftest import tiny_config
from PIL import Image

import storage
from gal.config import RunConfig
from gal.engine import ReferenceInput, Studio
from gal.models import load_pipeline
from gal.oracle import ClipOracle
from gal.runfolder import check_run_id, load_image, safe_join


def test_not_an_image(tmp_path, shared_studio):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    with pytest.raises(ValueError, match="not a readable image"):
        shared_studio.create_run(tiny_config(), [ReferenceInput(bad, "a <sks> star on stairs")])


def test_corrupt_image(tmp_path, reference_files):
    broken = tmp_path / "broken.png"
    broken.write_bytes(reference_files[0].read_bytes()[:60])
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(broken)


def test_decompression_bomb_is_refused(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("L", (9000, 5000)).save(huge)  # 45 MP of zeros: a few KB on disk
    with pytest.raises(ValueError, match="downscale"):
        load_image(huge)


def test_zero_references(shared_studio):
    with pytest.raises(ValueError, match="at least one image"):
        shared_studio.create_run(tiny_config(), [])


def test_soi_token_missing_from_prompt(shared_studio, reference_files):
    with pytest.raises(ValueError, match="lacks the SoI token '<sks>'"):
        shared_studio.create_run(tiny_config(), [ReferenceInput(reference_files[0], "a star on stairs")])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c.gal, "k", 9), "k=9 is larger than the 4 anchors"),
        (lambda c: c.anchors.__setitem__(1, "  "), "anchor 2 is empty"),
        (lambda c: c.anchors.__setitem__(2, "{} ON GRASS"), "anchor 3 repeats anchor 1"),
        (lambda c: setattr(c.gal, "lam", -0.1), "λ must be a finite number >= 0"),
        (lambda c: setattr(c.gal, "lam", float("nan")), "λ must be a finite number >= 0"),
        (lambda c: setattr(c.gal, "m", 0), "m must be a whole number >= 1"),
        (lambda c: setattr(c, "subject_phrase", "a star"), "lacks the SoI token"),
        (lambda c: setattr(c.gal, "strategy", "greedy"), "unknown strategy 'greedy'"),
        (lambda c: setattr(c.train, "resolution", 30), "multiple of 8"),
        (lambda c: setattr(c, "anchors", []), "no anchors"),
    ],
)
def test_config_errors_name_the_fix(change, message):
    config = tiny_config()
    change(config)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_config_round_trips_through_json():
    config = tiny_config()
    assert RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown config keys: colour"):
        RunConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_unknown_run_id(shared_studio):
    with pytest.raises(ValueError, match="run 'nope' does not exist; `gal runs` lists the runs"):
        shared_studio.advance("nope")


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "..", "x" * 200])
def test_run_ids_cannot_leave_the_runs_folder(name):
    with pytest.raises(ValueError, match="invalid run id"):
        check_run_id(name)


def test_files_cannot_leave_the_run_folder(tmp_path):
    with pytest.raises(ValueError, match="leaves the run folder"):
        safe_join(tmp_path, "../../etc/passwd")
    assert safe_join(tmp_path, "rounds/r01/a.png") == (tmp_path / "rounds/r01/a.png").resolve()


def test_locked_database_fails_clearly_and_keeps_earlier_verdicts(tmp_path, references):
    studio = Studio(tmp_path / "runs", model="tiny", oracle="tiny")
    run_id = studio.create_run(tiny_config("uncertainty", pause_for_review=True), references)
    studio.advance(run_id)
    first, second = studio.review_state(run_id)["anchors"][0]["images"][:2]
    studio.decide(run_id, first["id"], 0)
    blocker = sqlite3.connect(studio.db_path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        studio.db = lambda: storage.open_db(studio.db_path, busy_timeout_ms=100)
        with pytest.raises(storage.StorageError, match="locked"):
            studio.decide(run_id, second["id"], 0)
    finally:
        blocker.rollback()
        blocker.close()
    state = studio.review_state(run_id)["anchors"][0]["images"]
    assert state[0]["person_verdict"] == 0 and state[1]["person_verdict"] is None
    studio.decide(run_id, second["id"], 0)  # works again once the lock is gone
    assert studio.review_state(run_id)["anchors"][0]["images"][1]["person_verdict"] == 0


def test_decisions_only_while_the_round_is_in_review(shared_studio, references):
    run_id = shared_studio.create_run(tiny_config("uncertainty", max_rounds=1), references)
    shared_studio.advance(run_id)
    image = shared_studio.review_state(run_id, 1)["anchors"][0]["images"][0]
    with pytest.raises(ValueError, match="not in review"):
        shared_studio.decide(run_id, image["id"], 1)


def test_human_commit_without_accepted_images(shared_studio, references):
    run_id = shared_studio.create_run(tiny_config("human+balance"), references)
    shared_studio.advance(run_id)
    with pytest.raises(ValueError, match="accept at least one image"):
        shared_studio.commit_round(run_id)
    assert shared_studio.review_state(run_id)["round"]["state"] == "review"  # nothing lost


@pytest.mark.parametrize("spec", ["./no/such/model", "/definitely/missing", "someone/missing-model-xyz"])
def test_missing_model_fails_fast_with_the_fix(spec):
    import torch

    started = time.perf_counter()
    with pytest.raises(ValueError, match="tiny"):
        load_pipeline(spec, torch.device("cpu"), torch.float32)
    assert time.perf_counter() - started < 10  # measured ~0.01 s; generous bound for a busy machine


@pytest.mark.parametrize("spec", ["./no/such/clip", "NotAModel-B-99/openai"])
def test_missing_oracle_names_the_fix(spec):
    with pytest.raises(ValueError, match="tiny"):
        ClipOracle.from_spec(spec)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c.gal, "m", 1001), "m must be at most 1000, got 1001"),
        (lambda c: setattr(c.gal, "m", True), "m must be a whole number >= 1, got True"),
        (lambda c: setattr(c.gal, "max_rounds", 10**6), "max_rounds must be at most 1000"),
        (lambda c: setattr(c.gal, "lam", 1e4), "λ must be at most 1000"),
        (lambda c: setattr(c.gal, "lam", True), "λ must be a finite number >= 0, got True"),
        (lambda c: setattr(c.train, "steps", 10**7), "train.steps must be at most 1000000"),
        (lambda c: setattr(c.train, "batch_size", 4096), "train.batch_size must be at most 1024"),
        (lambda c: setattr(c.train, "learning_rate", 3.0), "train.learning_rate must be at most 1, got 3.0"),
        (lambda c: setattr(c.train, "rank", 10**5), "train.rank must be at most 1024"),
        (lambda c: setattr(c.train, "resolution", 8192), "train.resolution must be at most 4096"),
        (
            lambda c: setattr(c.train, "num_class_images", 10**6),
            "train.num_class_images must be a whole number 0-10000",
        ),
        (
            lambda c: setattr(c.train, "prior_loss_weight", float("nan")),
            "train.prior_loss_weight must be a number",
        ),
        (lambda c: setattr(c.generate, "steps", 5000), "generate.steps must be at most 1000"),
        (lambda c: setattr(c.generate, "batch_size", 2048), "generate.batch_size must be at most 1024"),
        (lambda c: setattr(c.generate, "guidance_scale", 1e9), "generate.guidance_scale must be at most 100"),
        (
            lambda c: setattr(c.eval, "images_per_prompt", 10**4),
            "eval.images_per_prompt must be at most 1000",
        ),
        (lambda c: setattr(c, "seed", True), "seed must be a whole number from 0 to 4294967295, got True"),
        (lambda c: setattr(c, "seed", 2**63), "seed must be a whole number from 0 to 4294967295"),
        (lambda c: setattr(c, "seed", 1.5), "seed must be a whole number"),
        (
            lambda c: setattr(c, "anchors", [f"{{}} in place {i}" for i in range(1001)]),
            "1001 anchors: at most 1000",
        ),
    ],
)
def test_config_upper_bounds_name_the_fix(change, message):
    config = tiny_config()
    change(config)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config.validate()


def test_config_bounds_themselves_are_accepted():
    config = tiny_config()
    config.seed, config.gal.m, config.gal.max_rounds, config.gal.lam = 2**32 - 1, 1000, 1000, 1e3
    config.train.steps, config.train.batch_size, config.train.learning_rate = 1_000_000, 1024, 1.0
    config.train.resolution, config.generate.steps, config.generate.guidance_scale = 4096, 1000, 100
    config.eval.images_per_prompt = 1000
    config.validate()


def _refuse_whole_reads(monkeypatch, big):
    import pathlib

    read_bytes = pathlib.Path.read_bytes

    def guarded(self):
        assert self != big, f"{big.name} was read whole before being refused"
        return read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", guarded)


def test_a_huge_non_image_is_refused_from_its_header(tmp_path, monkeypatch):
    big = tmp_path / "video.png"
    with open(big, "wb") as f:  # 400 MB, sparse: no disk used
        f.write(b"not an image at all")
        f.truncate(400_000_000)
    _refuse_whole_reads(monkeypatch, big)
    with pytest.raises(ValueError, match="video.png is not a readable image"):
        load_image(big)


def test_an_image_padded_with_hundreds_of_megabytes_is_refused_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "padded.png"
    Image.new("RGB", (64, 64)).save(big)
    with open(big, "r+b") as f:
        f.truncate(400_000_000)  # a valid header, then 400 MB of something else
    _refuse_whole_reads(monkeypatch, big)
    with pytest.raises(ValueError, match=r"padded.png is 400 MB for a 64×64 image \(at most 16 MB\)"):
        load_image(big)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (64, 64), "red").save(ok)
    assert load_image(ok)[0].getpixel((0, 0)) == (255, 0, 0)
