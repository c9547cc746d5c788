"""Mid-round training state: saved every N steps, so a killed or cancelled round resumes where it was.

The state is everything the rest of the round's steps depend on: the LoRA weights (fp32), the optimiser's
and the LR scheduler's state, the step index, the losses so far and the state of the ``torch.Generator``
that draws batches, noise and timesteps (training uses no other RNG). It is written atomically (a temp
file, fsync, rename) and carries a fingerprint (run id, round, config hash, references, step count): a
state that does not match the round being trained is ignored, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gal.faults import checkpoint as kill_point

STATE_FILE = "train_state.pt"


def interval(every: int | None, steps: int, device) -> int:
    """Steps between saves: the config's, or (None) 100 on a GPU, a third of the round on the CPU."""
    if every is None:
        return 100 if torch.device(device).type == "cuda" else max(1, steps // 3)
    return every


def fingerprint(run_id: str, round_index: int, config_json: str, examples, steps: int) -> dict:
    refs = hashlib.sha256(
        json.dumps([[e.prompt, float(e.weight), bool(e.added)] for e in examples]).encode()
    ).hexdigest()
    return {
        "run_id": run_id,
        "round": int(round_index),
        "config": hashlib.sha256(config_json.encode()).hexdigest(),
        "references": refs,
        "steps": int(steps),
    }


@dataclass
class TrainState:
    """Where a round's training state lives and what it must match; ``writer`` is False on every process
    but the main one (they all read it on resume; one writes)."""

    path: Path
    fingerprint: dict
    every: int
    writer: bool = True
    round_index: int | None = None
    on_resume: Callable[[int], None] | None = None

    def load(self) -> dict | None:
        """The saved state if it matches this round, else None (a mismatched or unreadable file: ignored)."""
        if self.every <= 0 or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: train from the start
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return None
        return state

    def due(self, step: int, total: int) -> bool:
        """Save after ``step`` steps? Not after the last: the round's adapter is saved then."""
        return self.every > 0 and 0 < step < total and step % self.every == 0

    def save(self, step: int, params, optimizer, scheduler, generator, losses: list[float]) -> None:
        if self.writer:
            state = {
                "fingerprint": self.fingerprint,
                "step": int(step),
                "params": [p.detach().to("cpu", torch.float32).clone() for p in params],
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "losses": list(losses),
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        kill_point("training.saved", self.round_index)

    def restore(self, state: dict, params, optimizer, scheduler, generator) -> int:
        saved = state["params"]
        if len(saved) != len(params) or any(a.shape != p.shape for a, p in zip(saved, params, strict=True)):
            raise ValueError(f"{self.path}: the saved training state does not fit this adapter; delete it")
        with torch.no_grad():
            for p, a in zip(params, saved, strict=True):
                p.data.copy_(a.to(p.device, p.dtype))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        return int(state["step"])

    def remove(self) -> None:
        if self.writer:
            self.path.unlink(missing_ok=True)
            self.path.with_name(f".{self.path.name}.tmp").unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
