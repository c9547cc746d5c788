"""Run leases: one process at a time trains, draws or judges a run.

A lease is a row (owner, host, pid, heartbeat) taken in a write transaction (``BEGIN IMMEDIATE``), so
two processes cannot both take it. The holder renews the heartbeat as it works; a lease whose holder
is gone — a dead pid on this host, or no heartbeat for ``stale_after`` seconds from another host — is
taken over, so a killed run never stays locked.
"""

from __future__ import annotations

import os
import socket
import time

from sqlite_utils import Database

from .db import get_row, now, require_run, storage_op, transaction


class LeaseHeld(ValueError):
    """Another live process holds the run's lease."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def is_stale(lease: dict, stale_after: float, clock: float | None = None) -> bool:
    """The holder is gone: its pid is dead (same host), or it has been silent for ``stale_after`` s."""
    clock = time.time() if clock is None else clock
    if lease["host"] == socket.gethostname() and not _alive(int(lease["pid"])):
        return True
    return clock - float(lease["heartbeat"]) > stale_after


@storage_op
def acquire_lease(db: Database, run_id: str, owner: str, *, stale_after: float = 600.0) -> dict:
    """Take the run's lease for ``owner`` (renew it when ``owner`` holds it); raise LeaseHeld naming the
    live holder otherwise."""
    with transaction(db):
        require_run(db, run_id)
        lease = get_row(db, "leases", run_id)
        if lease is not None and lease["owner"] != owner and not is_stale(lease, stale_after):
            raise LeaseHeld(
                f"run {run_id} is being worked on by process {lease['pid']} on {lease['host']} "
                f"(since {lease['acquired_at']}): wait for it, or stop that process; a lease whose process "
                "has died is taken over at once"
            )
        row = {"run_id": run_id, "owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
               "acquired_at": lease["acquired_at"] if lease and lease["owner"] == owner else now(),
               "heartbeat": time.time()}  # fmt: skip
        db["leases"].upsert(row, pk="run_id")
    return row


@storage_op
def renew_lease(db: Database, run_id: str, owner: str) -> None:
    """Heartbeat; raises LeaseHeld when another process has taken the lease over meanwhile."""
    with transaction(db):
        lease = get_row(db, "leases", run_id)
        if lease is None or lease["owner"] != owner:
            holder = f"process {lease['pid']} on {lease['host']}" if lease else "nobody"
            raise LeaseHeld(f"run {run_id}'s lease was taken over by {holder}: this job stops here")
        db.execute("UPDATE leases SET heartbeat = ? WHERE run_id = ?", [time.time(), run_id])


@storage_op
def release_lease(db: Database, run_id: str, owner: str) -> None:
    with transaction(db):
        db.execute("DELETE FROM leases WHERE run_id = ? AND owner = ?", [run_id, owner])


@storage_op
def get_lease(db: Database, run_id: str) -> dict | None:
    return get_row(db, "leases", run_id)
