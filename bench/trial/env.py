"""What every result records about where it ran (issue 29): a run that does not reproduce elsewhere can
then be told apart by its versions, its CPU kernels and its thread counts."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "diffusers", "peft", "transformers", "open_clip_torch", "numpy")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ROOT = Path(__file__).resolve().parents[2]


def commit(root: Path = ROOT) -> str:
    """``HEAD``'s hash, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def environment(argv: list[str] | None = None) -> dict:
    """Package versions, torch's CPU capability and threads, the thread variables, the commit, the command."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: os.environ.get(k) for k in THREAD_VARS},
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "commit": commit(),
        "command": " ".join(sys.argv if argv is None else argv),
    }


def short(env: dict | None) -> str:
    """One line for a table: ``torch 2.x cap AVX2 thr 1 @abc1234``."""
    if not env:
        return "not recorded"
    v = env.get("versions", {})
    return (
        f"torch {v.get('torch')} diffusers {v.get('diffusers')} peft {v.get('peft')} "
        f"{env.get('cpu_capability')} threads {env.get('torch_threads')} @{str(env.get('commit'))[:8]}"
    )
