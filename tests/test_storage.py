"""storage/: every function round-trips, decisions are append-only, undo walks back, state survives a reopen,
and locked / read-only databases fail with a message that says what to fix."""

from __future__ import annotations

import ast
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

import storage
from storage import (
    RunNotFound,
    StorageError,
    add_images,
    add_reference,
    create_run,
    decision_history,
    final_verdicts,
    get_round,
    get_run,
    list_anchors,
    list_images,
    list_references,
    list_rounds,
    list_runs,
    list_selections,
    migrate,
    open_db,
    record_decision,
    record_selection,
    set_similarities,
    start_round,
    transaction,
    undo_last_decision,
    update_round,
    update_run,
    upsert_anchors,
)

STORAGE_DIR = Path(storage.__file__).parent


@pytest.fixture
def db():
    database = Database(memory=True)
    database.execute("PRAGMA foreign_keys = ON")
    migrate(database)
    yield database
    database.close()


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "runs" / "gal.db"


def make_round(db, run_id="cat", round_index=1, anchors=2, slots=2, oracle=None):
    """A run with one round and `anchors` x `slots` anchor images; returns the image ids in
    (anchor, slot) order."""
    if db.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is None:
        create_run(db, run_id=run_id, name=run_id.title(), config={"k": 3}, run_dir=run_id)
    start_round(db, run_id=run_id, round_index=round_index, mode="human")
    ids = add_images(
        db,
        [
            {
                "run_id": run_id,
                "round_index": round_index,
                "anchor_index": a,
                "slot": k,
                "file": f"round_{round_index}/a{a}_s{k}.png",
                "kind": "anchor",
                "prompt": f"a <sks> cat, direction {a}",
                "seed": 100 * a + k,
            }
            for a in range(anchors)
            for k in range(slots)
        ],
    )
    if oracle is not None:
        set_similarities(
            db,
            [
                {"id": image_id, "sim_anchor": 0.3, "sim_non_soi": 0.2, "oracle_verdict": verdict}
                for image_id, verdict in zip(ids, oracle, strict=True)
            ],
        )
    return ids


def table_rows(db, table):
    return [tuple(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()]


# --- opening, migrations ---------------------------------------------------------------------


def test_open_db_creates_folder_and_sets_pragmas(db_path):
    db = open_db(db_path)
    assert db_path.exists()
    assert db.journal_mode == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert {"runs", "refs", "rounds", "anchors", "images", "decisions", "selections", "_migrations"} <= set(
        db.table_names()
    )
    db.close()


def test_migrations_are_idempotent(db_path):
    first = open_db(db_path)
    applied = [row[0] for row in first.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert applied == [migration.__name__ for migration in storage.migrations.MIGRATIONS]
    assert migrate(first) == []
    first.close()
    second = open_db(db_path)
    assert [row[0] for row in second.execute("SELECT name FROM _migrations ORDER BY rowid")] == applied
    second.close()


def test_open_db_on_migrated_file_needs_no_write_lock(db_path):
    open_db(db_path).close()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        started = time.perf_counter()
        db = open_db(db_path, busy_timeout_ms=50)  # would fail if opening wrote anything
        assert time.perf_counter() - started < 1.0
        assert list_runs(db) == []
        db.close()
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_concurrent_first_open_migrates_once(db_path):
    errors, barrier = [], threading.Barrier(4)

    def worker():
        try:
            barrier.wait()
            open_db(db_path).close()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = open_db(db_path)
    assert db.execute("SELECT count(*) FROM _migrations").fetchone()[0] == len(storage.migrations.MIGRATIONS)
    db.close()


def test_database_from_a_newer_version_is_refused(db_path):
    db = open_db(db_path)
    db.execute("INSERT INTO _migrations (name, applied_at) VALUES ('m999_future', 'now')")
    db.close()
    with pytest.raises(StorageError, match="newer GAL Studio"):
        open_db(db_path)


def test_open_db_on_a_folder_or_a_non_database_file(tmp_path):
    with pytest.raises(StorageError, match="is a folder"):
        open_db(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="--runs-dir"):
        open_db(junk)


def test_open_db_in_memory():
    db = open_db(":memory:")
    create_run(db, run_id="m", name="M", config={}, run_dir="m")
    assert get_run(db, "m")["name"] == "M"
    db.close()


# --- runs and references ---------------------------------------------------------------------


def test_runs_round_trip(db):
    config = {"k": 3, "lambda": 0.005, "anchors": ["in a museum", "on the moon"], "nested": {"a": [1, 2]}}
    row = create_run(db, run_id="cat", name="My cat", config=config, run_dir="cat")
    assert row["run_id"] == "cat"
    assert row["config"] == config
    assert (row["status"], row["current_round"]) == ("active", 0)
    create_run(db, run_id="dog", name="Dog", config={}, run_dir="dog")
    assert [run["run_id"] for run in list_runs(db)] == ["dog", "cat"]  # newest first

    update_run(db, "cat", status="awaiting_review", current_round=2, config={"k": 4}, error=None)
    row = get_run(db, "cat")
    assert (row["status"], row["current_round"], row["config"]) == ("awaiting_review", 2, {"k": 4})
    assert row["updated_at"] > row["created_at"]

    with pytest.raises(ValueError, match="already exists"):
        create_run(db, run_id="cat", name="again", config={}, run_dir="cat")
    with pytest.raises(ValueError, match="run status must be one of"):
        update_run(db, "cat", status="sleeping")
    with pytest.raises(ValueError, match="cannot set 'colour'"):
        update_run(db, "cat", colour="red")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        create_run(db, run_id="bad", name="bad", config={"x": object()}, run_dir="bad")
    with pytest.raises(RunNotFound):
        update_run(db, "nope", status="finished")


def test_run_not_found_names_the_run_and_the_fix(db):
    with pytest.raises(RunNotFound) as caught:
        get_run(db, "abc")
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == "run 'abc' does not exist; `gal runs` lists the runs"
    for call in (
        lambda: list_references(db, "abc"),
        lambda: list_rounds(db, "abc"),
        lambda: get_round(db, "abc", 1),
        lambda: list_images(db, "abc", 1),
        lambda: list_selections(db, "abc"),
        lambda: start_round(db, run_id="abc", round_index=1, mode="auto"),
    ):
        with pytest.raises(RunNotFound, match="'abc'"):
            call()


def test_references_round_trip(db):
    ids = make_round(db)
    real = add_reference(
        db,
        run_id="cat",
        file="references/0.png",
        sha256="aa",
        prompt="a <sks> cat on the stairs",
        non_soi_text="a cat on the stairs",
        weight=1.0,
        round_added=0,
        source="real",
    )
    synthetic = add_reference(
        db,
        run_id="cat",
        file="round_1/a0_s1.png",
        sha256="bb",
        prompt="a <sks> cat, direction 0",
        non_soi_text="a cat, direction 0",
        weight=0.002,
        round_added=1,
        source="synthetic",
        image_id=ids[1],
    )
    assert [ref["id"] for ref in list_references(db, "cat")] == [real, synthetic]
    assert [ref["id"] for ref in list_references(db, "cat", up_to_round=0)] == [real]
    row = list_references(db, "cat")[1]
    assert (row["weight"], row["source"], row["image_id"], row["round_added"]) == (
        0.002,
        "synthetic",
        ids[1],
        1,
    )

    kwargs = dict(run_id="cat", sha256="cc", prompt="p", non_soi_text="p", weight=1.0, round_added=0)
    with pytest.raises(ValueError, match="already has a reference with file"):
        add_reference(db, file="references/0.png", source="real", **kwargs)
    with pytest.raises(ValueError, match="reference source must be one of"):
        add_reference(db, file="references/1.png", source="web", **kwargs)
    with pytest.raises(ValueError, match="image 999 does not exist"):
        add_reference(db, file="references/1.png", source="synthetic", image_id=999, **kwargs)
    assert len(list_references(db, "cat")) == 2


# --- rounds, anchors, selections -------------------------------------------------------------


def test_rounds_round_trip(db):
    create_run(db, run_id="cat", name="Cat", config={}, run_dir="cat")
    assert get_round(db, "cat", 1) is None
    first = start_round(db, run_id="cat", round_index=1, mode="human")
    assert (first["state"], first["mode"], first["timings"], first["metrics"]) == (
        "training",
        "human",
        {},
        {},
    )
    update_round(
        db,
        "cat",
        1,
        state="review",
        openness=0.25,
        timings={"train": 1.5, "generate": 0.7},
        metrics={"txt_aln": 0.71},
        adapter_path="round_1/adapter",
    )
    again = start_round(db, run_id="cat", round_index=1, mode="auto")  # idempotent: the row is unchanged
    assert again["id"] == first["id"]
    assert (again["state"], again["mode"], again["openness"]) == ("review", "human", 0.25)
    assert again["timings"] == {"train": 1.5, "generate": 0.7}
    assert again["metrics"] == {"txt_aln": 0.71}
    assert again["adapter_path"] == "round_1/adapter"
    start_round(db, run_id="cat", round_index=2, mode="auto")
    assert [row["round_index"] for row in list_rounds(db, "cat")] == [1, 2]

    with pytest.raises(ValueError, match="round state must be one of"):
        update_round(db, "cat", 1, state="dreaming")
    with pytest.raises(ValueError, match="round 7 of run 'cat' does not exist"):
        update_round(db, "cat", 7, state="done")
    with pytest.raises(ValueError, match="1-based"):
        start_round(db, run_id="cat", round_index=0, mode="auto")
    with pytest.raises(ValueError, match="round mode"):
        start_round(db, run_id="cat", round_index=3, mode="manual")
    with pytest.raises(ValueError, match="cannot set 'colour'"):
        update_round(db, "cat", 1, colour="red")


def test_anchors_upsert_and_list(db):
    create_run(db, run_id="cat", name="Cat", config={}, run_dir="cat")
    start_round(db, run_id="cat", round_index=1, mode="auto")
    upsert_anchors(
        db,
        "cat",
        1,
        [
            {"anchor_index": 1, "prompt": "a <sks> cat on the moon", "oracle_text": "a cat on the moon"},
            {"anchor_index": 0, "prompt": "a <sks> cat in a museum", "oracle_text": "a cat in a museum"},
        ],
    )
    upsert_anchors(
        db, "cat", 1, [{"anchor_index": 1, "overfit_rate": 0.4, "uncertainty": 0.97, "selected": True}]
    )
    rows = list_anchors(db, "cat", 1)
    assert [row["anchor_index"] for row in rows] == [0, 1]
    assert rows[0]["in_pool"] is True and rows[0]["selected"] is False
    assert rows[1]["prompt"] == "a <sks> cat on the moon"  # an update keeps the columns it does not name
    assert (rows[1]["overfit_rate"], rows[1]["uncertainty"], rows[1]["selected"]) == (0.4, 0.97, True)
    upsert_anchors(db, "cat", 1, [{"anchor_index": 1, "in_pool": False}])
    assert list_anchors(db, "cat", 1)[1]["in_pool"] is False

    with pytest.raises(ValueError, match="needs prompt and oracle_text"):
        upsert_anchors(db, "cat", 1, [{"anchor_index": 5, "overfit_rate": 0.1}])
    with pytest.raises(ValueError, match="round 2 of run 'cat' does not exist"):
        upsert_anchors(db, "cat", 2, [{"anchor_index": 0, "prompt": "p", "oracle_text": "p"}])
    with pytest.raises(ValueError, match="cannot set 'beta'"):
        upsert_anchors(db, "cat", 1, [{"anchor_index": 0, "beta": 0.1}])
    with pytest.raises(ValueError, match="anchor_index"):
        upsert_anchors(db, "cat", 1, [{"prompt": "p"}])


def test_selections_round_trip(db):
    ids = make_round(db)
    make_round(db, round_index=2)
    first = record_selection(
        db,
        run_id="cat",
        round_index=1,
        anchor_index=0,
        image_id=ids[1],
        weight=0.0021,
        strategy="uncertainty",
    )
    second = record_selection(
        db,
        run_id="cat",
        round_index=1,
        anchor_index=1,
        image_id=ids[2],
        weight=0.0021,
        strategy="uncertainty",
    )
    rows = list_selections(db, "cat", 1)
    assert [row["id"] for row in rows] == [first, second]
    assert (rows[0]["image_id"], rows[0]["weight"], rows[0]["strategy"]) == (ids[1], 0.0021, "uncertainty")
    assert list_selections(db, "cat", 2) == []
    assert len(list_selections(db, "cat")) == 2
    with pytest.raises(ValueError, match="already selected"):
        record_selection(
            db, run_id="cat", round_index=1, anchor_index=0, image_id=ids[1], weight=0.1, strategy="x"
        )
    with pytest.raises(ValueError, match="belongs to round 1"):
        record_selection(
            db, run_id="cat", round_index=2, anchor_index=0, image_id=ids[0], weight=0.1, strategy="x"
        )


# --- images and verdicts ---------------------------------------------------------------------


def test_images_round_trip_and_order(db):
    ids = make_round(db, anchors=2, slots=3)
    assert len(ids) == 6 and ids == sorted(ids)
    eval_ids = add_images(
        db,
        [
            {
                "run_id": "cat",
                "round_index": 1,
                "anchor_index": None,
                "slot": 0,
                "file": "eval/0.png",
                "kind": "eval",
            }
        ],
    )
    rows = list_images(db, "cat", 1)
    assert [(row["anchor_index"], row["slot"]) for row in rows] == [
        (a, k) for a in range(2) for k in range(3)
    ]
    assert rows[4]["file"] == "round_1/a1_s1.png" and rows[4]["seed"] == 101
    assert {row["final_verdict"] for row in rows} == {None}
    assert [row["id"] for row in list_images(db, "cat", 1, kind="eval")] == eval_ids
    with pytest.raises(ValueError, match=r"already has image \d+ \(kind eval, anchor None, slot 0\)"):
        add_images(
            db,
            [
                {
                    "run_id": "cat",
                    "round_index": 1,
                    "anchor_index": None,
                    "slot": 0,
                    "file": "eval/x.png",
                    "kind": "eval",
                }
            ],
        )
    assert len(list_images(db, "cat", 1, kind=None)) == 7
    assert len(final_verdicts(db, "cat", 1)) == 7
    assert list(final_verdicts(db, "cat", 1, kind="eval")) == eval_ids

    image = {
        "run_id": "cat",
        "round_index": 1,
        "anchor_index": 0,
        "slot": 0,
        "file": "x.png",
        "kind": "anchor",
    }
    with pytest.raises(ValueError, match=r"already has image \d+ \(kind anchor, anchor 0, slot 0\)"):
        add_images(db, [image])
    with pytest.raises(ValueError, match="round 9 of run 'cat' does not exist"):
        add_images(db, [{**image, "round_index": 9}])
    with pytest.raises(ValueError, match="needs an anchor_index"):
        add_images(db, [{**image, "anchor_index": None, "slot": 5}])
    with pytest.raises(ValueError, match="image kind"):
        add_images(db, [{**image, "kind": "preview", "slot": 5}])
    with pytest.raises(ValueError, match="needs file"):
        add_images(db, [{key: value for key, value in image.items() if key != "file"}])
    assert len(list_images(db, "cat", 1, kind=None)) == 7  # failed batches left nothing behind


def test_set_similarities_writes_sims_and_oracle_decisions(db):
    ids = make_round(db, anchors=1, slots=3)
    set_similarities(
        db,
        [
            {"id": ids[0], "sim_anchor": 0.31, "sim_non_soi": 0.12, "oracle_verdict": 0},
            {"id": ids[1], "sim_anchor": 0.18, "sim_non_soi": 0.29, "oracle_verdict": 1},
            {"image_id": ids[2], "sim_anchor": None, "sim_non_soi": None, "oracle_verdict": None},
        ],
    )
    rows = list_images(db, "cat", 1)
    assert [(row["sim_anchor"], row["sim_non_soi"], row["oracle_verdict"]) for row in rows] == [
        (0.31, 0.12, 0),
        (0.18, 0.29, 1),
        (None, None, None),
    ]
    assert [row["final_verdict"] for row in rows] == [0, 1, None]
    for image_id, verdict in zip(ids, [0, 1, None], strict=True):
        history = decision_history(db, image_id)
        assert [(row["source"], row["verdict"]) for row in history] == [("oracle", verdict)]
    with pytest.raises(ValueError, match="needs oracle_verdict"):
        set_similarities(db, [{"id": ids[0], "sim_anchor": 0.1, "sim_non_soi": 0.1}])
    with pytest.raises(ValueError, match="image 999 does not exist"):
        set_similarities(db, [{"id": 999, "sim_anchor": 0.1, "sim_non_soi": 0.1, "oracle_verdict": 0}])
    assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == 3


def test_latest_person_decision_wins_and_clear_returns_to_oracle(db):
    ids = make_round(db, anchors=1, slots=2, oracle=[1, 0])
    record_decision(db, image_id=ids[0], verdict=0, source="person", note="looks fine")
    record_decision(db, image_id=ids[0], verdict=1, source="person")
    record_decision(db, image_id=ids[0], verdict=0, source="person")
    assert final_verdicts(db, "cat", 1)[ids[0]] == {"oracle": 1, "person": 0, "final": 0}
    record_decision(db, image_id=ids[0], verdict=None, source="person")
    assert final_verdicts(db, "cat", 1)[ids[0]] == {"oracle": 1, "person": None, "final": 1}
    record_decision(db, image_id=ids[1], verdict=1, source="person")
    row = list_images(db, "cat", 1)[1]
    assert (row["oracle_verdict"], row["person_verdict"], row["final_verdict"]) == (0, 1, 1)
    history = decision_history(db, ids[0])
    assert [(row["source"], row["verdict"]) for row in history] == [
        ("oracle", 1),
        ("person", 0),
        ("person", 1),
        ("person", 0),
        ("person", None),
    ]
    assert history[1]["note"] == "looks fine"
    assert [row["id"] for row in history] == sorted(row["id"] for row in history)
    assert all("." in row["created_at"] for row in history)  # sub-second timestamps
    # A later oracle decision is the new oracle verdict, under the person's.
    record_decision(db, image_id=ids[1], verdict=1, source="oracle")
    assert final_verdicts(db, "cat", 1)[ids[1]] == {"oracle": 1, "person": 1, "final": 1}


@pytest.mark.parametrize("verdict", [2, -1, "1", 1.0, 0.5])
def test_invalid_verdicts_are_rejected(db, verdict):
    ids = make_round(db, anchors=1, slots=1)
    with pytest.raises(ValueError, match="verdict must be 0"):
        record_decision(db, image_id=ids[0], verdict=verdict, source="person")
    with pytest.raises(ValueError, match="verdict must be 0"):
        set_similarities(
            db, [{"id": ids[0], "sim_anchor": 0.1, "sim_non_soi": 0.1, "oracle_verdict": verdict}]
        )
    assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == 0


def test_invalid_source_and_unknown_image_are_rejected(db):
    ids = make_round(db, anchors=1, slots=1)
    with pytest.raises(ValueError, match="decision source must be one of 'oracle', 'person'"):
        record_decision(db, image_id=ids[0], verdict=1, source="robot")
    with pytest.raises(ValueError, match="image 999 does not exist"):
        record_decision(db, image_id=999, verdict=1, source="person")
    with pytest.raises(ValueError, match="image 999 does not exist"):
        decision_history(db, 999)


def test_decisions_table_only_grows(db):
    ids = make_round(db, anchors=2, slots=2, oracle=[1, 0, 1, 0])
    seen = table_rows(db, "decisions")
    steps = [
        lambda: record_decision(db, image_id=ids[0], verdict=0, source="person"),
        lambda: record_decision(db, image_id=ids[1], verdict=1, source="person"),
        lambda: record_decision(db, image_id=ids[0], verdict=None, source="person"),
        lambda: undo_last_decision(db, "cat", 1),
        lambda: undo_last_decision(db, "cat", 1),
        lambda: record_decision(db, image_id=ids[2], verdict=1, source="oracle"),
        lambda: set_similarities(
            db, [{"id": ids[3], "sim_anchor": 0.2, "sim_non_soi": 0.3, "oracle_verdict": 1}]
        ),
        lambda: undo_last_decision(db, "cat", 1),
        lambda: undo_last_decision(db, "cat", 1),  # nothing left: no row
    ]
    for step in steps:
        step()
        now = table_rows(db, "decisions")
        assert now[: len(seen)] == seen  # every earlier row is still there, unchanged
        assert len(now) >= len(seen)
        seen = now
    assert len(seen) == 4 + 8
    # The database itself refuses to rewrite history.
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE decisions SET verdict = 0")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM decisions")
    assert table_rows(db, "decisions") == seen


def test_undo_walks_back_and_stops_at_the_start(db):
    a, b = make_round(db, anchors=1, slots=2, oracle=[1, 0])
    d1 = record_decision(db, image_id=a, verdict=0, source="person")
    d2 = record_decision(db, image_id=b, verdict=1, source="person")
    d3 = record_decision(db, image_id=a, verdict=None, source="person")
    d4 = record_decision(db, image_id=a, verdict=1, source="person")

    def state():
        verdicts = final_verdicts(db, "cat", 1)
        return verdicts[a]["person"], verdicts[b]["person"]

    assert state() == (1, 1)
    expected = [
        (d4, a, None, (None, 1)),
        (d3, a, 0, (0, 1)),
        (d2, b, None, (0, None)),
        (d1, a, None, (None, None)),
    ]
    for undone, image_id, restored, after in expected:
        row = undo_last_decision(db, "cat", 1)
        assert (row["image_id"], row["verdict"], row["source"]) == (image_id, restored, "person")
        assert (row["note"], row["undoes"]) == (f"undo:{undone}", undone)
        assert state() == after
    assert undo_last_decision(db, "cat", 1) is None
    assert undo_last_decision(db, "cat", 1) is None
    assert final_verdicts(db, "cat", 1)[a]["final"] == 1  # back to the oracle

    # A new decision after undos is undone first; then the walk skips what is already undone.
    d9 = record_decision(db, image_id=b, verdict=0, source="person")
    assert undo_last_decision(db, "cat", 1)["undoes"] == d9
    assert undo_last_decision(db, "cat", 1) is None


def test_undo_stays_in_its_round(db):
    first = make_round(db, round_index=1, anchors=1, slots=1)
    second = make_round(db, round_index=2, anchors=1, slots=1)
    record_decision(db, image_id=first[0], verdict=1, source="person")
    record_decision(db, image_id=second[0], verdict=0, source="person")
    assert undo_last_decision(db, "cat", 1)["image_id"] == first[0]
    assert undo_last_decision(db, "cat", 1) is None
    assert final_verdicts(db, "cat", 2)[second[0]]["person"] == 0
    assert undo_last_decision(db, "cat", 3) is None
    with pytest.raises(RunNotFound):
        undo_last_decision(db, "nope", 1)


# Each step: ("decide", image, verdict) or ("undo",).
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("decide"), st.integers(0, 2), st.sampled_from([0, 1, None])),
        st.just(("undo",)),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(oracle=st.lists(st.sampled_from([0, 1, None]), min_size=3, max_size=3), steps=_steps)
def test_final_verdicts_match_an_in_memory_model(oracle, steps):
    db = open_db(":memory:")
    ids = make_round(db, anchors=1, slots=3, oracle=oracle)
    person = [None, None, None]
    undo_stack = []  # (image, person verdict before the decision)
    for step in steps:
        if step[0] == "decide":
            _, image, verdict = step
            undo_stack.append((image, person[image]))
            person[image] = verdict
            record_decision(db, image_id=ids[image], verdict=verdict, source="person")
        else:
            row = undo_last_decision(db, "cat", 1)
            if undo_stack:
                image, before = undo_stack.pop()
                person[image] = before
                assert (row["image_id"], row["verdict"]) == (ids[image], before)
            else:
                assert row is None
        expected = {
            ids[i]: {
                "oracle": oracle[i],
                "person": person[i],
                "final": person[i] if person[i] is not None else oracle[i],
            }
            for i in range(3)
        }
        assert final_verdicts(db, "cat", 1) == expected
    db.close()


# --- transactions, persistence ---------------------------------------------------------------


def test_transaction_groups_calls_atomically(db):
    ids = make_round(db, anchors=1, slots=2)
    with pytest.raises(RuntimeError):
        with transaction(db):
            record_selection(
                db, run_id="cat", round_index=1, anchor_index=0, image_id=ids[0], weight=0.1, strategy="u"
            )
            add_reference(
                db,
                run_id="cat",
                file="round_1/a0_s0.png",
                sha256="aa",
                prompt="p",
                non_soi_text="p",
                weight=0.1,
                round_added=1,
                source="synthetic",
                image_id=ids[0],
            )
            raise RuntimeError("crash between steps")
    assert list_selections(db, "cat") == [] and list_references(db, "cat") == []

    with transaction(db):
        record_selection(
            db, run_id="cat", round_index=1, anchor_index=0, image_id=ids[0], weight=0.1, strategy="u"
        )
        # A failing call inside rolls back only itself (savepoint); the block goes on.
        with pytest.raises(ValueError, match="already selected"):
            record_selection(
                db, run_id="cat", round_index=1, anchor_index=0, image_id=ids[0], weight=0.1, strategy="u"
            )
        update_round(db, "cat", 1, state="done")
    assert len(list_selections(db, "cat")) == 1
    assert get_round(db, "cat", 1)["state"] == "done"
    assert not db.conn.in_transaction


def test_state_survives_close_and_reopen(db_path):
    db = open_db(db_path)
    ids = make_round(db, anchors=2, slots=2, oracle=[1, 0, 1, 0])
    upsert_anchors(
        db, "cat", 1, [{"anchor_index": 0, "prompt": "p0", "oracle_text": "o0", "overfit_rate": 0.5}]
    )
    update_round(db, "cat", 1, state="review", timings={"train": 2.0})
    update_run(db, "cat", status="awaiting_review", current_round=1)
    record_decision(db, image_id=ids[0], verdict=0, source="person")
    record_decision(db, image_id=ids[3], verdict=1, source="person")
    undo_last_decision(db, "cat", 1)
    before = (
        get_run(db, "cat"),
        list_rounds(db, "cat"),
        list_anchors(db, "cat", 1),
        list_images(db, "cat", 1),
        final_verdicts(db, "cat", 1),
    )
    db.close()

    db = open_db(db_path)
    after = (
        get_run(db, "cat"),
        list_rounds(db, "cat"),
        list_anchors(db, "cat", 1),
        list_images(db, "cat", 1),
        final_verdicts(db, "cat", 1),
    )
    assert after == before
    assert after[4][ids[0]]["final"] == 0 and after[4][ids[3]]["final"] == 0
    # Undo goes on where it stopped.
    assert undo_last_decision(db, "cat", 1)["image_id"] == ids[0]
    assert undo_last_decision(db, "cat", 1) is None
    db.close()


# --- locked, read-only, threads --------------------------------------------------------------


def test_locked_database_raises_a_clear_storage_error(db_path):
    db = open_db(db_path, busy_timeout_ms=100)
    ids = make_round(db, anchors=1, slots=1)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        started = time.perf_counter()
        with pytest.raises(StorageError) as caught:
            record_decision(db, image_id=ids[0], verdict=1, source="person")
        assert time.perf_counter() - started < 2.0
        message = str(caught.value)
        assert str(db_path) in message and "locked" in message and "100 ms" in message and "retry" in message
        assert isinstance(caught.value, ValueError)
        assert final_verdicts(db, "cat", 1)[ids[0]]["person"] is None  # reads still work under WAL
    finally:
        other.execute("ROLLBACK")
        other.close()
    record_decision(db, image_id=ids[0], verdict=1, source="person")
    assert final_verdicts(db, "cat", 1)[ids[0]]["person"] == 1
    assert not db.conn.in_transaction
    db.close()


def test_read_only_database_raises_a_clear_storage_error(db_path):
    db = open_db(db_path)
    ids = make_round(db, anchors=1, slots=1)
    db.close()
    read_only = Database(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True))
    assert get_run(read_only, "cat")["run_id"] == "cat"
    for write in (
        lambda: record_decision(read_only, image_id=ids[0], verdict=1, source="person"),
        lambda: update_run(read_only, "cat", status="finished"),
        lambda: create_run(read_only, run_id="dog", name="Dog", config={}, run_dir="dog"),
    ):
        with pytest.raises(
            StorageError, match="is read-only: check its permissions .* pass another --runs-dir"
        ):
            write()
    read_only.close()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_file_permissions(db_path):
    open_db(db_path).close()
    for path in (db_path, *db_path.parent.glob("gal.db-*")):
        path.chmod(0o444)
    db_path.parent.chmod(0o555)
    try:
        with pytest.raises(StorageError, match="--runs-dir"):
            db = open_db(db_path)
            create_run(db, run_id="dog", name="Dog", config={}, run_dir="dog")
    finally:
        db_path.parent.chmod(0o755)
        for path in db_path.parent.iterdir():
            path.chmod(0o644)


def test_one_connection_per_thread_writes_concurrently(db_path):
    db = open_db(db_path)
    ids = make_round(db, anchors=2, slots=2, oracle=[0, 0, 0, 0])
    per_thread, errors, barrier = 25, [], threading.Barrier(4)

    def worker(image_id):
        try:
            own = open_db(db_path)
            barrier.wait()
            for k in range(per_thread):
                record_decision(own, image_id=image_id, verdict=k % 2, source="person", note=f"t{image_id}")
            own.close()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(image_id,)) for image_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    count = db.execute("SELECT count(*) FROM decisions WHERE source = 'person'").fetchone()[0]
    assert count == 4 * per_thread
    for image_id in ids:
        history = [row for row in decision_history(db, image_id) if row["source"] == "person"]
        assert [row["verdict"] for row in history] == [k % 2 for k in range(per_thread)]
    assert all(value["person"] == (per_thread - 1) % 2 for value in final_verdicts(db, "cat", 1).values())
    db.close()


# --- layering --------------------------------------------------------------------------------


def test_storage_imports_only_stdlib_and_sqlite_utils():
    allowed = set(sys.stdlib_module_names) | {"sqlite_utils", "__future__"}
    for source in STORAGE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{source.name} imports {name}"
