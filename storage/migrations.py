"""Schema, as an ordered list of migrations (the sqlite-migrate pattern, by hand).

Each migration is a function `mNNN_name(db)` that runs inside the transaction `migrate()` opens;
its name is recorded in `_migrations` once applied. Never edit an applied migration: append a
new one. SQLite ignores `PRAGMA foreign_keys` inside a transaction, so a future migration that
rebuilds a table (sqlite-utils `transform`) must keep the foreign keys valid as it goes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sqlite_utils import Database


def _run(db: Database, script: str) -> None:
    # One statement at a time: executescript() would commit the surrounding transaction.
    # complete_statement() keeps a trigger body (which has its own semicolons) in one piece.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {statement.strip()[:80]!r}")


def m001_initial_schema(db: Database) -> None:
    _run(
        db,
        """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    current_round INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL DEFAULT '{}',          -- JSON, the whole RunConfig
    run_dir TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE rounds (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    round_index INTEGER NOT NULL CHECK (round_index >= 1),
    mode TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'training',
    openness REAL,
    timings TEXT NOT NULL DEFAULT '{}',         -- JSON
    metrics TEXT NOT NULL DEFAULT '{}',         -- JSON
    adapter_path TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX rounds_by_run ON rounds (run_id, round_index);
CREATE TABLE anchors (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    anchor_index INTEGER NOT NULL CHECK (anchor_index >= 0),
    prompt TEXT NOT NULL,
    oracle_text TEXT NOT NULL,
    in_pool INTEGER NOT NULL DEFAULT 1 CHECK (in_pool IN (0, 1)),
    overfit_rate REAL,
    uncertainty REAL,
    selected INTEGER NOT NULL DEFAULT 0 CHECK (selected IN (0, 1)),
    FOREIGN KEY (run_id, round_index) REFERENCES rounds (run_id, round_index)
);
CREATE UNIQUE INDEX anchors_by_round ON anchors (run_id, round_index, anchor_index);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    anchor_index INTEGER,
    slot INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('anchor', 'eval')),
    prompt TEXT,
    file TEXT NOT NULL,                          -- relative to the run folder
    seed INTEGER,
    sim_anchor REAL,
    sim_non_soi REAL,
    oracle_verdict INTEGER CHECK (oracle_verdict IN (0, 1)),
    created_at TEXT NOT NULL,
    FOREIGN KEY (run_id, round_index) REFERENCES rounds (run_id, round_index)
);
CREATE UNIQUE INDEX images_by_round ON images (run_id, round_index, kind, anchor_index, slot);
CREATE TABLE refs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    file TEXT NOT NULL,                          -- relative to the run folder
    sha256 TEXT NOT NULL,
    prompt TEXT NOT NULL,
    non_soi_text TEXT NOT NULL,
    weight REAL NOT NULL,
    round_added INTEGER NOT NULL CHECK (round_added >= 0),
    source TEXT NOT NULL CHECK (source IN ('real', 'synthetic')),
    image_id INTEGER REFERENCES images(id),
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX refs_by_run ON refs (run_id, file);
CREATE TABLE decisions (
    -- AUTOINCREMENT: ids only ever grow, so "highest id" is "latest" even across crashes.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    run_id TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    verdict INTEGER CHECK (verdict IN (0, 1)),  -- NULL: cleared, back to the oracle
    source TEXT NOT NULL CHECK (source IN ('oracle', 'person')),
    note TEXT,
    undoes INTEGER REFERENCES decisions(id),     -- set on rows appended by undo_last_decision
    created_at TEXT NOT NULL,
    CHECK (undoes IS NULL OR source = 'person')
);
CREATE INDEX decisions_by_image ON decisions (image_id, source, id);
CREATE INDEX decisions_by_round ON decisions (run_id, round_index, source, id);
CREATE UNIQUE INDEX decisions_undone_once ON decisions (undoes) WHERE undoes IS NOT NULL;
CREATE TRIGGER decisions_no_update BEFORE UPDATE ON decisions
BEGIN
    SELECT RAISE(ABORT, 'decisions are append-only: record a new decision instead of updating one');
END;
CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions
BEGIN
    SELECT RAISE(ABORT, 'decisions are append-only: rows are never deleted');
END;
CREATE TABLE selections (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    anchor_index INTEGER NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id),
    weight REAL NOT NULL,
    strategy TEXT NOT NULL,
    created_at TEXT NOT NULL,
    FOREIGN KEY (run_id, round_index) REFERENCES rounds (run_id, round_index)
);
CREATE UNIQUE INDEX selections_by_round ON selections (run_id, round_index, image_id);
""",
    )


def m002_run_leases(db: Database) -> None:
    _run(
        db,
        """
CREATE TABLE leases (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
    owner TEXT NOT NULL,                         -- host:pid:token of the process that holds it
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at TEXT NOT NULL,
    heartbeat REAL NOT NULL                      -- unix seconds of the holder's last sign of life
);
""",
    )


def m003_review_actions(db: Database) -> None:
    """Review actions: every click, key or bulk action is one row of `actions`, its decisions carry its
    id, so undo/redo restore a whole action; `seen` marks a person's "seen, no opinion" (skip) row, whose
    verdict stays NULL (the final verdict is the oracle's) but which counts as reviewed."""
    _run(
        db,
        """
CREATE TABLE actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('do', 'undo', 'redo')),
    target INTEGER REFERENCES actions(id),       -- undo/redo: the action undone or redone
    label TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    CHECK ((kind = 'do') = (target IS NULL))
);
CREATE INDEX actions_by_round ON actions (run_id, round_index, id);
CREATE TRIGGER actions_no_update BEFORE UPDATE ON actions
BEGIN
    SELECT RAISE(ABORT, 'actions are append-only: record a new action instead of updating one');
END;
CREATE TRIGGER actions_no_delete BEFORE DELETE ON actions
BEGIN
    SELECT RAISE(ABORT, 'actions are append-only: rows are never deleted');
END;
ALTER TABLE decisions ADD COLUMN action_id INTEGER REFERENCES actions(id);
ALTER TABLE decisions ADD COLUMN seen INTEGER NOT NULL DEFAULT 0 \
CHECK (seen IN (0, 1) AND (seen = 0 OR verdict IS NULL));
CREATE INDEX decisions_by_action ON decisions (action_id);
""",
    )


def m004_judges(db: Database) -> None:
    """Judges (issue 27): each image's verdict carries the judge that gave it, its confidence in [0, 1],
    its evidence (JSON: the scores it used) and whether an ensemble's members disagreed; `judge_votes`
    keeps every judge's own vote per image (an ensemble's members and the ensemble); `judge_agreement`
    logs, for every person row, whether each judge's vote agrees with the person (append-only)."""
    _run(
        db,
        """
ALTER TABLE images ADD COLUMN judge TEXT;
ALTER TABLE images ADD COLUMN confidence REAL \
CHECK (confidence IS NULL OR (confidence >= 0 AND confidence <= 1));
ALTER TABLE images ADD COLUMN evidence TEXT;     -- JSON
ALTER TABLE images ADD COLUMN disagree INTEGER CHECK (disagree IS NULL OR disagree IN (0, 1));
CREATE TABLE judge_votes (
    image_id INTEGER NOT NULL REFERENCES images(id),
    judge TEXT NOT NULL,
    verdict INTEGER NOT NULL CHECK (verdict IN (0, 1)),
    confidence REAL NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    PRIMARY KEY (image_id, judge)
);
CREATE TABLE judge_agreement (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    run_id TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    judge TEXT NOT NULL,
    judge_verdict INTEGER NOT NULL CHECK (judge_verdict IN (0, 1)),
    person_verdict INTEGER CHECK (person_verdict IN (0, 1)),   -- NULL: cleared or skipped
    agrees INTEGER CHECK (agrees IN (0, 1)),                   -- NULL when person_verdict is
    decision_id INTEGER NOT NULL REFERENCES decisions(id),
    created_at TEXT NOT NULL
);
CREATE INDEX judge_agreement_by_judge ON judge_agreement (judge, image_id, id);
CREATE INDEX judge_agreement_by_round ON judge_agreement (run_id, round_index, id);
CREATE TRIGGER judge_agreement_no_update BEFORE UPDATE ON judge_agreement
BEGIN
    SELECT RAISE(ABORT, 'judge_agreement is append-only');
END;
CREATE TRIGGER judge_agreement_no_delete BEFORE DELETE ON judge_agreement
BEGIN
    SELECT RAISE(ABORT, 'judge_agreement is append-only');
END;
""",
    )


# Applied in this order; a name, once released, is never reused or edited.
MIGRATIONS: tuple[Callable[[Database], None], ...] = (
    m001_initial_schema,
    m002_run_leases,
    m003_review_actions,
    m004_judges,
)
