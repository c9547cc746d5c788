"""Rounds, their anchors (prompt directions) and the images each round selects."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from .db import (
    Row,
    as_int,
    as_opt_float,
    check_choice,
    check_fields,
    decode,
    get_row,
    insert_unique,
    now,
    one,
    require_round,
    require_run,
    rows,
    storage_op,
    to_json,
    transaction,
)

ROUND_STATES = (
    "training",
    "generating",
    "judging",
    "evaluating",
    "review",
    "done",
)  # a round's steps in order; a failed or cancelled job leaves the round in its step's state
ROUND_MODES = ("auto", "human")
_ROUND_FIELDS = ("mode", "state", "openness", "timings", "metrics", "adapter_path", "error")
_ROUND_JSON = ("timings", "metrics")
_ANCHOR_FIELDS = ("prompt", "oracle_text", "in_pool", "overfit_rate", "uncertainty", "selected")
_ANCHOR_BOOLS = ("in_pool", "selected")


@storage_op
def start_round(db: Database, *, run_id: str, round_index: int, mode: str) -> Row:
    """Create round `round_index` (state `training`); if it exists already, return it unchanged."""
    round_index = as_int(round_index, "round_index")
    if round_index < 1:
        raise ValueError(f"round_index is 1-based, got {round_index}")
    check_choice(mode, ROUND_MODES, "round mode")
    stamp = now()
    with transaction(db):
        require_run(db, run_id)
        db.execute(
            "INSERT INTO rounds (run_id, round_index, mode, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id, round_index) DO NOTHING",
            [run_id, round_index, mode, stamp, stamp],
        )
    return get_round(db, run_id, round_index)


@storage_op
def get_round(db: Database, run_id: str, round_index: int) -> Row | None:
    """The round's row (timings and metrics decoded), or None; raises RunNotFound for an unknown run."""
    row = one(db, "SELECT * FROM rounds WHERE run_id = ? AND round_index = ?", [run_id, round_index])
    if row is None:
        require_run(db, run_id)
    return decode(row, json_columns=_ROUND_JSON)


@storage_op
def update_round(db: Database, run_id: str, round_index: int, **fields: Any) -> None:
    """Set some of: state, mode, openness, timings (dict), metrics (dict), adapter_path, error.

    `timings` and `metrics` replace the stored dict (read, merge and write back to add a key).
    """
    check_fields(fields, _ROUND_FIELDS, "a round")
    round_index = as_int(round_index, "round_index")
    values = dict(fields)
    if "state" in values:
        check_choice(values["state"], ROUND_STATES, "round state")
    if "mode" in values:
        check_choice(values["mode"], ROUND_MODES, "round mode")
    if "openness" in values:
        values["openness"] = as_opt_float(values["openness"], "openness")
    for column in _ROUND_JSON:
        if column in values:
            values[column] = to_json(values[column], column)
    if "adapter_path" in values and values["adapter_path"] is not None:
        values["adapter_path"] = str(values["adapter_path"])
    values["updated_at"] = now()
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    with transaction(db):
        cursor = db.execute(
            f"UPDATE rounds SET {assignments} WHERE run_id = :_run_id AND round_index = :_round_index",
            {**values, "_run_id": run_id, "_round_index": round_index},
        )
        if cursor.rowcount == 0:
            require_round(db, run_id, round_index)


@storage_op
def list_rounds(db: Database, run_id: str) -> list[Row]:
    """The run's rounds, first to last."""
    require_run(db, run_id)
    found = rows(db, "SELECT * FROM rounds WHERE run_id = ? ORDER BY round_index", [run_id])
    return [decode(row, json_columns=_ROUND_JSON) for row in found]


@storage_op
def upsert_anchors(db: Database, run_id: str, round_index: int, anchors: list[dict[str, Any]]) -> None:
    """Insert or update anchors by `anchor_index`; a new anchor needs `prompt` and `oracle_text`.

    Only the keys given are written, so `[{"anchor_index": 2, "overfit_rate": 0.4}]` updates one column.
    """
    round_index = as_int(round_index, "round_index")
    prepared = []
    for anchor in anchors:
        if "anchor_index" not in anchor:
            raise ValueError(f"each anchor needs an 'anchor_index'; got keys {sorted(anchor)}")
        check_fields((key for key in anchor if key != "anchor_index"), _ANCHOR_FIELDS, "an anchor")
        values = {key: anchor[key] for key in _ANCHOR_FIELDS if key in anchor}
        for column in ("overfit_rate", "uncertainty"):
            if column in values:
                values[column] = as_opt_float(values[column], column)
        for column in _ANCHOR_BOOLS:
            if column in values:
                values[column] = int(bool(values[column]))
        index = as_int(anchor["anchor_index"], "anchor_index")
        if index < 0:
            raise ValueError(f"anchor_index is 0-based, got {index}")
        prepared.append((index, values))
    with transaction(db):
        require_round(db, run_id, round_index)
        for index, values in prepared:
            key = [run_id, round_index, index]
            exists = db.execute(
                "SELECT 1 FROM anchors WHERE run_id = ? AND round_index = ? AND anchor_index = ?", key
            ).fetchone()
            if exists is None:
                missing = [column for column in ("prompt", "oracle_text") if values.get(column) is None]
                if missing:
                    raise ValueError(
                        f"new anchor {index} of round {round_index} needs {' and '.join(missing)}"
                    )
                columns = ["run_id", "round_index", "anchor_index", *values]
                db.execute(
                    f"INSERT INTO anchors ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    [*key, *values.values()],
                )
            elif values:
                assignments = ", ".join(f"{column} = ?" for column in values)
                db.execute(
                    f"UPDATE anchors SET {assignments} "
                    "WHERE run_id = ? AND round_index = ? AND anchor_index = ?",
                    [*values.values(), *key],
                )


@storage_op
def list_anchors(db: Database, run_id: str, round_index: int) -> list[Row]:
    """The round's anchors by anchor_index (`in_pool` and `selected` as bools)."""
    found = rows(
        db,
        "SELECT * FROM anchors WHERE run_id = ? AND round_index = ? ORDER BY anchor_index",
        [run_id, round_index],
    )
    if not found:
        require_run(db, run_id)
    return [decode(row, bool_columns=_ANCHOR_BOOLS) for row in found]


@storage_op
def record_selection(
    db: Database,
    *,
    run_id: str,
    round_index: int,
    anchor_index: int,
    image_id: int,
    weight: float,
    strategy: str,
) -> int:
    """Record that a round picked `image_id` (with its loss weight and the strategy that chose it);
    return the id."""
    weight_value = as_opt_float(weight, "weight")
    if weight_value is None:
        raise ValueError("weight must be a number, not None")
    if not isinstance(strategy, str) or not strategy:
        raise ValueError(f"strategy must be a non-empty string such as 'uncertainty', not {strategy!r}")
    round_index = as_int(round_index, "round_index")
    image_id = as_int(image_id, "image_id")
    values = {
        "run_id": run_id, "round_index": round_index, "anchor_index": as_int(anchor_index, "anchor_index"),
        "image_id": image_id, "weight": weight_value, "strategy": strategy, "created_at": now(),
    }  # fmt: skip
    with transaction(db):
        require_round(db, run_id, round_index)
        image = get_row(db, "images", image_id)
        if image is None:
            raise ValueError(f"image {image_id} does not exist; pass an id add_images() returned")
        if (image["run_id"], image["round_index"]) != (run_id, round_index):
            raise ValueError(
                f"image {image_id} belongs to round {image['round_index']} of run {image['run_id']!r}, "
                f"not round {round_index} of run {run_id!r}; select images of the round being committed"
            )
        duplicate = f"image {image_id} is already selected in round {round_index} of run {run_id!r}"
        return insert_unique(db, "selections", values, duplicate)


@storage_op
def list_selections(db: Database, run_id: str, round_index: int | None = None) -> list[Row]:
    """The run's selections (of one round when given), in the order they were recorded."""
    require_run(db, run_id)
    if round_index is None:
        return rows(db, "SELECT * FROM selections WHERE run_id = ? ORDER BY round_index, id", [run_id])
    return rows(
        db, "SELECT * FROM selections WHERE run_id = ? AND round_index = ? ORDER BY id", [run_id, round_index]
    )
