"""Generated images, the oracle's and the person's verdicts on them, and undo.

`decisions` is append-only (triggers refuse UPDATE and DELETE): the latest person row of an image
(highest id) is the person's verdict, NULL there meaning "cleared, back to the oracle". The final
verdict is the person's when given, else the oracle's. `images.oracle_verdict` mirrors the latest
oracle row, written in the same transaction.

Review actions (m003): `record_action` writes one click, key or bulk action as an `actions` row plus
one decision per image it changes, all carrying its `action_id`; `undo_action` / `redo_action` append
an action (and decisions) that restore every image of the last action — nothing is ever rewritten.
A person row with `seen = 1` is "seen, no opinion" (skip): verdict NULL, so the final verdict is the
oracle's, but the image counts as reviewed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlite_utils import Database

from .db import (
    Row,
    as_int,
    as_opt_float,
    as_opt_int,
    check_choice,
    check_fields,
    check_verdict,
    get_row,
    now,
    one,
    require_round,
    require_run,
    rows,
    storage_op,
    to_json,
    transaction,
)

IMAGE_KINDS = ("anchor", "eval")
DECISION_SOURCES = ("oracle", "person")
_IMAGE_REQUIRED = ("run_id", "round_index", "anchor_index", "slot", "file", "kind")
_IMAGE_OPTIONAL = ("prompt", "seed")
_SIMILARITY_KEYS = ("sim_anchor", "sim_non_soi", "oracle_verdict")
_JUDGE_KEYS = ("judge", "confidence", "evidence", "votes", "disagree")  # optional (m004)

# The person's verdict of each image: the verdict of its latest person decision.
_PERSON_VERDICT = (
    "(SELECT d.verdict FROM decisions AS d WHERE d.image_id = images.id AND d.source = 'person'"
    " ORDER BY d.id DESC LIMIT 1)"
)
_PERSON_SEEN = (
    "(SELECT d.seen FROM decisions AS d WHERE d.image_id = images.id AND d.source = 'person'"
    " ORDER BY d.id DESC LIMIT 1)"
)
SEEN = "seen"  # record_action's verdict for "seen, no opinion" (skip)


@storage_op
def add_images(db: Database, rows: list[dict[str, Any]]) -> list[int]:
    """Insert generated images (run_id, round_index, anchor_index, slot, file, kind, prompt, seed);
    return their ids.

    `anchor_index` may be None for `eval` images. (run, round, kind, anchor, slot) is unique.
    """
    prepared = []
    for row in rows:
        missing = [key for key in _IMAGE_REQUIRED if key not in row]
        if missing:
            raise ValueError(f"an image row needs {', '.join(missing)}; got keys {sorted(row)}")
        check_fields(row, _IMAGE_REQUIRED + _IMAGE_OPTIONAL, "an image")
        check_choice(row["kind"], IMAGE_KINDS, "image kind")
        if row["anchor_index"] is None and row["kind"] == "anchor":
            raise ValueError("an 'anchor' image needs an anchor_index; only 'eval' images may have None")
        prepared.append(
            [
                row["run_id"],
                as_int(row["round_index"], "round_index"),
                as_opt_int(row["anchor_index"], "anchor_index"),
                as_int(row["slot"], "slot"),
                row["kind"],
                row.get("prompt"),
                str(row["file"]),
                as_opt_int(row.get("seed"), "seed"),
            ]
        )
    ids = []
    with transaction(db):
        for run_round in {(values[0], values[1]) for values in prepared}:
            require_round(db, *run_round)
        stamp = now()
        for values in prepared:
            duplicate = db.execute(
                "SELECT id FROM images WHERE run_id = ? AND round_index = ? AND kind = ? "
                "AND anchor_index IS ?"
                " AND slot = ?",
                [values[0], values[1], values[4], values[2], values[3]],
            ).fetchone()
            if duplicate is not None:
                raise ValueError(
                    f"round {values[1]} of run {values[0]!r} already has image {duplicate[0]} "
                    f"(kind {values[4]}, anchor {values[2]}, slot {values[3]}); use another slot"
                )
            cursor = db.execute(
                "INSERT INTO images (run_id, round_index, anchor_index, slot, "
                "kind, prompt, file, seed, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [*values, stamp],
            )
            ids.append(cursor.lastrowid)
    return ids


@storage_op
def list_images(db: Database, run_id: str, round_index: int, kind: str | None = "anchor") -> list[Row]:
    """The round's images of `kind` (None: all) by anchor_index, slot; each with oracle_verdict,
    person_verdict, person_seen (the person's latest row is a skip) and final_verdict (person's if
    not None, else oracle's)."""
    where, params = "run_id = ? AND round_index = ?", [run_id, round_index]
    if kind is not None:
        check_choice(kind, IMAGE_KINDS, "image kind")
        where, params = where + " AND kind = ?", [*params, kind]
    found = rows(
        db,
        f"SELECT images.*, {_PERSON_VERDICT} AS person_verdict, {_PERSON_SEEN} AS person_seen"
        f" FROM images WHERE {where}"
        " ORDER BY kind, anchor_index, slot",
        params,
    )
    if not found:
        require_run(db, run_id)
    for row in found:
        row["person_seen"] = bool(row["person_seen"])
        if row.get("evidence") is not None:
            row["evidence"] = json.loads(row["evidence"])
        row["final_verdict"] = (
            row["person_verdict"] if row["person_verdict"] is not None else row["oracle_verdict"]
        )
    return found


@storage_op
def final_verdicts(
    db: Database, run_id: str, round_index: int, *, kind: str | None = None
) -> dict[int, dict]:
    """image_id -> {"oracle", "person", "final"} for the round's images (of one kind when given)."""
    return {
        row["id"]: {
            "oracle": row["oracle_verdict"],
            "person": row["person_verdict"],
            "final": row["final_verdict"],
        }
        for row in list_images(db, run_id, round_index, kind=kind)
    }


@storage_op
def set_similarities(db: Database, rows: list[dict[str, Any]]) -> None:
    """Store the oracle's output per image: `id` (or `image_id`), sim_anchor, sim_non_soi, oracle_verdict;
    optionally the judge's `judge` (name), `confidence` in [0, 1], `evidence` (dict), `votes`
    ({judge: (verdict, confidence)}, every judge that voted — they replace the image's earlier votes) and
    `disagree` (its judges' verdicts differ).

    Each row also appends one `oracle` decision, all in one transaction.
    """
    prepared = []
    for row in rows:
        image_id = row.get("id", row.get("image_id"))
        if image_id is None:
            raise ValueError(f"a similarity row needs the image 'id'; got keys {sorted(row)}")
        missing = [key for key in _SIMILARITY_KEYS if key not in row]
        if missing:
            raise ValueError(f"similarity row of image {image_id} needs {', '.join(missing)}")
        check_fields(row, ("id", "image_id", *_SIMILARITY_KEYS, *_JUDGE_KEYS), "a similarity row")
        prepared.append(
            (
                as_int(image_id, "image id"),
                as_opt_float(row["sim_anchor"], "sim_anchor"),
                as_opt_float(row["sim_non_soi"], "sim_non_soi"),
                check_verdict(row["oracle_verdict"]),
                _judge_fields(row, image_id),
            )
        )
    with transaction(db):
        stamp = now()
        for image_id, sim_anchor, sim_non_soi, verdict, judged in prepared:
            image = _require_image(db, image_id)
            db.execute(
                "UPDATE images SET sim_anchor = ?, sim_non_soi = ?, oracle_verdict = ? WHERE id = ?",
                [sim_anchor, sim_non_soi, verdict, image_id],
            )
            if judged is not None:
                name, confidence, evidence, disagree, votes = judged
                db.execute(
                    "UPDATE images SET judge = ?, confidence = ?, evidence = ?, disagree = ? WHERE id = ?",
                    [name, confidence, evidence, disagree, image_id],
                )
                db.execute("DELETE FROM judge_votes WHERE image_id = ?", [image_id])  # re-judged: ours only
                for judge, (vote, vote_confidence) in votes.items():
                    db.execute(
                        "INSERT INTO judge_votes (image_id, judge, verdict, confidence) VALUES (?, ?, ?, ?)",
                        [image_id, judge, vote, vote_confidence],
                    )
            _append_decision(db, image, verdict, "oracle", None, None, stamp)


def _confidence(value: Any, what: str) -> float:
    number = as_opt_float(value, what)
    if number is None or not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    return number


def _judge_fields(row: dict[str, Any], image_id: Any):
    """(judge, confidence, evidence JSON, disagree, votes) of a similarity row, or None without a judge."""
    if not any(key in row for key in _JUDGE_KEYS):
        return None
    if not row.get("judge") or not isinstance(row["judge"], str):
        raise ValueError(f"similarity row of image {image_id} has judge fields but no 'judge' name")
    confidence = _confidence(row.get("confidence"), f"confidence of image {image_id}")
    evidence = to_json(row.get("evidence") or {}, f"evidence of image {image_id}")
    votes = {}
    for judge, vote in dict(row.get("votes") or {}).items():
        verdict, vote_confidence = vote
        if check_verdict(verdict) is None:
            raise ValueError(f"judge {judge!r} voted None on image {image_id}: a vote is 0 or 1")
        votes[str(judge)] = (
            int(verdict),
            _confidence(vote_confidence, f"{judge}'s confidence on {image_id}"),
        )
    disagree = row.get("disagree")
    return row["judge"], confidence, evidence, None if disagree is None else int(bool(disagree)), votes


def _log_agreement(db: Database, image: Row, verdict: int | None, decision_id: int, stamp: str) -> None:
    """One `judge_agreement` row per judge that voted on the image, for a person row just appended."""
    db.execute(
        "INSERT INTO judge_agreement (image_id, run_id, round_index, judge, judge_verdict, person_verdict,"
        " agrees, decision_id, created_at)"
        " SELECT image_id, ?, ?, judge, verdict, ?, CASE WHEN ? IS NULL THEN NULL ELSE verdict = ? END, ?, ?"
        " FROM judge_votes WHERE image_id = ? ORDER BY judge",
        [image["run_id"], image["round_index"], verdict, verdict, verdict, decision_id, stamp, image["id"]],
    )


@storage_op
def judge_agreement(db: Database, run_id: str | None = None) -> list[Row]:
    """How often the person agreed with each judge: per judge, over the images where the person's latest
    word is a verdict (not cleared, not a skip) — ``{"judge", "judged", "agreed", "overruled", "rate"}``,
    by judge name. ``run_id`` None: every run in the database (the data to choose a judge by)."""
    where = "" if run_id is None else " AND a.run_id = ?"
    found = rows(
        db,
        "SELECT a.judge AS judge, COUNT(*) AS judged, SUM(a.agrees) AS agreed FROM judge_agreement AS a"
        " WHERE a.id = (SELECT MAX(b.id) FROM judge_agreement AS b WHERE b.image_id = a.image_id"
        " AND b.judge = a.judge) AND a.person_verdict IS NOT NULL"
        + where
        + " GROUP BY a.judge ORDER BY a.judge",
        [] if run_id is None else [run_id],
    )
    for row in found:
        row["agreed"] = int(row["agreed"] or 0)
        row["overruled"] = row["judged"] - row["agreed"]
        row["rate"] = row["agreed"] / row["judged"]
    return found


@storage_op
def record_decision(
    db: Database, *, image_id: int, verdict: int | None, source: str, note: str | None = None
) -> int:
    """Append a decision and return its id. A person's None clears their verdict (back to the oracle's);
    an oracle decision also becomes the image's `oracle_verdict`."""
    verdict = check_verdict(verdict)
    check_choice(source, DECISION_SOURCES, "decision source")
    image_id = as_int(image_id, "image_id")
    with transaction(db):
        image = _require_image(db, image_id)
        if source == "oracle":
            db.execute("UPDATE images SET oracle_verdict = ? WHERE id = ?", [verdict, image_id])
        return _append_decision(db, image, verdict, source, note, None, now())


@storage_op
def undo_last_decision(
    db: Database, run_id: str, round_index: int, *, legacy_only: bool = False
) -> Row | None:
    """Undo the round's latest person decision that is not an undo and not undone yet.

    Appends a person decision that gives that image back the person verdict it had before
    (None when it had none), with `undoes` = the undone id and note 'undo:<id>'. Calling it
    again walks further back; returns the appended row, or None when nothing is left to undo.
    `legacy_only`: only decisions recorded outside an action (before m003, or by `record_decision`).
    """
    with transaction(db):
        target = one(
            db,
            "SELECT * FROM decisions AS d WHERE d.run_id = ? AND d.round_index = ? AND d.source = 'person'"
            " AND d.undoes IS NULL AND NOT EXISTS (SELECT 1 FROM decisions AS u WHERE u.undoes = d.id)"
            + (" AND d.action_id IS NULL" if legacy_only else "")
            + " ORDER BY d.id DESC LIMIT 1",
            [run_id, round_index],
        )
        if target is None:
            require_run(db, run_id)
            return None
        before = db.execute(
            "SELECT verdict FROM decisions WHERE image_id = ? AND source = 'person' AND id < ?"
            " ORDER BY id DESC LIMIT 1",
            [target["image_id"], target["id"]],
        ).fetchone()
        image = _require_image(db, target["image_id"])
        decision_id = _append_decision(
            db, image, before[0] if before else None, "person", f"undo:{target['id']}", target["id"], now()
        )
        return one(db, "SELECT * FROM decisions WHERE id = ?", [decision_id])


def _state_before(db: Database, image_id: int, decision_id: int) -> tuple[int | None, int]:
    """(verdict, seen) of the image's latest person row before `decision_id` ((None, 0): none)."""
    before = db.execute(
        "SELECT verdict, seen FROM decisions WHERE image_id = ? AND source = 'person' AND id < ?"
        " ORDER BY id DESC LIMIT 1",
        [image_id, decision_id],
    ).fetchone()
    return (before[0], before[1]) if before else (None, 0)


def _new_action(
    db: Database, run_id: str, round_index: int, kind: str, target: int | None, label: str
) -> int:
    cursor = db.execute(
        "INSERT INTO actions (run_id, round_index, kind, target, label, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [run_id, round_index, kind, target, label, now()],
    )
    return cursor.lastrowid


def _append_person(db: Database, image: Row, verdict, seen: int, action_id: int, note, undoes, stamp) -> int:
    cursor = db.execute(
        "INSERT INTO decisions (image_id, run_id, round_index, verdict, source, note, undoes, created_at,"
        " action_id, seen) VALUES (?, ?, ?, ?, 'person', ?, ?, ?, ?, ?)",
        [image["id"], image["run_id"], image["round_index"], verdict, note, undoes, stamp, action_id, seen],
    )
    _log_agreement(db, image, verdict, cursor.lastrowid, stamp)
    return cursor.lastrowid


@storage_op
def record_action(
    db: Database, run_id: str, round_index: int, verdicts: dict[int, Any], label: str = ""
) -> int | None:
    """One person action (a click, a key, a bulk action): a verdict per image — 0, 1, None (back to the
    oracle) or `SEEN` (seen, no opinion) — in one transaction, all rows carrying the new action's id.
    Returns the action id, or None when `verdicts` is empty (nothing is recorded)."""
    prepared = []
    for image_id, verdict in verdicts.items():
        seen = 1 if verdict == SEEN else 0
        prepared.append((as_int(image_id, "image_id"), None if seen else check_verdict(verdict), seen))
    if not prepared:
        return None
    with transaction(db):
        action_id = _new_action(db, run_id, round_index, "do", None, label)
        stamp = now()
        for image_id, verdict, seen in prepared:
            image = _require_image(db, image_id)
            if (image["run_id"], image["round_index"]) != (run_id, round_index):
                raise ValueError(f"image {image_id} is not in run {run_id!r}'s round {round_index}")
            _append_person(db, image, verdict, seen, action_id, None, None, stamp)
    return action_id


def action_stacks(db: Database, run_id: str, round_index: int) -> tuple[list[Row], list[Row]]:
    """(undo stack, redo stack) of the round's actions, replayed from the append-only `actions` rows:
    a new action clears the redo stack; undo moves its target to the redo stack; redo pushes itself."""
    actions = rows(
        db, "SELECT * FROM actions WHERE run_id = ? AND round_index = ? ORDER BY id", [run_id, round_index]
    )
    by_id = {a["id"]: a for a in actions}
    undo_stack: list[Row] = []
    redo_stack: list[Row] = []
    for a in actions:
        if a["kind"] == "do":
            undo_stack.append(a)
            redo_stack.clear()
        elif a["kind"] == "undo":
            undo_stack[:] = [x for x in undo_stack if x["id"] != a["target"]]
            redo_stack.append(by_id[a["target"]])
        else:  # redo
            redo_stack[:] = [x for x in redo_stack if x["id"] != a["target"]]
            undo_stack.append(a)
    return undo_stack, redo_stack


@storage_op
def undo_action(db: Database, run_id: str, round_index: int) -> Row | None:
    """Undo the round's last action: every image it changed gets back the person verdict (and skip)
    it had just before. Returns ``{"action", "undone", "label", "images"}`` or None (nothing to undo)."""
    with transaction(db):
        undo_stack, _ = action_stacks(db, run_id, round_index)
        if not undo_stack:
            require_run(db, run_id)
            return None
        target = undo_stack[-1]
        decisions = rows(db, "SELECT * FROM decisions WHERE action_id = ? ORDER BY id", [target["id"]])
        action_id = _new_action(
            db, run_id, round_index, "undo", target["id"], f"undo {target['label']}".strip()
        )
        stamp = now()
        for d in decisions:
            verdict, seen = _state_before(db, d["image_id"], d["id"])
            image = {"id": d["image_id"], "run_id": d["run_id"], "round_index": d["round_index"]}
            _append_person(db, image, verdict, seen, action_id, f"undo:{d['id']}", d["id"], stamp)
        return {
            "action": action_id,
            "undone": target["id"],
            "label": target["label"],
            "images": sorted({d["image_id"] for d in decisions}),
        }


@storage_op
def redo_action(db: Database, run_id: str, round_index: int) -> Row | None:
    """Redo the round's last undone action (its verdicts again). Returns like `undo_action`, or None."""
    with transaction(db):
        _, redo_stack = action_stacks(db, run_id, round_index)
        if not redo_stack:
            require_run(db, run_id)
            return None
        target = redo_stack[-1]
        decisions = rows(db, "SELECT * FROM decisions WHERE action_id = ? ORDER BY id", [target["id"]])
        action_id = _new_action(db, run_id, round_index, "redo", target["id"], target["label"])
        stamp = now()
        for d in decisions:
            image = {"id": d["image_id"], "run_id": d["run_id"], "round_index": d["round_index"]}
            _append_person(db, image, d["verdict"], d["seen"], action_id, f"redo:{d['id']}", None, stamp)
        return {
            "action": action_id,
            "redone": target["id"],
            "label": target["label"],
            "images": sorted({d["image_id"] for d in decisions}),
        }


@storage_op
def undo_redo_labels(db: Database, run_id: str, round_index: int) -> tuple[str | None, str | None]:
    """What undo and redo would act on now (labels), None where the stack is empty."""
    undo_stack, redo_stack = action_stacks(db, run_id, round_index)
    return (undo_stack[-1]["label"] if undo_stack else None, redo_stack[-1]["label"] if redo_stack else None)


@storage_op
def review_revision(db: Database, run_id: str, round_index: int) -> int:
    """The round's latest decision id (0 before any): a verdict file records it, so applying the file
    later can tell which images got newer verdicts meanwhile."""
    row = db.execute(
        "SELECT MAX(id) FROM decisions WHERE run_id = ? AND round_index = ?", [run_id, round_index]
    ).fetchone()
    return int(row[0] or 0)


@storage_op
def judged_since(db: Database, run_id: str, round_index: int, revision: int) -> set[int]:
    """Images of the round with a person decision newer than ``revision``."""
    found = db.execute(
        "SELECT DISTINCT image_id FROM decisions WHERE run_id = ? AND round_index = ? AND source = 'person'"
        " AND id > ?",
        [run_id, round_index, int(revision)],
    ).fetchall()
    return {image_id for (image_id,) in found}


@storage_op
def decision_history(db: Database, image_id: int) -> list[Row]:
    """Every decision on the image, oldest first."""
    found = rows(db, "SELECT * FROM decisions WHERE image_id = ? ORDER BY id", [image_id])
    if not found:
        _require_image(db, image_id)
    return found


@storage_op
def get_image(db: Database, image_id: int) -> Row | None:
    """One image row by id, or None."""
    return get_row(db, "images", image_id)


def _require_image(db: Database, image_id: int) -> Row:
    image = one(db, "SELECT id, run_id, round_index FROM images WHERE id = ?", [image_id])
    if image is None:
        raise ValueError(f"image {image_id!r} does not exist; pass an id add_images() returned")
    return image


def _append_decision(
    db: Database,
    image: Row,
    verdict: int | None,
    source: str,
    note: str | None,
    undoes: int | None,
    stamp: str,
) -> int:
    cursor = db.execute(
        "INSERT INTO decisions (image_id, run_id, round_index, verdict, source, note, undoes, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [image["id"], image["run_id"], image["round_index"], verdict, source, note, undoes, stamp],
    )
    if source == "person":
        _log_agreement(db, image, verdict, cursor.lastrowid, stamp)
    return cursor.lastrowid
