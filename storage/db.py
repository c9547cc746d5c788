"""Opening the database, migrations, transactions, and the small helpers every table module shares.

sqlite3 connections cannot cross threads: `open_db` returns a fresh `Database` on each call, and a
caller opens one per thread (per Gradio handler call, per worker). Opening is cheap once the
migrations are applied: a few PRAGMAs and one SELECT.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import operator
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from .errors import RunNotFound, StorageError
from .migrations import MIGRATIONS

Row = dict[str, Any]

P = ParamSpec("P")
R = TypeVar("R")


# --- opening and migrating -------------------------------------------------------------------


def open_db(path: str | Path, *, busy_timeout_ms: int = 5000) -> Database:
    """Open (creating it and its folder if needed) the SQLite file at `path` and apply pending migrations.

    WAL journal mode (file databases), foreign keys on, and a busy timeout: a writer waits up to
    `busy_timeout_ms` for another connection's write lock before raising `StorageError`.
    `path=":memory:"` gives a private in-memory database (tests).
    """
    if str(path) == ":memory:":
        db = Database(memory=True)
    else:
        file = Path(path)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the folder {file.parent} for database {file}: {exc.strerror}; "
                "check its permissions or pass another --runs-dir"
            ) from exc
        if file.is_dir():
            raise StorageError(
                f"database path {file} is a folder; pass a file path such as {file / 'gal.db'}"
            )
        try:
            db = Database(file)
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, str(file), busy_timeout_ms) or StorageError(
                f"cannot open database {file}: {exc}; check the path or pass another --runs-dir"
            ) from exc
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        db.execute("PRAGMA foreign_keys = ON")
        if not db.memory:
            _enable_wal(db, busy_timeout_ms)  # only writes when the file is not in WAL mode yet
            # Under WAL, NORMAL syncs at checkpoints, not at every commit: a committed row survives a
            # process crash (the case resume cares about); only a power cut can lose the last commits.
            db.execute("PRAGMA synchronous = NORMAL")
        migrate(db)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise _translate(exc, str(path), busy_timeout_ms) or StorageError(
            f"database {path} cannot be used: {exc}; move it away or pass another --runs-dir"
        ) from exc
    except BaseException:
        db.close()
        raise
    return db


def _enable_wal(db: Database, busy_timeout_ms: int) -> None:
    """WAL mode, retried while another connection holds the file: SQLite answers the journal-mode switch
    with "database is locked" at once, without its busy handler, when connections open a new file together
    (seen 5 times in 300 four-thread first opens); the busy timeout is honoured here instead."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    pause = 0.005
    while True:
        try:
            db.enable_wal()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def migrate(db: Database) -> list[str]:
    """Apply the migrations `db` has not seen yet, in order, in one transaction; return their names.

    `open_db` calls this; call it yourself on a `Database(memory=True)` (and run
    `PRAGMA foreign_keys = ON` there too; `open_db(":memory:")` does both).
    """
    if not _pending_migrations(db):
        return []
    applied: list[str] = []
    with transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        # Re-read inside the write lock: another connection may have migrated meanwhile.
        done = {name for (name,) in db.execute("SELECT name FROM _migrations").fetchall()}
        for migration in MIGRATIONS:
            if migration.__name__ in done:
                continue
            migration(db)
            db.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", [migration.__name__, now()]
            )
            applied.append(migration.__name__)
    return applied


def _pending_migrations(db: Database) -> list[str]:
    try:
        done = {name for (name,) in db.execute("SELECT name FROM _migrations").fetchall()}
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        done = set()
    known = {migration.__name__ for migration in MIGRATIONS}
    if done - known:
        raise StorageError(
            f"database {db_path(db)} was written by a newer GAL Studio (unknown migrations "
            f"{sorted(done - known)}); upgrade gal-studio or pass another --runs-dir"
        )
    return [migration.__name__ for migration in MIGRATIONS if migration.__name__ not in done]


# --- transactions and errors -----------------------------------------------------------------


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """Group storage calls into one atomic write: all of them are committed, or none.

        with transaction(db):
            record_selection(db, ...)
            add_reference(db, ...)

    Nested blocks (every storage write opens one) become savepoints. The outer block takes the
    write lock at once (BEGIN IMMEDIATE), so a read-then-write cannot fail halfway on a lock.
    Use this rather than `with db.conn:`: sqlite-utils 4 commits each `db.execute()` write that
    opens its own transaction, so `with db.conn:` does not make several calls atomic.
    """
    conn = db.conn
    if conn.in_transaction:
        savepoint = f"gal_{secrets.token_hex(8)}"
        conn.execute(f"SAVEPOINT {savepoint}")
        try:
            yield db
        except BaseException:
            if conn.in_transaction:  # an error may already have rolled everything back
                conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                conn.execute(f"RELEASE SAVEPOINT {savepoint}")
            raise
        conn.execute(f"RELEASE SAVEPOINT {savepoint}")
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.DatabaseError as exc:
        _raise_translated(db, exc)
    try:
        yield db
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.DatabaseError):
            _raise_translated(db, exc)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        _raise_translated(db, exc)


def storage_op(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn SQLite's locked / read-only / unopenable errors into a `StorageError` that says what to fix."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            db = args[0] if args else kwargs.get("db")
            if not isinstance(db, Database):
                raise
            _raise_translated(db, exc)

    return wrapper


def _raise_translated(db: Database, exc: sqlite3.DatabaseError) -> NoReturn:
    """Re-raise `exc` as a StorageError when it is one we can explain, else unchanged."""
    translated = _translate_for(db, exc)
    if translated is None:
        raise exc
    raise translated from exc


def db_path(db: Database) -> str:
    """The file behind `db`, for messages (":memory:" for an in-memory database)."""
    try:
        for _, name, file in db.conn.execute("PRAGMA database_list").fetchall():
            if name == "main":
                return file or ":memory:"
    except sqlite3.Error:
        pass
    return "(unknown database)"


def _translate_for(db: Database, exc: sqlite3.DatabaseError) -> StorageError | None:
    try:
        (timeout_ms,) = db.conn.execute("PRAGMA busy_timeout").fetchone()
    except sqlite3.Error:
        timeout_ms = None
    return _translate(exc, db_path(db), timeout_ms)


def _translate(exc: sqlite3.DatabaseError, path: str, timeout_ms: int | None) -> StorageError | None:
    message = str(exc).lower()
    if "locked" in message or "busy" in message:
        waited = f" for {timeout_ms} ms" if timeout_ms is not None else ""
        return StorageError(
            f"database {path} is locked: another process or connection kept its write lock{waited}; "
            "wait for it to finish (or stop the other `gal` / studio process using it) and retry"
        )
    if "readonly" in message or "read-only" in message:
        return StorageError(
            f"database {path} is read-only: check its permissions (and its folder's) "
            "or pass another --runs-dir"
        )
    if "unable to open" in message:
        return StorageError(
            f"cannot open database {path}: check that its folder exists and is writable, "
            "or pass another --runs-dir"
        )
    if "not a database" in message or "malformed" in message:
        return StorageError(
            f"{path} is not a usable SQLite database ({exc}); move it away or pass another --runs-dir"
        )
    if "disk i/o" in message or "database or disk is full" in message:
        return StorageError(
            f"cannot write database {path} ({exc}); free disk space or pass another --runs-dir"
        )
    return None


# --- small shared helpers --------------------------------------------------------------------


def now() -> str:
    """UTC timestamp with microseconds, so rows written in the same second still sort."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def rows(db: Database, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Row]:
    cursor = db.execute(sql, params)
    keys = [column[0] for column in cursor.description]
    return [dict(zip(keys, values, strict=True)) for values in cursor.fetchall()]


def one(db: Database, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Row | None:
    found = rows(db, sql, params)
    return found[0] if found else None


def get_row(db: Database, table: str, pk: Any) -> Row | None:
    """The row of ``table`` whose primary key is ``pk``, or None (sqlite-utils' ``Table.get``)."""
    try:
        return db[table].get(pk)
    except NotFoundError:
        return None


def insert_unique(db: Database, table: str, values: Row, duplicate: str) -> int:
    """Insert one row; a UNIQUE conflict becomes ``ValueError(duplicate)`` (the message names the fix),
    any other constraint a ValueError quoting the database. Returns the new rowid."""
    try:
        return db[table].insert(values).last_rowid
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc):
            raise ValueError(duplicate) from None
        raise ValueError(f"{table} row rejected by the database: {exc}") from None


def require_run(db: Database, run_id: str) -> None:
    if db.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is None:
        raise RunNotFound(run_id)


def require_round(db: Database, run_id: str, round_index: int) -> None:
    if (
        db.execute(
            "SELECT 1 FROM rounds WHERE run_id = ? AND round_index = ?", [run_id, round_index]
        ).fetchone()
        is None
    ):
        require_run(db, run_id)
        raise ValueError(f"round {round_index} of run {run_id!r} does not exist; start_round() creates it")


def check_choice(value: Any, choices: Iterable[str], what: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value


def check_fields(fields: Iterable[str], allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ValueError(
            f"cannot set {', '.join(map(repr, unknown))} on {what}; allowed: {', '.join(sorted(allowed))}"
        )


def check_verdict(verdict: Any) -> int | None:
    """0 (aligned), 1 (overfit) or None; numpy integers are fine, floats and strings are not."""
    if verdict is None:
        return None
    if isinstance(verdict, bool):  # True is an int to Python, not a verdict
        raise ValueError(f"verdict must be 0 (aligned), 1 (overfit) or None (clear), not {verdict!r}")
    try:
        value = operator.index(verdict)
    except TypeError:
        value = None
    if value not in (0, 1):
        raise ValueError(f"verdict must be 0 (aligned), 1 (overfit) or None (clear), not {verdict!r}")
    return value


def as_int(value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, not {value!r}") from None


def as_opt_int(value: Any, what: str) -> int | None:
    return None if value is None else as_int(value, what)


def as_opt_float(value: Any, what: str) -> float | None:
    # float(): numpy.float32 is not a float subclass and sqlite3 cannot bind it.
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, not {value!r}") from None


def to_json(value: Any, what: str) -> str:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dict, not {type(value).__name__}")
    try:
        return json.dumps(dict(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc}") from None


def decode(row: Row | None, json_columns: Iterable[str] = (), bool_columns: Iterable[str] = ()) -> Row | None:
    if row is None:
        return None
    for column in json_columns:
        if column in row and row[column] is not None:
            row[column] = json.loads(row[column])
    for column in bool_columns:
        if column in row and row[column] is not None:
            row[column] = bool(row[column])
    return row
