"""Shared helpers of the toy-world training scripts: the rendered-data cache, checkpoints, logging.

Every script sets ``torch.set_num_threads`` (1 by default: the 2-core machine is shared) and writes its
checkpoints to ``artifacts/toyworld/`` (git-ignored; ``TOYWORLD_WORK`` points elsewhere), so a killed job
resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gal.toyworld.world import (  # noqa: E402
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    SHAPES,
    CaptionDrop,
    Spec,
    caption,
    render,
    sample_spec,
)

WORK = Path(os.environ.get("TOYWORLD_WORK", ROOT / "artifacts" / "toyworld"))
ASSETS = ROOT / "gal" / "assets" / "toyworld"
SHAPE_I = {s: i for i, s in enumerate(SHAPES)}
COLOUR_I = {c: i for i, c in enumerate(COLOURS)}
PATTERN_I = {p: i for i, p in enumerate(PATTERNS)}
BG_I = {b: i for i, b in enumerate(BACKGROUNDS)}


def log(path: Path, **row) -> None:
    """Print one JSON line and append it to ``path``."""
    row = {"time": round(time.time(), 1), **row}
    line = json.dumps(row)
    print(line, flush=True)
    with open(path, "a") as f:
        f.write(line + "\n")


def load_checkpoint(path: Path, **parts) -> int:
    """Load each part (a module or optimizer, by its key in the file) from ``path``; return its step.

    A missing file is a fresh start: step 0, parts untouched.
    """
    import torch

    if not path.exists():
        return 0
    ck = torch.load(path, weights_only=False)
    for key, part in parts.items():
        part.load_state_dict(ck[key])
    print(f"resumed at step {ck['step']}", flush=True)
    return ck["step"]


def save_checkpoint(path: Path, step: int, **parts) -> None:
    """Write every part's state dict and ``step`` to ``path``
    (atomically: a kill mid-save keeps the old one)."""
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({key: part.state_dict() for key, part in parts.items()} | {"step": step}, tmp)
    tmp.replace(path)


def set_threads() -> int:
    import torch

    n = int(os.environ.get("TOYWORLD_THREADS", "1"))
    torch.set_num_threads(n)
    return n


def render_dataset(path: Path, seed: int, n: int, chunk: int = 5000) -> dict[str, np.ndarray]:
    """``n`` rendered base-world images with their spec indices, cached at ``path`` (``.npz``).

    Rendering resumes chunk by chunk (``path.partN.npz``) if it was killed. Stream id 3 keeps it apart
    from ``iter_batches`` (0) and ``heldout_set`` (1).
    """
    if path.exists():
        return dict(np.load(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for k in range(0, n, chunk):
        part = path.with_suffix(f".part{k // chunk}.npz")
        if not part.exists():
            rng = np.random.default_rng([seed, 3, k // chunk])
            specs = [sample_spec(rng) for _ in range(min(chunk, n - k))]
            images = np.stack([np.asarray(render(s, rng)) for s in specs])
            np.savez(part, images=images, **spec_arrays(specs))
            print(f"rendered {k + len(specs)}/{n}", flush=True)
        parts.append(dict(np.load(part)))
    data = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    np.savez(path, **data)
    for k in range(0, n, chunk):
        path.with_suffix(f".part{k // chunk}.npz").unlink()
    return data


def spec_arrays(specs: list[Spec]) -> dict[str, np.ndarray]:
    return {
        "shape": np.array([SHAPE_I[s.shape] for s in specs], np.int64),
        "colour": np.array([COLOUR_I[s.colour] for s in specs], np.int64),
        "pattern": np.array([PATTERN_I[s.pattern] for s in specs], np.int64),
        "background": np.array([BG_I[s.background] for s in specs], np.int64),
    }


def spec_at(data: dict[str, np.ndarray], i: int) -> Spec:
    return Spec(
        SHAPES[data["shape"][i]],
        tuple(COLOURS)[data["colour"][i]],
        PATTERNS[data["pattern"][i]],
        tuple(BACKGROUNDS)[data["background"][i]],
    )


def random_captions(
    data: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator, drop: CaptionDrop = CaptionDrop()
) -> list[str]:
    return [caption(spec_at(data, int(i)), rng, drop) for i in idx]


def train_data(n: int = 60000, seed: int = 0) -> dict[str, np.ndarray]:
    return render_dataset(WORK / f"train_{seed}_{n}.npz", seed, n)


if __name__ == "__main__":  # pre-render the training cache: python scripts/toyworld/_common.py
    t = time.time()
    d = train_data()
    print("cached", d["images"].shape, f"{time.time() - t:.0f}s")
