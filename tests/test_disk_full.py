"""A full disk while saving the round's adapter (issue 25.5): one line that says what to do, the run marked
failed, the database intact, and a resume after space is freed finishes the run."""

import safetensors.torch

import storage
from gal.cli import main


def test_disk_full_while_saving_the_adapter_is_one_line_and_resumes(tmp_path, capsys, monkeypatch):
    real_save = safetensors.torch.save_file
    calls = []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        with open(filename, "wb") as f:  # what a full disk leaves: a file cut short
            f.write(b"\0" * 10)
        # what safetensors raises on ENOSPC (seen on a 64 KB tmpfs): a SafetensorError, not an OSError
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    runs = tmp_path / "runs"
    flags = ["--model", "tiny", "--oracle", "tiny", "--steps", "2", "--gen-steps", "2", "--m", "2",
             "--k", "1", "--rounds", "1"]  # fmt: skip
    assert main(["--runs-dir", str(runs), "run", "--demo", *flags]) == 1
    assert calls and calls[0].endswith("rounds/r01/adapter/pytorch_lora_weights.safetensors")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gal: error: the disk is full (No space left on device while writing round 1's")
    assert "free some space, then gal run --resume" in err[-1] and not any("Traceback" in e for e in err)
    with storage.open_db(runs / "gal.db") as db:
        (run,) = storage.list_runs(db)
        assert run["status"] == "failed"
        rnd = storage.get_round(db, run["run_id"], 1)
        assert rnd["state"] == "training" and "No space left" in rnd["error"]
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)  # space freed
    assert main(["--runs-dir", str(runs), "run", "--resume", run["run_id"]]) == 0
    with storage.open_db(runs / "gal.db") as db:
        assert storage.get_run(db, run["run_id"])["status"] == "finished"
