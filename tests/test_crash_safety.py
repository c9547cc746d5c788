"""Nothing lost, ever: a kill at any step boundary or inside any write resumes to the same result; one
writer per run across processes; a commit happens once; a verdict never lands after the commit read.

Kills are real: ``GAL_KILL_AT=<point>`` makes the engine SIGKILL its own process at that point
(``gal.faults``), then ``gal run --resume`` must finish the run exactly as an uninterrupted run does.
"""

import csv
import hashlib
import io
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import tiny_config

import storage
from gal.review import verdict_arrays

PROMPT = "a <sks> star on stairs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, reference_files):
    folder = tmp_path_factory.mktemp("crash")
    config = folder / "config.json"
    config.write_text(tiny_config().to_json())
    return folder, config, reference_files


def _gal(runs, *args, env=None, timeout=240):
    refs_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gal", "--runs-dir", str(runs), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=refs_env,
    )


def _start(runs, setup, env=None):
    _, config, refs = setup
    args = ["run", "--config", str(config), "--prompt", PROMPT]
    for ref in refs:
        args += ["--ref", str(ref)]
    return _gal(runs, *args, env=env)


def _run_id(runs) -> str:
    with storage.open_db(runs / "gal.db") as db:
        return storage.list_runs(db)[0]["run_id"]


def snapshot(runs) -> dict:
    """Everything a run's result is: its rounds, selections, references and every image's bytes."""
    run_id = _run_id(runs)
    folder = runs / run_id
    with storage.open_db(runs / "gal.db") as db:
        run = storage.get_run(db, run_id)
        rounds = storage.list_rounds(db, run_id)
        images = [im for r in rounds for im in storage.list_images(db, run_id, r["round_index"], kind=None)]
        return {
            "status": run["status"],
            "rounds": [
                (
                    r["round_index"],
                    r["state"],
                    r["openness"],
                    {k: round(v, 6) for k, v in (r["metrics"] or {}).items() if isinstance(v, float)},
                )
                for r in rounds
            ],
            "selections": [
                (s["round_index"], s["anchor_index"], s["weight"], s["strategy"])
                for s in storage.list_selections(db, run_id)
            ],
            "references": [
                (x["file"], x["weight"], x["source"], x["sha256"])
                for x in storage.list_references(db, run_id)
            ],
            "images": sorted(
                (
                    im["round_index"],
                    im["kind"],
                    im["anchor_index"],
                    im["slot"],
                    im["oracle_verdict"],
                    hashlib.sha256((folder / im["file"]).read_bytes()).hexdigest(),
                )
                for im in images
            ),
        }


@pytest.fixture(scope="module")
def uninterrupted(setup):
    runs = setup[0] / "reference-run"
    done = _start(runs, setup)
    assert done.returncode == 0, done.stderr[-2000:]
    return snapshot(runs)


def _kill_and_resume(setup, point: str, tmp_path) -> dict:
    runs = tmp_path / "runs"
    killed = _start(runs, setup, env={"GAL_KILL_AT": point})
    assert killed.returncode == -9, (
        f"the run was not killed at {point}: rc {killed.returncode} {killed.stderr[-800:]}"
    )
    resumed = _gal(runs, "run", "--resume", _run_id(runs))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return snapshot(runs)


def test_kill_inside_evaluation_commit_resumes_identically(setup, uninterrupted, tmp_path):
    """The window that broke resume for good: evaluation's rows written, the round not yet in review."""
    assert _kill_and_resume(setup, "evaluating.recording@1", tmp_path) == uninterrupted


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "training.done@1",
        "training.recording@1",
        "generating.done@1",
        "generating.recording@1",
        "judging.done@1",
        "judging.recording@1",
        "evaluating.done@1",
        "committing@1",
        "committed@1",
        "training.recording@2",
        "evaluating.recording@2",
        "committing@2",
    ],
)
def test_kill_anywhere_resumes_identically(setup, uninterrupted, tmp_path, point):
    assert _kill_and_resume(setup, point, tmp_path) == uninterrupted


# -- one writer per run -------------------------------------------------------------------------------


def test_second_resume_is_refused_naming_the_live_process(tmp_path):
    runs = tmp_path / "runs"
    from gal.engine import Studio

    Studio(runs, model="tiny", oracle="tiny")  # create the database
    with storage.open_db(runs / "gal.db") as db:
        storage.create_run(
            db, run_id="r1", name="r1", config=tiny_config().to_dict(), run_dir=str(runs / "r1")
        )
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with storage.open_db(runs / "gal.db") as db:  # a live process holds the lease
            db["leases"].insert(
                {
                    "run_id": "r1",
                    "owner": "other",
                    "host": __import__("socket").gethostname(),
                    "pid": holder.pid,
                    "acquired_at": "now",
                    "heartbeat": time.time(),
                }
            )
        refused = _gal(runs, "run", "--resume", "r1", timeout=60)
        assert refused.returncode == 2
        assert f"being worked on by process {holder.pid}" in refused.stderr
        with storage.open_db(runs / "gal.db") as db:
            assert storage.get_run(db, "r1")["status"] == "active"  # the refusal marked nothing failed
    finally:
        holder.kill()
        holder.wait()
    with storage.open_db(runs / "gal.db") as db:  # its holder is dead now: the lease is taken over
        assert storage.acquire_lease(db, "r1", "me")["owner"] == "me"
        storage.release_lease(db, "r1", "me")
        assert storage.get_lease(db, "r1") is None


def test_a_silent_lease_from_another_host_is_taken_over(tmp_path):
    with storage.open_db(tmp_path / "gal.db") as db:
        storage.create_run(db, run_id="r", name="r", config={}, run_dir=str(tmp_path))
        db["leases"].insert(
            {
                "run_id": "r",
                "owner": "far",
                "host": "elsewhere",
                "pid": 1,
                "acquired_at": "then",
                "heartbeat": time.time(),
            }
        )
        with pytest.raises(storage.LeaseHeld, match="process 1 on elsewhere"):
            storage.acquire_lease(db, "r", "me", stale_after=60)
        db.execute("UPDATE leases SET heartbeat = ?", [time.time() - 120])
        assert storage.acquire_lease(db, "r", "me", stale_after=60)["owner"] == "me"
        with pytest.raises(storage.LeaseHeld, match="taken over"):
            storage.renew_lease(db, "r", "far")


def _paused_run(studio, references, strategy="uncertainty+balance"):
    run_id = studio.create_run(tiny_config(strategy, pause_for_review=True), references)
    assert studio.advance(run_id)["status"] == "awaiting_review"
    return run_id


def test_two_commit_processes_commit_once(shared_studio, references):
    run_id = _paused_run(shared_studio, references)
    first = shared_studio.review_state(run_id)["anchors"][0]["images"][0]["id"]
    shared_studio.decide(run_id, first, 0)  # an accepted image: either commit, auto or human, could go alone
    runs = shared_studio.runs_root
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gal",
                "--runs-dir",
                str(runs),
                "commit",
                run_id,
                "--no-advance",
                "--mode",
                mode,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ("auto", "human")
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    assert any("not in review" in err for rc, err in results if rc == 2)
    with storage.open_db(shared_studio.db_path) as db:
        picked = storage.list_selections(db, run_id, 1)
        assert len({s["strategy"] for s in picked}) == 1  # one commit's picks: k = 2 (auto) or 1 (human)
        assert len(picked) == (1 if picked[0]["strategy"].startswith("human") else 2)
        assert sum(x["source"] == "synthetic" for x in storage.list_references(db, run_id)) == len(picked)
        assert sum(a["in_pool"] for a in storage.list_anchors(db, run_id, 2)) == 4 - len(picked)


def test_a_verdict_racing_a_commit_is_never_lost_after_it(shared_studio, references):
    """A person accepts images one by one while a Human commit runs: every accepted image that the
    database holds for the round is exactly what the commit selected (none accepted after it read)."""
    run_id = _paused_run(shared_studio, references, strategy="human+balance")
    ids = [im["id"] for a in shared_studio.review_state(run_id)["anchors"] for im in a["images"]]
    shared_studio.decide(run_id, ids[0], 0)  # at least one accepted image, so the commit can go
    refused, accepted = [], []

    def person():
        for image_id in ids[1:]:
            try:
                shared_studio.decide(run_id, image_id, 0)
                accepted.append(image_id)
            except ValueError as err:
                refused.append(str(err))

    thread = threading.Thread(target=person)
    thread.start()
    shared_studio.commit_round(run_id, "human")
    thread.join()
    with storage.open_db(shared_studio.db_path) as db:
        selected = {s["image_id"] for s in storage.list_selections(db, run_id, 1)}
        final_accepted = {im["id"] for im in storage.list_images(db, run_id, 1) if im["person_verdict"] == 0}
        assert selected == final_accepted
        _, person, _, _ = verdict_arrays(db, run_id, 1, 4)
    assert int((person == 0).sum()) == len(selected)
    assert all("not in review" in message for message in refused)


# -- verdict files ----------------------------------------------------------------------------------------


def test_stale_verdict_file_is_refused_and_blank_means_no_change(shared_studio, references, tmp_path, capsys):
    from gal.cli import main

    run_id = _paused_run(shared_studio, references)
    runs = str(shared_studio.runs_root)
    assert main(["--runs-dir", runs, "images", run_id]) == 0
    exported = capsys.readouterr().out
    header, *rows = list(csv.reader(io.StringIO(exported)))
    col = header.index("verdict")
    ids = [int(r[0]) for r in rows]
    # meanwhile, the person judges two images in the app
    shared_studio.decide(run_id, ids[0], 1)
    shared_studio.decide(run_id, ids[1], 0)
    untouched = tmp_path / "untouched.csv"  # the file as exported: its blanks change nothing
    untouched.write_text(exported)
    assert main(["--runs-dir", runs, "decide", run_id, str(untouched)]) == 0
    assert "recorded 0 verdicts" in capsys.readouterr().err
    stale = tmp_path / "stale.csv"  # the file filled in elsewhere, disagreeing on an image judged meanwhile
    rows[0][col] = "aligned"
    with open(stale, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    assert main(["--runs-dir", runs, "decide", run_id, str(stale)]) == 2
    assert "got newer verdicts after the file was written" in capsys.readouterr().err
    assert (
        main(["--runs-dir", runs, "decide", run_id, str(untouched), "--clear-blank"]) == 2
    )  # would clear them
    capsys.readouterr()
    state = {
        im["id"]: im["person_verdict"]
        for a in shared_studio.review_state(run_id)["anchors"]
        for im in a["images"]
    }
    assert (state[ids[0]], state[ids[1]]) == (1, 0)  # nothing clobbered

    # re-exported, the file applies; blank cells change nothing, an unchanged verdict records nothing
    assert main(["--runs-dir", runs, "images", run_id]) == 0
    header, *rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    rows[2][col] = "overfit"
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    with storage.open_db(shared_studio.db_path) as db:
        before = storage.review_revision(db, run_id, 1)
    assert main(["--runs-dir", runs, "decide", run_id, str(edited)]) == 0
    assert "recorded 1 verdicts (2 unchanged)" in capsys.readouterr().err
    with storage.open_db(shared_studio.db_path) as db:
        assert storage.review_revision(db, run_id, 1) == before + 1
    state = {
        im["id"]: im["person_verdict"]
        for a in shared_studio.review_state(run_id)["anchors"]
        for im in a["images"]
    }
    assert (state[ids[0]], state[ids[1]], state[ids[2]]) == (1, 0, 1)
    assert sum(v is not None for v in state.values()) == 3

    # --force overrides a stale file, --clear-blank clears what is blank
    shared_studio.decide(run_id, ids[3], 1)
    assert main(["--runs-dir", runs, "decide", run_id, str(edited), "--force", "--clear-blank"]) == 0
    state = {
        im["id"]: im["person_verdict"]
        for a in shared_studio.review_state(run_id)["anchors"]
        for im in a["images"]
    }
    assert state[ids[3]] is None and state[ids[2]] == 1
