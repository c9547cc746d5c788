"""One background thread for model jobs (train, generate, judge, evaluate), so no handler waits on one.

Handlers submit a run id (a commit goes through the engine first, without the worker); the page polls
``state()`` and ``Studio.jobs`` with a ``gr.Timer``. Jobs run one at a time, in submission order: there
is one model (one GPU). Everything a job does is persisted by the engine, so a crash or a restart loses
no work.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from gal.engine import Cancelled, Studio

log = logging.getLogger(__name__)


@dataclass
class Job:
    run_id: str
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class Worker:
    """A single daemon thread draining a queue of jobs; ``state(run_id)`` is running / queued / None."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self._queue: queue.Queue[Job] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: dict[str, Job] = {}  # queued, not started
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self.errors: dict[str, str] = {}  # run_id -> what stopped its last job (cleared on resubmit)

    # -- asking -----------------------------------------------------------------------------------
    def submit(self, run_id: str) -> Job:
        """Queue ``run_id`` (a no-op returning the existing job when it is already queued or running)."""
        with self._lock:
            existing = self._pending.get(run_id) or (
                self._current if self._current and self._current.run_id == run_id else None
            )
            if existing is not None:
                return existing
            job = Job(run_id)
            self._pending[run_id] = job
            self.errors.pop(run_id, None)
            self._ensure_thread()
        self._queue.put(job)
        return job

    def cancel(self, run_id: str) -> str:
        """Drop a queued job, or ask a running one to stop at its next step. Returns what happened."""
        with self._lock:
            job = self._pending.pop(run_id, None)
            if job is not None:
                job.done.set()
                self.errors[run_id] = "cancelled before it started"
                return "dropped"
            running = self._current is not None and self._current.run_id == run_id
        if running:
            self.studio.cancel(run_id)
            return "cancelling"
        return "idle"

    def state(self, run_id: str | None) -> str | None:
        with self._lock:
            return self._state_locked(run_id)

    def _state_locked(self, run_id: str | None) -> str | None:
        if run_id is None:
            return None
        if self._current is not None and self._current.run_id == run_id:
            return "running"
        if run_id in self._pending:
            return "queued"
        return None

    def busy_with(self) -> str | None:
        with self._lock:
            return self._current.run_id if self._current else None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running (tests, shutdown). True when idle."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._current is None and not self._pending:
                    return True
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.05)

    # -- the thread -------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="gal-model-worker", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            with self._lock:
                if self._pending.get(job.run_id) is not job:  # cancelled while queued
                    continue
                del self._pending[job.run_id]
                self._current = job
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._current = None
                job.done.set()

    def _run(self, job: Job) -> None:
        try:
            self.studio.advance(job.run_id)
        except Cancelled as err:
            job.error = self.errors[job.run_id] = f"cancelled ({err})" if str(err) else "cancelled"
        except Exception as err:  # noqa: BLE001 - reported on the page; the engine saved the state
            log.exception("job for run %s failed", job.run_id)
            job.error = self.errors[job.run_id] = f"{type(err).__name__}: {err}"
