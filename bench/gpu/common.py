"""What every GPU bench shares: the environment header, synchronised timing, peak memory, a time budget.

Timing: ``torch.cuda.synchronize()`` before starting and before stopping the clock around every stage (device
work is asynchronous; without it a stage's tail is booked to the next). Memory: the caching allocator's peak
allocated (tensors) and peak reserved (what it holds from the driver), and ``nvidia-smi``'s view of the
whole process (context + fragmentation) read at the end of a stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
GB = 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds of ``fn()`` with the device drained before and after; and what it returned."""
    sync(device)
    started = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - started, out


def median_of(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """``warmup`` untimed calls, then ``repeats`` timed ones (seconds each; take the median)."""
    for _ in range(warmup):
        fn()
    return [timed(fn, device)[0] for _ in range(repeats)]


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class Memory:
    """Peak allocated / reserved since ``reset()`` (CUDA); ``None`` on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> dict[str, float | None]:
        if self.device.type != "cuda":
            return {"allocated": None, "reserved": None, "smi": None}
        torch.cuda.synchronize(self.device)
        return {
            "allocated": torch.cuda.max_memory_allocated(self.device) / GB,
            "reserved": torch.cuda.max_memory_reserved(self.device) / GB,
            "smi": nvidia_smi_used_gb(),
        }


def nvidia_smi(query: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def nvidia_smi_used_gb() -> float | None:
    """The GPU's used memory as nvidia-smi shows it (every process, CUDA context included), in GB."""
    used = nvidia_smi("memory.used")
    try:
        return float(used) * 2**20 / GB if used else None
    except ValueError:
        return None


def gb(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def tree_digest() -> str:
    """A digest of the code that ran (gal/, storage/, bench/): the device gets a copy without .git."""
    h = hashlib.sha256()
    for folder in ("gal", "storage", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def commit() -> str:
    env = os.environ.get("GAL_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        pass
    stamp = ROOT / ".whl" / "COMMIT"  # written here by fetch_wheels.sh; the device's copy has no .git
    if stamp.exists():
        return f"{stamp.read_text().strip()} (per .whl/COMMIT; the tree digest is the proof)"
    return "unknown (no git here)"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for name in ("diffusers", "transformers", "peft", "accelerate", "open_clip_torch", "torchao"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def header(device: torch.device, what: str) -> list[str]:
    """The lines every table starts with: what ran, on which machine, with which code and versions."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = f"{props.name}, {props.total_memory / GB:.0f} GB, cc {props.major}.{props.minor}"
        driver = nvidia_smi("driver_version") or "unknown (no nvidia-smi)"
    else:
        gpu, driver = "none (CPU)", "–"
    v = versions()
    return [
        f"- what: {what}",
        f"- machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} cores); "
        f"GPU: {gpu}; driver {driver}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- code: commit {commit()}, tree digest {tree_digest()} (gal/ storage/ bench/)",
        f"- started: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
    ]


def cuda_refusal() -> str | None:
    """Why this process cannot use CUDA (None when it can): the reason, not a silent CPU fallback."""
    if torch.cuda.is_available():
        return None
    driver = nvidia_smi("driver_version")
    why = [f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no CUDA device"]
    if torch.version.cuda is None:
        why.append("this torch is a CPU-only build")
    if driver:
        why.append(
            f"nvidia-smi reports driver {driver}: the driver may be older than this torch's CUDA needs"
        )
    else:
        why.append("no nvidia-smi on PATH")
    return (
        "; ".join(why)
        + ". Run on a CUDA machine, or pass --cpu-smoke for the tiny CPU run (not a measurement)."
    )


class Budget:
    """A wall-clock budget: ``left()`` seconds, ``over()`` once spent (benches stop cleanly and write what
    they have)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.started = time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.spent()

    def over(self) -> bool:
        return self.left() <= 0


@contextlib.contextmanager
def built_directly(device: torch.device, dtype: torch.dtype):
    """Modules constructed inside are created on ``device`` in ``dtype`` (no fp32 copy first: a 12B FLUX
    transformer built in fp32 and cast would need ~48 GB transiently)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def write(path: Path | None, text: str) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
