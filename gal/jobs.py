"""Job control for long steps: live progress with an ETA for pollers, and cooperative cancel.

A step reports ``(stage, done, total, info)``; the page polls ``Jobs.live[run_id]``, the CLI prints a
bar through the optional ``progress`` callback. Cancel is cooperative: a step checks between batches
and raises :class:`gal.training.Cancelled`, so what was saved stays saved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Progress = Callable[[str, int, int, dict], None]  # (stage, done, total, info)
MAX_LOSS_POINTS = 400  # the loss curve the page draws
MAX_LOG_LINES = 200


def log(job: dict, text: str) -> None:
    """One line of the job's log (what the Progress tab's log pane shows), stamped with the local time."""
    lines = job.setdefault("log", [])
    lines.append(f"{time.strftime('%H:%M:%S')} {text}")
    del lines[:-MAX_LOG_LINES]


def estimate(job: dict, done: int, total: int, now: float) -> float | None:
    """Seconds left in the stage. The first report times from the stage's start (which includes loading
    a model); later ones from the rate since the first report, so a slow start does not skew the rest."""
    if not done:
        return None
    first = job.get("first")
    if first is None or done <= first[1]:
        if first is None:
            job["first"] = (now, done)
        return (now - job["started"]) / done * (total - done)
    return (now - first[0]) / (done - first[1]) * (total - done)


class Jobs:
    def __init__(self) -> None:
        self.live: dict[str, dict] = {}  # run_id -> {stage, done, total, eta, info, running, updated}
        self._cancel: dict[str, threading.Event] = {}

    def cancel(self, run_id: str) -> None:
        """Ask a running job to stop at its next step; work already saved is kept."""
        self._cancel.setdefault(run_id, threading.Event()).set()

    def start(self, run_id: str) -> Callable[[], bool]:
        """A job for ``run_id`` begins: clear an old cancel request; return the step's ``cancel()`` check."""
        event = self._cancel.setdefault(run_id, threading.Event())
        event.clear()
        job = self.live.setdefault(run_id, {})
        job.update(running=True, updated=time.time(), stage=None, log=[], losses=[])
        log(job, "job started")
        return event.is_set

    def stop(self, run_id: str, **fields) -> None:
        job = self.live.setdefault(run_id, {})
        if job.get("running"):
            message = (fields.get("info") or {}).get("message")
            log(job, f"{fields.get('stage') or 'stopped'}" + (f": {message}" if message else ""))
        job.update(running=False, updated=time.time(), **fields)

    def reporter(self, run_id: str, progress: Progress | None) -> Callable[..., None]:
        """``report(stage, done, total, **info)`` for one run: updates the live view and calls
        ``progress``."""

        def report(stage: str, done: int, total: int, **info) -> None:
            job = self.live.setdefault(run_id, {})
            now = time.time()
            if job.get("stage") != stage:
                # A stage's first report comes after its first chunk (a batch of images, a step), so the
                # stage began at the job's previous report (or the job's start), not now: timing from now
                # read "~0 s left" at 25 % of generation.
                job.update(stage=stage, started=job.get("updated", now), first=None)
                if stage == "train":
                    job["losses"] = []
                log(job, f"{stage}: {total} to do" + (f" (round {info['round']})" if "round" in info else ""))
            if info.get("resumed"):
                log(job, f"{stage}: resumed at step {info['resumed']}/{total}")
            eta = estimate(job, done, total, now)
            job.update(done=done, total=total, eta=eta, info=info, updated=now)
            if stage == "train" and isinstance(info.get("loss"), (int, float)):
                losses = job.setdefault("losses", [])
                losses.append((done, float(info["loss"])))
                if len(losses) > MAX_LOSS_POINTS:  # keep the curve's shape, drop every other point
                    del losses[1:-1:2]
            if info.get("previews"):
                job["previews"] = list(info["previews"])  # the latest training previews, for the page
            if done and done == total:
                log(job, f"{stage}: done in {now - job['started']:.1f} s")
            if progress is not None:
                progress(stage, done, total, info)

        return report
