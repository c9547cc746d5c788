"""The benches cannot rot: every bench script answers --help from a foreign cwd, the smoke modes run, and the
exact device entry point (``bench/gpu/run.sh``) runs end to end on the CPU with tiny models (issues 23, 24).

The GPU numbers themselves are not tested here (no GPU in CI): what is tested is that the code a lent GPU
runs gets to its tables, labels a CPU run as such, refuses a machine without CUDA, and keeps the
refused / missing-package / measured cells apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu import fullsize  # noqa: E402
from bench.gpu.memory import calibrate  # noqa: E402

BENCHES = sorted(  # every script (a file with a __main__ block) under bench/
    p
    for p in [*(ROOT / "bench").glob("*.py"), *(ROOT / "bench" / "gpu").glob("*.py")]
    if 'if __name__ == "__main__":' in p.read_text()
)


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


HELP_DRIVER = """
import runpy, sys
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        print(f"EXIT {path} {stop.code}", flush=True)
    else:
        print(f"EXIT {path} no-exit", flush=True)
"""


def test_every_bench_answers_help_from_another_cwd(tmp_path):
    """Each script's --help, run as ``python bench/x.py --help`` from a foreign cwd would run it, in one
    process (the imports are shared: one torch/diffusers import instead of one per script). No PYTHONPATH:
    each script must find the repository itself."""
    assert {"bench_round.py", "gpu_session.py", "families.py", "memory.py", "check_env.py"} <= {
        p.name for p in BENCHES
    }
    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", HELP_DRIVER, *map(str, BENCHES)], cwd=tmp_path, env=env,
                         text=True, capture_output=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for path in BENCHES:
        assert f"EXIT {path} 0" in out.stdout, f"{path.name} --help did not exit 0:\n{out.stderr[-3000:]}"
    assert out.stdout.count("usage:") == len(BENCHES)


def test_a_registered_in_memory_model_is_not_looked_up_on_the_hub(tmp_path):
    from gal.demo import demo_scenario
    from gal.engine import Studio
    from gal.models import build_tiny_pipeline

    studio = Studio(tmp_path / "runs", model="tiny", oracle="tiny")
    config, refs = demo_scenario(tmp_path / "refs", "object", model="tiny")
    config.model = "sd15-random"  # what gpu_session registers: not a hub id, not a folder
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        studio.create_run(config, refs)  # unregistered: still refused, before any row
    studio.models.register("sd15-random", build_tiny_pipeline())
    run_id = studio.create_run(config, refs)
    assert studio.pipeline("sd15-random") is studio.models.pipeline("sd15-random")
    assert run_id


def test_gpu_benches_refuse_without_cuda_and_name_the_smoke_flag(monkeypatch, capsys):
    import bench.gpu.memory as memory
    import bench.gpu_session as gpu_session

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for main in (gpu_session.main, memory.main):
        assert main([]) == 2
        err = capsys.readouterr().err
        assert "refusing to run" in err and "sees no CUDA device" in err and "--cpu-smoke" in err


def test_full_size_configs_build_in_bf16_with_the_published_sizes():
    """On the meta device: the full-size builders construct directly in bf16 (no fp32 copy), with the
    published parameter counts, and the FLUX VAE carries its shift factor (FluxPipeline's decode needs it)."""
    from gal import families

    expected = {"sd": ("unet", 859.5e6), "sdxl": ("unet", 2567.5e6), "flux": ("transformer", 11901.4e6)}
    for name, (part, params) in expected.items():
        family = families.get(name)
        pipe = fullsize.build(family, torch.device("meta"), torch.bfloat16)
        denoiser = getattr(pipe, part)
        assert {p.dtype for p in pipe.components[part].parameters()} == {torch.bfloat16}
        assert {p.dtype for m in family.text_encoders(pipe) for p in m.parameters()} == {torch.bfloat16}
        assert abs(sum(p.numel() for p in denoiser.parameters()) - params) / params < 1e-3, name
    assert fullsize.FLUX_VAE["shift_factor"] == 0.1159 and fullsize.FLUX_VAE["scaling_factor"] == 0.3611
    assert torch.get_default_dtype() == torch.float32  # the bf16 default is restored after building


def test_activation_calibration_recovers_a_known_scale():
    gib = 1e9
    est = {"total": 10 * gib, "activations": 2 * gib}  # 8 GB of weights/states + 2 GB of activations
    cells = [
        {"estimate": est, "step_alloc": 8 + 2 * 1.5},  # activations measured 1.5x the estimate
        {"estimate": est, "step_alloc": 8 + 2 * 1.7},
        {"estimate": est, "step_alloc": 8 + 2 * 1.6},
        {"estimate": est, "step_alloc": None},  # refused / OOM cells carry no measurement
        {"estimate": None, "step_alloc": 5.0},
    ]
    assert calibrate(cells) == pytest.approx(1.6)
    assert calibrate([{"estimate": est, "step_alloc": None}]) is None


def test_activation_scale_multiplies_only_the_activation_term():
    from gal.families.memory import training_bytes

    kw = dict(denoiser_params=100, text_encoder_params=10, vae_params=5, lora_params=2,
              activations_16bit=1000.0, activations_ckpt_16bit=100.0)  # fmt: skip
    one, two = training_bytes(**kw), training_bytes(**kw, activation_scale=2.0)
    assert two["activations"] == 2 * one["activations"]
    assert two["total"] - one["total"] == pytest.approx(one["activations"])


def test_bench_round_smoke(tmp_path):
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_round.py"), "--smoke"], cwd=tmp_path,
                         env=_env(), text=True, capture_output=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SMOKE" in out.stdout and "non-compute overhead" in out.stdout and "speed-up" in out.stdout
    print(f"bench_round --smoke: {time.perf_counter() - started:.1f} s")


def test_the_device_entry_point_runs_end_to_end_on_the_cpu(tmp_path):
    """``bash bench/gpu/run.sh`` is what a lent GPU runs; ``--smoke`` takes the same steps on the CPU."""
    out_dir = tmp_path / "out"
    started = time.perf_counter()
    env = dict(_env(), OUT=str(out_dir), PYTHON=sys.executable)
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "run.sh"), "--smoke"], cwd=tmp_path, env=env,
                         text=True, capture_output=True, timeout=900)  # fmt: skip
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = {p.name for p in out_dir.iterdir()}
    assert {"gpu_session.md", "gpu_memory.md", "env.txt", "run.log", "session.log", "memory.log"} <= files
    assert {"gpu_parts.md", "parts.log"} <= files
    assert len(files) <= 8  # what the device sends back
    assert "env check: all imports OK" in (out_dir / "env.txt").read_text()
    for step in ("gpu_session", "memory", "parts"):
        assert f"{step} exit 0" in run.stdout, step
    parts = (out_dir / "gpu_parts.md").read_text()
    assert "CPU SMOKE" in parts and "| FLUX.1 |" in parts and "| parts |" in parts and "| ok |" in parts
    session = (out_dir / "gpu_session.md").read_text()
    assert "CPU SMOKE" in session and "NOT a measurement" in session
    for part in ("(a) ours", "(b) paper's recipe", "(c) per-prompt loop", "(c) batched (ours)"):
        assert part in session, part
    assert "faster than the paper's recipe" in session and "failed" not in session
    memory = (out_dir / "gpu_memory.md").read_text()
    assert "CPU SMOKE" in memory
    rows = [line for line in memory.splitlines() if line.startswith("| Stable Diffusion 1")]
    assert [r.split(" | ")[2] for r in rows][:2] == ["bf16 + grad ckpt", "+ TE offloaded after caching"]
    statuses = [r.split(" | ")[3] for r in rows]
    assert statuses[:2] == ["ok", "ok"]
    import importlib.util

    int8 = statuses[-1]
    assert int8 == ("ok" if importlib.util.find_spec("torchao") else "missing torchao"), int8
    print(f"run.sh --smoke: {seconds:.1f} s")


def test_refused_missing_and_oom_are_three_different_cells(monkeypatch):
    """The memory bench's cells: the estimate check's refusal, a missing package and a real CUDA OOM must not
    read alike (issue 24: all three were 'OOM/refused')."""
    import gal.training
    from bench.gpu import memory
    from gal import families

    family = families.get("sd")
    pipe = family.build_tiny()
    res = family.native_resolution(pipe)
    fields = dict(gradient_checkpointing=True, offload_text_encoders=False)
    cpu = torch.device("cpu")

    def refuse(*a, **k):
        raise ValueError(
            "Stable Diffusion LoRA training needs about 30.0 GiB but 20.0 GiB are free: turn on …"
        )

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    cells = {}
    for name, fake in (("refused", refuse), ("oom", oom)):
        monkeypatch.setattr(gal.training, "train_lora", fake)
        cells[name] = memory.measure_cell(pipe, family, "bf16 + grad ckpt", fields, None, res, 3, cpu)[
            "status"
        ]
    cells["missing"] = memory.measure_cell(
        pipe, family, "+ int8", fields, "a_package_that_is_not_installed", res, 3, cpu
    )["status"]
    assert cells["refused"].startswith("refused: ") and "GiB" in cells["refused"]
    assert cells["oom"].startswith("OOM: ") and "out of memory" in cells["oom"]
    assert cells["missing"] == "missing a_package_that_is_not_installed"
    monkeypatch.undo()
    real = memory.measure_cell(pipe, family, "bf16 + grad ckpt", fields, None, res, 3, cpu)
    assert real["status"] == "ok" and real["steps_timed"] == 2 and real["s_per_step"] > 0
    assert real["estimate"]["total"] > 0  # the app's estimate is beside every measured cell
