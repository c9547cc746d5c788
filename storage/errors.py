"""Errors raised by storage/. Each is a ValueError whose message names the value and the fix."""

from __future__ import annotations


class StorageError(ValueError):
    """The database cannot be used as asked: locked, read-only, or not openable."""


class RunNotFound(ValueError):
    """No run with this id exists in the database."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist; `gal runs` lists the runs")
        self.run_id = run_id
