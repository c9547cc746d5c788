"""Checks every new family's test file runs on its ``tiny-<family>`` model: a 2-round GAL run whose LoRA
changes the images, resume after a cancel in a fresh Studio, exports reloaded by diffusers'
``load_lora_weights`` to the run's own images in a fresh process, and ComfyUI's own key map (a ComfyUI
tree at ``$GAL_COMFYUI``, default ``~/.cache/gal-studio/comfyui``; extract ``comfy/`` from the
``Comfy-Org/ComfyUI`` repository there) accepting every key with the adapter's strength."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

import storage
from gal.config import RunConfig
from gal.generation import generate
from gal.training import LORA_FILE, adapter_state

COMFYUI = Path(os.environ.get("GAL_COMFYUI", Path.home() / ".cache" / "gal-studio" / "comfyui"))


def family_config(model: str, lr: float = 1e-2, alpha: float | None = None, **gal) -> RunConfig:
    config = tiny_config(**gal)
    config.model = model
    config.train.learning_rate = lr  # 6 steps at 1e-3 barely move the tiny models' images
    if alpha is not None:
        config.train.alpha = alpha
    return config


@dataclass
class SharedRun:
    """One 2-round run per family test file: cancelled in round 1's generation, finished by a fresh Studio."""

    studio: object  # the fresh Studio that finished the run
    run_id: str
    config: RunConfig
    before: dict  # image id -> file recorded before the cancel
    after: dict  # image id -> file of round 1 once finished
    round1_retrained: bool


def shared_run(tmp_path_factory, references, model: str, lr: float = 1e-2, alpha=None) -> SharedRun:
    """The run every loop/export test of a family file reads (a module-scoped fixture builds it once): the
    cancel-and-resume path and the full 2-round run in one, instead of a run per test."""
    from gal.engine import Studio
    from gal.training import Cancelled

    root = tmp_path_factory.mktemp(model)
    studio = Studio(root, model=model, oracle="tiny")
    config = family_config(model, lr, alpha)
    config.generate.batch_size = 4
    run_id = studio.create_run(config, references)

    def progress(stage, done, total, info):
        if stage == "generate" and done >= 4:
            studio.cancel(run_id)

    with pytest.raises(Cancelled):
        studio.advance(run_id, progress)
    with storage.open_db(studio.db_path) as db:
        assert storage.get_round(db, run_id, 1)["state"] == "generating"
        before = {im["id"]: im["file"] for im in storage.list_images(db, run_id, 1)}
        adapter = studio.run_dir(run_id) / storage.get_round(db, run_id, 1)["adapter_path"] / LORA_FILE
    mtime = adapter.stat().st_mtime_ns
    fresh = Studio(root, model=model, oracle="tiny")
    assert fresh.advance(run_id)["status"] == "finished"
    with storage.open_db(fresh.db_path) as db:
        after = {im["id"]: im["file"] for im in storage.list_images(db, run_id, 1)}
    return SharedRun(fresh, run_id, config, before, after, adapter.stat().st_mtime_ns != mtime)


def shared_run_fixture(model: str, lr: float = 1e-2, alpha: float | None = None):
    """A module-scoped ``finished`` fixture: the family file's one ``shared_run`` on the session's reference
    images (``finished = shared_run_fixture(MODEL, …)`` in the test file)."""

    @pytest.fixture(scope="module")
    def finished(tmp_path_factory, reference_files) -> SharedRun:
        from gal.engine import ReferenceInput

        refs = [ReferenceInput(p, "a <sks> star on stairs", "a star on stairs") for p in reference_files]
        return shared_run(tmp_path_factory, refs, model, lr, alpha)

    return finished


def resumed_where_it_stopped(run: SharedRun) -> None:
    """The shared run's cancel + resume: images drawn before the cancel kept, the rest drawn, round 1's
    adapter read from disk (not retrained)."""
    assert 0 < len(run.before) < 12
    assert len(run.after) == 12 and {i: f for i, f in run.after.items() if i in run.before} == run.before
    assert not run.round1_retrained


def two_rounds(studio, references, model: str, family, lr: float = 1e-2) -> tuple[str, RunConfig]:
    config = family_config(model, lr)
    run_id = studio.create_run(config, references)
    run = studio.advance(run_id)
    assert run["status"] == "finished"
    check_two_rounds(studio, run_id, config, family)
    return run_id, config


def check_two_rounds(studio, run_id: str, config: RunConfig, family) -> None:
    """A finished 2-round run: both rounds done, k selections weighed at round 1's openness, selected
    anchors left the pool, the LoRA file has the family's keys and visibly changes the images."""
    model = config.model
    with storage.open_db(studio.db_path) as db:
        rounds = storage.list_rounds(db, run_id)
        refs = storage.list_references(db, run_id)
        images_r2 = storage.list_images(db, run_id, 2)
        selections = storage.list_selections(db, run_id)
    assert [r["state"] for r in rounds] == ["done", "done"]
    assert len(selections) == config.gal.k
    assert all(np.isfinite(r["metrics"]["train_loss"]) for r in rounds)
    added = [x for x in refs if x["source"] == "synthetic"]
    assert added and [x["weight"] for x in added] == pytest.approx([rounds[0]["openness"]] * len(added))
    assert len(images_r2) == 3 * (4 - config.gal.k)  # selected anchors left the pool
    from safetensors import safe_open

    with safe_open(str(studio.run_dir(run_id) / rounds[1]["adapter_path"] / LORA_FILE), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(family.lora_prefix + ".") for k in keys)
    # the trained LoRA visibly changes what the round draws (same seeds, adapter on vs off)
    adapter = studio.folder(run_id).path(rounds[1]["adapter_path"])
    pipe = studio.models.with_adapter(config.model, (run_id, 2), adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter_state(pipe).items())
    prompts, seeds = ["a <sks> star on grass"] * 2, [3, 4]
    with_lora = generate(pipe, prompts, seeds, config.generate, resolution=32)
    base = generate(studio.models.base(config.model), prompts, seeds, config.generate, resolution=32)
    diff = np.mean(
        [
            np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean()
            for a, b in zip(with_lora, base)
        ]
    )
    assert diff > 1.0, f"{model}: the LoRA changed images by only {diff:.3f}/255"


REPLAY = textwrap.dedent("""
    import json, sys, traceback
    import numpy as np
    from gal import families
    from gal.config import GenerateConfig
    from gal.generation import generate
    for line in sys.stdin:
        job = json.loads(line)
        try:
            cfg = GenerateConfig(**job["gen"])
            family = families.get(families.TINY[job["model"]])
            cases, results = job["cases"], {}
            for name, weight in list(job["weights"].items()) + [("base", None)]:
                pipe = family.build_tiny()
                if weight:
                    pipe.load_lora_weights(job["out"], weight_name=weight)
                prompts, seeds = [c["prompt"] for c in cases], [c["seed"] for c in cases]
                ims = generate(pipe, prompts, seeds, cfg, resolution=32)
                results[name] = [np.asarray(im, dtype=np.float32).tolist() for im in ims]
            answer = {"results": results}
        except Exception:
            answer = {"error": traceback.format_exc()}
        print("REPLAY " + json.dumps(answer), flush=True)
""")


class _Replayer:
    """One process, separate from the test process that trained and exported, that redraws images from
    exported files: each job builds a fresh tiny pipeline and loads the file with diffusers'
    ``load_lora_weights``. It lives for the test session, so diffusers is imported once (~5 s), not once
    per family file."""

    proc: subprocess.Popen | None = None

    def ask(self, job: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            import atexit
            import tempfile

            self.log = tempfile.NamedTemporaryFile("w+", suffix=".replay.log", delete=False)
            self.proc = subprocess.Popen(
                [sys.executable, "-c", REPLAY],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.log,
                text=True,
            )
            atexit.register(self.close)
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("REPLAY "):
                answer = json.loads(line.removeprefix("REPLAY "))
                assert "error" not in answer, answer.get("error", "")[-3000:]
                return answer["results"]
        self.log.seek(0)
        raise AssertionError(f"the replay process ended: {self.log.read()[-3000:]}")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()  # the worker's loop ends at EOF
            self.proc.wait(timeout=60)


REPLAYER = _Replayer()


def replay_in_fresh_process(
    studio, run_id, config, out: Path, weights: dict[str, str], round_index=2
) -> dict:
    """Redraw two images of round ``round_index`` (the one exported: the last) in a fresh process from each
    exported file; assert each file redraws them (atol 3/255) and that the base model does not."""
    images = [im for a in studio.review_state(run_id, round_index)["anchors"] for im in a["images"]][:2]
    assert len(images) == 2
    cases = [{"seed": im["seed"], "prompt": im["prompt"]} for im in images]
    gen = {
        "steps": config.generate.steps,
        "guidance_scale": config.generate.guidance_scale,
        "negative_prompt": config.generate.negative_prompt,
        "batch_size": 2,
    }
    job = {"model": config.model, "out": str(out), "cases": cases, "weights": weights, "gen": gen}
    results = REPLAYER.ask(job)
    saved = [np.asarray(Image.open(im["path"]), dtype=np.float32) for im in images]
    gaps = {}
    for name in weights:
        gaps[name] = max(np.abs(np.asarray(r) - im).max() for r, im in zip(results[name], saved))
        assert gaps[name] <= 3.0, f"the {name} LoRA does not redraw the run's images (max gap {gaps[name]})"
    gaps["base"] = max(np.abs(np.asarray(b) - im).max() for b, im in zip(results["base"], saved))
    assert gaps["base"] > 6.0, (
        f"the base draws the same images (gap {gaps['base']}): the round trip proves nothing"
    )
    return gaps


def random_adapter_state(family, rank: int, alpha: float):
    """A tiny pipeline of ``family`` with a rank-``rank`` adapter whose B is random (a fresh adapter is a
    no-op: B = 0), and that adapter's diffusers state (``transformer.<module>.lora_A/B.weight``)."""
    from peft.utils import get_peft_model_state_dict

    from gal.config import TrainConfig
    from gal.training import attach_adapter

    pipe = family.build_tiny()
    attach_adapter(pipe.transformer, TrainConfig(rank=rank, alpha=alpha), seed=0, family=family)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    state = get_peft_model_state_dict(pipe.transformer, adapter_name="gal")
    return pipe, {f"transformer.{k}": v for k, v in state.items()}


def comfy():
    """ComfyUI's own ``comfy`` package (CPU mode), or skip when no ComfyUI tree is at ``COMFYUI``."""
    if not (COMFYUI / "comfy" / "lora.py").exists():
        pytest.skip(f"no ComfyUI tree at {COMFYUI} (set GAL_COMFYUI): its key map cannot be checked")
    pytest.importorskip("einops")  # comfy.utils imports it
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.lora
    import comfy.model_base
    import comfy.utils

    return comfy


def comfy_check(comfy, model, lora: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> int:
    """Run ComfyUI's ``model_lora_keys_unet`` + ``load_lora`` on ``lora`` for a ComfyUI ``model``; assert 0
    keys dropped (``load_lora`` logs every key it did not load) and that ComfyUI's own ``calculate_weight``
    (patches as ``ModelPatcher.add_patches`` builds them, strength 1) adds ``expected[weight name]`` to
    each patched weight: ΔW = B·A·alpha/r per adapted module, summed over the slices of fused weights.
    Returns the number of patched weights."""
    import logging

    key_map = comfy.lora.model_lora_keys_unet(model, {})
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        patches = comfy.lora.load_lora(lora, key_map, log_missing=True)
    finally:
        logging.getLogger().removeHandler(handler)
    dropped = [r for r in records if r.startswith("lora key not loaded")]
    assert not dropped, f"ComfyUI drops {len(dropped)} keys, e.g. {dropped[:4]}"
    assert patches, "ComfyUI maps none of the keys"
    sd = model.state_dict()
    totals: dict[str, torch.Tensor] = {}
    for target, adapter in patches.items():
        name, offset = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        # ComfyUI builds its models without initialising weights: patch zeros, the result is ΔW itself
        weight = torch.zeros(sd[name].shape, dtype=torch.float32)
        weight = comfy.lora.calculate_weight([(1.0, adapter, 1.0, offset, None)], weight, name)
        totals[name] = totals.get(name, 0) + weight
    assert set(totals) == set(expected), sorted(set(totals) ^ set(expected))[:6]
    for name, delta in totals.items():
        torch.testing.assert_close(delta, expected[name].float(), rtol=1e-4, atol=1e-6, msg=name)
    return len(totals)


def killed_cli_run_resumes(tmp_path, model: str) -> None:
    """SIGKILL a real ``gal run --demo`` in the middle of round 1's generation, then ``gal run --resume``
    finishes it with every image recorded before the kill kept."""
    from conftest import kill_demo_run_mid_generation

    runs = tmp_path / "runs"
    run_id, before = kill_demo_run_mid_generation(runs, model)
    done = subprocess.run(
        [sys.executable, "-m", "gal", "--runs-dir", str(runs), "run", "--resume", run_id],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with storage.open_db(runs / "gal.db") as db:
        assert storage.get_run(db, run_id)["status"] == "finished"
        after = {im["id"]: im["file"] for im in storage.list_images(db, run_id, 1)}
    assert len(after) == 180 and all(after[im["id"]] == im["file"] for im in before)


def block_swap_trains_the_same_adapter(reference_files, model: str, blocks: int) -> None:
    """Two steps with ``blocks`` blocks swapped to the CPU train the same adapter as no swap, to the bit
    (same seed; on CPU the swap moves nothing, it runs the same hooks and checkpointed blocks)."""
    from gal.config import TrainConfig
    from gal.models import load_pipeline
    from gal.training import TrainExample, adapter_state, train_lora

    pipe = load_pipeline(model, torch.device("cpu"), torch.float32)
    examples = [TrainExample(Image.open(p).convert("RGB"), "a <sks> star", 1.0) for p in reference_files[:2]]
    states = []
    for n in (0, blocks):
        cfg = TrainConfig(
            steps=2, learning_rate=1e-2, batch_size=2, blocks_to_swap=n, gradient_checkpointing=True
        )
        train_lora(pipe, examples, cfg, resolution=32, seed=1)
        states.append(adapter_state(pipe))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
