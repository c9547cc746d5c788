"""Runs and their reference images."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from .db import (
    Row,
    as_int,
    as_opt_float,
    as_opt_int,
    check_choice,
    check_fields,
    decode,
    get_row,
    insert_unique,
    now,
    require_run,
    rows,
    storage_op,
    to_json,
    transaction,
)
from .errors import RunNotFound

RUN_STATUSES = ("active", "awaiting_review", "finished", "failed", "cancelled")
REFERENCE_SOURCES = ("real", "synthetic")
_RUN_FIELDS = ("name", "status", "current_round", "config", "run_dir", "error")


@storage_op
def create_run(db: Database, *, run_id: str, name: str, config: dict[str, Any], run_dir: str) -> Row:
    """Insert a run (status `active`, round 0) and return its row."""
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError(f"run_id must be a non-empty string, not {run_id!r}")
    config_json = to_json(config, "config")
    stamp = now()
    values = {"run_id": run_id, "name": name, "config": config_json, "run_dir": str(run_dir),
              "created_at": stamp, "updated_at": stamp}  # fmt: skip
    with transaction(db):
        insert_unique(db, "runs", values, f"run {run_id!r} already exists; pick another run id")
    return get_run(db, run_id)


@storage_op
def get_run(db: Database, run_id: str) -> Row:
    """The run's row (config decoded); raises RunNotFound."""
    row = get_row(db, "runs", run_id)
    if row is None:
        raise RunNotFound(run_id)
    return decode(row, json_columns=("config",))


@storage_op
def list_runs(db: Database) -> list[Row]:
    """All runs, newest first."""
    found = rows(db, "SELECT * FROM runs ORDER BY created_at DESC, rowid DESC")
    return [decode(row, json_columns=("config",)) for row in found]


@storage_op
def update_run(db: Database, run_id: str, **fields: Any) -> None:
    """Set some of: name, status, current_round, config (dict), run_dir, error."""
    check_fields(fields, _RUN_FIELDS, "a run")
    values = dict(fields)
    if "status" in values:
        check_choice(values["status"], RUN_STATUSES, "run status")
    if "current_round" in values:
        values["current_round"] = as_int(values["current_round"], "current_round")
    if "config" in values:
        values["config"] = to_json(values["config"], "config")
    if "run_dir" in values:
        values["run_dir"] = str(values["run_dir"])
    values["updated_at"] = now()
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    with transaction(db):
        cursor = db.execute(
            f"UPDATE runs SET {assignments} WHERE run_id = :_run_id", {**values, "_run_id": run_id}
        )
        if cursor.rowcount == 0:
            raise RunNotFound(run_id)


@storage_op
def add_reference(
    db: Database,
    *,
    run_id: str,
    file: str,
    sha256: str,
    prompt: str,
    non_soi_text: str,
    weight: float,
    round_added: int,
    source: str,
    image_id: int | None = None,
) -> int:
    """Add a training image (`real`: uploaded, round 0; `synthetic`: added by a round's selection);
    return its id."""
    check_choice(source, REFERENCE_SOURCES, "reference source")
    weight_value = as_opt_float(weight, "weight")
    if weight_value is None:
        raise ValueError("weight must be a number, not None")
    image_id = as_opt_int(image_id, "image_id")
    values = {
        "run_id": run_id, "file": str(file), "sha256": sha256, "prompt": prompt, "non_soi_text": non_soi_text,
        "weight": weight_value, "round_added": as_int(round_added, "round_added"), "source": source,
        "image_id": image_id, "created_at": now(),
    }  # fmt: skip
    with transaction(db):
        require_run(db, run_id)
        if image_id is not None and get_row(db, "images", image_id) is None:
            raise ValueError(f"image {image_id} does not exist; pass the id add_images() returned, or None")
        duplicate = (
            f"run {run_id!r} already has a reference with file {str(file)!r}; "
            "give each reference its own file"
        )
        return insert_unique(db, "refs", values, duplicate)


@storage_op
def list_references(db: Database, run_id: str, *, up_to_round: int | None = None) -> list[Row]:
    """The run's references in insertion order; with `up_to_round`, those added in rounds <= it
    (real ones are 0)."""
    require_run(db, run_id)
    if up_to_round is None:
        return rows(db, "SELECT * FROM refs WHERE run_id = ? ORDER BY id", [run_id])
    return rows(
        db,
        "SELECT * FROM refs WHERE run_id = ? AND round_added <= ? ORDER BY id",
        [run_id, as_int(up_to_round, "up_to_round")],
    )
