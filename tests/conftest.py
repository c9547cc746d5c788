"""Shared fixtures: offline tiny models, a Studio over a temporary runs folder, a small run config."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing model must fail at once, not after ~45 s of retries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models gain nothing from a second thread, and OpenMP threads that spin-wait on a busy 2-core
# machine (a browser, a server process) made a round 20x slower: one thread here and in subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from gal.config import EvalConfig, GALConfig, GenerateConfig, RunConfig, TrainConfig  # noqa: E402


def tiny_config(strategy: str = "uncertainty+balance", **gal) -> RunConfig:
    """Four anchors, three images each, a few steps: a round takes ~1-2 s on 2 cores."""
    return RunConfig(
        task="object",
        soi_token="<sks>",
        subject_phrase="a <sks> star",
        anchors=["{} on grass", "{} in the sea", "{} under the night sky", "{} in the clouds"],
        model="tiny",
        oracle="tiny",
        seed=0,
        train=TrainConfig(steps=6, learning_rate=1e-3, batch_size=2),
        generate=GenerateConfig(steps=3, batch_size=16),
        gal=GALConfig(
            **{"strategy": strategy, "m": 3, "k": 2, "max_rounds": 2, "adaptive_stop": False, **gal}
        ),
        eval=EvalConfig(prompts=["{} in the snow", "{}"], images_per_prompt=1),
    )


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture(scope="session")
def shared_studio(tmp_path_factory):
    """One Studio for the session: models load once, as in the app; each test makes its own run."""
    from gal.engine import Studio

    return Studio(tmp_path_factory.mktemp("runs"), model="tiny", oracle="tiny")


@pytest.fixture(scope="session")
def reference_files(tmp_path_factory):
    from gal.toyworld.world import scenarios

    return scenarios()["object"].write_references(tmp_path_factory.mktemp("refs"))


@pytest.fixture
def references(reference_files):
    from gal.engine import ReferenceInput

    return [ReferenceInput(p, "a <sks> star on stairs", "a star on stairs") for p in reference_files]


def kill_demo_run_mid_generation(runs, model: str, total: int = 180):
    """Start a real ``gal run --demo`` on ``model`` (2 rounds, m = 10) and SIGKILL it in the middle of
    round 1's generation; returns ``(run_id, the images recorded before the kill)``."""
    import signal
    import subprocess
    import sys
    import time

    import storage

    cmd = [sys.executable, "-m", "gal", "--runs-dir", str(runs), "run", "--demo", "--model", model,
           "--oracle", "tiny", "--steps", "4", "--gen-steps", "8", "--m", "10", "--rounds", "2",
           "--no-adaptive-stop"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    run_id, before = None, []
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            time.sleep(0.05)
            if not (runs / "gal.db").exists():
                continue
            with storage.open_db(runs / "gal.db") as db:
                found = storage.list_runs(db)
                if not found:
                    continue
                run_id = found[0]["run_id"]
                rnd = storage.get_round(db, run_id, 1)
                before = storage.list_images(db, run_id, 1)
            if rnd and rnd["state"] == "generating" and 0 < len(before) < total:
                os.killpg(proc.pid, signal.SIGKILL)
                return run_id, before
        pytest.fail("the run never reached the middle of generation")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
