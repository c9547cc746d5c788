"""A test hook for crash safety: ``GAL_KILL_AT=<point>`` SIGKILLs the process at that point.

The engine calls :func:`checkpoint` at every boundary of a round's steps and inside each write
transaction (before it commits), so a test can kill a real ``gal run`` at any of them and check that a
resume finishes the run with the same result. ``<point>`` is ``<name>`` (the first time it is reached)
or ``<name>@<round>``. Unset (always, outside tests), a checkpoint costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "GAL_KILL_AT"


def checkpoint(name: str, round_index: int | None = None) -> None:
    target = os.environ.get(KILL_AT)
    if target and target in (name, f"{name}@{round_index}"):
        os.kill(os.getpid(), signal.SIGKILL)
