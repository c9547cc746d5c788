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
        self.live.setdefault(run_id, {}).update(running=True, updated=time.time())
        return event.is_set

    def stop(self, run_id: str, **fields) -> None:
        self.live.setdefault(run_id, {}).update(running=False, updated=time.time(), **fields)

    def reporter(self, run_id: str, progress: Progress | None) -> Callable[..., None]:
        """``report(stage, done, total, **info)`` for one run: updates the live view and calls ``progress``."""

        def report(stage: str, done: int, total: int, **info) -> None:
            job = self.live.setdefault(run_id, {})
            if job.get("stage") != stage:
                job.update(stage=stage, started=time.time())
            elapsed = time.time() - job["started"]
            eta = elapsed / done * (total - done) if done else None
            job.update(done=done, total=total, eta=eta, info=info, updated=time.time())
            if progress is not None:
                progress(stage, done, total, info)

        return report
