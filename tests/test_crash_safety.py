"""Nothing lost, ever: a kill at any step boundary or inside any write resumes to the same result; one
writer per run across processes; a commit happens once; a verdict never lands after the commit read.

Kills are real: ``GAL_KILL_AT=<point>`` makes the engine SIGKILL its own process at that point
(``gal.faults``), then ``gal run --resume`` must finish the run exactly as an uninterrupted run does.
"""

import csv
import hashlib
import io
import json
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


# Columns that differ between two runs of the same config by nature: row ids, the run id, clocks, timings.
VOLATILE = {"id", "run_id", "created_at", "updated_at", "timings", "error", "run_dir", "name"}


def _pixels(path) -> str:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im)
    return hashlib.sha256(array.tobytes()).hexdigest() + f"{array.shape}{array.dtype}"


def _tensors(path) -> dict:
    """Every tensor of a safetensors file, by its exact bytes, and the header's metadata but the run id."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != "gal.run_id"}
    if "lora_adapter_metadata" in meta:  # peft keeps target_modules as a set: its JSON order follows the
        lora = json.loads(meta["lora_adapter_metadata"])  # process's string hash seed, not the run
        meta["lora_adapter_metadata"] = {
            k: sorted(v) if k.endswith("target_modules") and isinstance(v, list) else v
            for k, v in lora.items()
        }
    with safe_open(str(path), "pt") as f:
        return {"metadata": meta, **{k: hashlib.sha256(f.get_tensor(k).numpy().tobytes()).hexdigest()
                                     for k in sorted(f.keys())}}  # fmt: skip


def snapshot(runs) -> dict:
    """Everything a run's result is, exactly: every stored row of every table (each float as stored —
    similarities, β, Ω, Δ, metrics, weights — no rounding), every adapter tensor's bytes, every image's
    decoded pixels, and every other file of the run folder byte for byte. Only what differs between any
    two runs by nature is left out: row ids, the run id, clocks and timings."""
    run_id = _run_id(runs)
    folder = runs / run_id
    out: dict = {}
    with storage.open_db(runs / "gal.db") as db:
        image_key = {
            row["id"]: (row["round_index"], row["kind"], row["anchor_index"], row["slot"])
            for row in db.query("SELECT * FROM images WHERE run_id = ?", [run_id])
        }
        for table in ("runs", "rounds", "anchors", "images", "refs", "selections", "decisions"):
            rows = []
            for row in db.query(f"SELECT * FROM {table} WHERE run_id = ?", [run_id]):
                row = {k: v for k, v in row.items() if k not in VOLATILE}
                if row.get("image_id") is not None:
                    row["image_id"] = image_key[row["image_id"]]
                for k in ("metrics", "config"):
                    if isinstance(row.get(k), str):
                        row[k] = json.loads(row[k])
                if table == "runs":
                    row["config"].pop("name", None)
                rows.append(repr(sorted(row.items())))  # repr keeps every float's exact digits
            out[table] = sorted(rows)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        if path.suffix == ".png":
            out[rel] = _pixels(path)
        elif path.suffix == ".safetensors":
            out[rel] = _tensors(path)
        else:
            out[rel] = hashlib.sha256(path.read_bytes().replace(run_id.encode(), b"<run>")).hexdigest()
    return out


def assert_same_run(resumed: dict, uninterrupted: dict) -> None:
    """Equal bit for bit; on a difference, name the first few entries that differ (not a 200-line diff)."""
    differ = [k for k in sorted(set(resumed) | set(uninterrupted)) if resumed.get(k) != uninterrupted.get(k)]
    detail = []
    for key in differ[:3]:
        a, b = resumed.get(key), uninterrupted.get(key)
        if isinstance(a, list) and isinstance(b, list):
            a, b = [x for x in a if x not in b][:2], [x for x in b if x not in a][:2]
        detail.append(f"{key}: resumed {str(a)[:600]} vs uninterrupted {str(b)[:600]}")
    assert not differ, f"{len(differ)} entries differ: {differ[:10]}\n" + "\n".join(detail)


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


POINTS = [
    f"{point}@{r}"
    for r in (1, 2)
    for point in (
        *(f"{state}.{when}" for state in ("training", "generating", "judging", "evaluating")
          for when in ("done", "recording")),
        "committing",
        "committed",
    )
]  # fmt: skip
# Two kills in CI (inside round 1's training record, and inside its evaluation, after which round 2's
# similarities used to differ at ~1e-8; the mid-training kill has its own test below); every one of the 20
# points, one per step family included, with -m slow (each costs about a minute on 2 cores).
FAST = ["training.recording@1", "evaluating.recording@1"]


@pytest.mark.parametrize("point", FAST)
def test_a_kill_in_each_step_resumes_bit_for_bit(setup, uninterrupted, tmp_path, point):
    assert_same_run(_kill_and_resume(setup, point, tmp_path), uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("point", [p for p in POINTS if p not in FAST])
def test_kill_anywhere_resumes_bit_for_bit(setup, uninterrupted, tmp_path, point):
    assert_same_run(_kill_and_resume(setup, point, tmp_path), uninterrupted)


def test_the_snapshot_sees_a_difference_of_one_ulp(setup, uninterrupted, tmp_path):
    """The comparison is exact: a similarity moved by one float step, or one adapter weight, is caught."""
    import shutil

    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    runs = tmp_path / "runs"
    shutil.copytree(setup[0] / "reference-run", runs)
    run_id = _run_id(runs)
    with storage.open_db(runs / "gal.db") as db:
        (image_id, sim), *_ = db.execute(
            "SELECT id, sim_non_soi FROM images WHERE run_id = ? AND kind = 'anchor' ORDER BY id DESC",
            [run_id],
        ).fetchall()
        db.execute(
            "UPDATE images SET sim_non_soi = ? WHERE id = ?", [float(np.nextafter(sim, 2.0)), image_id]
        )
        db.conn.commit()
    with pytest.raises(AssertionError, match="images"):
        assert_same_run(snapshot(runs), uninterrupted)
    shutil.rmtree(runs)
    shutil.copytree(setup[0] / "reference-run", runs)
    path = runs / run_id / "rounds/r02/adapter/pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = torch.nextafter(tensors[key].view(-1)[0], torch.tensor(1.0))
    save_file(tensors, str(path), metadata=metadata)  # the same header: only the one weight differs
    with pytest.raises(AssertionError, match="r02/adapter"):
        assert_same_run(snapshot(runs), uninterrupted)


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
    assert any("already committed" in err for rc, err in results if rc == 2), results
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


def test_a_kill_mid_training_resumes_from_the_saved_step_bit_for_bit(setup, uninterrupted, tmp_path):
    """Training saves its state every N steps (a third of the 6 steps on the CPU); a SIGKILL right after
    round 1's first save, then ``gal run --resume``, continues from step 2 (not 0) and ends the run
    exactly as an uninterrupted one: every adapter tensor, every image's pixels, every row."""
    import torch

    runs = tmp_path / "runs"
    killed = _start(runs, setup, env={"GAL_KILL_AT": "training.saved@1"})
    assert killed.returncode == -9, f"not killed mid-training: rc {killed.returncode} {killed.stderr[-800:]}"
    state_file = runs / _run_id(runs) / "rounds" / "r01" / "train_state.pt"
    saved = torch.load(state_file, weights_only=True)
    assert saved["step"] == 2 and saved["fingerprint"]["round"] == 1 and len(saved["losses"]) == 2
    assert not (runs / _run_id(runs) / "rounds" / "r01" / "adapter").exists()
    resumed = _gal(runs, "run", "--resume", _run_id(runs))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at step 2" in resumed.stdout + resumed.stderr
    assert not state_file.exists()  # spent once the round's adapter is saved
    assert_same_run(snapshot(runs), uninterrupted)
