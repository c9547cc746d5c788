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
