"""Bad CLI input gets one line that names the fix (exit 2), never a traceback, and leaves nothing behind."""

import pytest

import storage
from gal.cli import main
from gal.review import read_decisions


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "must hold a JSON object"),
        ("42", "must hold a JSON object"),
        ('{"gal": [1]}', "config key 'gal' must be an object of gal settings"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_bad_config_files(tmp_path, capsys, content, message):
    config = tmp_path / "c.json"
    config.write_text(content)
    assert main(["--runs-dir", str(tmp_path / "runs"), "run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_config_and_empty_anchor_files(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["--runs-dir", runs, "run", "--config", str(tmp_path / "missing.json")]) == 2
    assert "config file" in capsys.readouterr().err
    anchors = tmp_path / "anchors.txt"
    anchors.write_text("# only a comment\n\n")
    assert main(["--runs-dir", runs, "run", "--demo", "--model", "tiny", "--anchors", str(anchors)]) == 2
    assert "has no anchors" in capsys.readouterr().err


def test_resume_of_an_empty_id_is_an_error_not_a_new_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["--runs-dir", str(runs), "run", "--resume", ""]) == 2
    assert "invalid run id ''" in capsys.readouterr().err
    assert not (runs / "gal.db").exists() or not storage.list_runs(storage.open_db(runs / "gal.db"))


def test_a_missing_model_leaves_no_run_behind(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["--runs-dir", str(runs), "run", "--demo", "--model", str(tmp_path / "no-such-model")]) == 2
    assert "not a diffusers pipeline" in capsys.readouterr().err
    with storage.open_db(runs / "gal.db") as db:
        assert storage.list_runs(db) == []
    assert [p.name for p in runs.iterdir() if p.is_dir() and p.name != "demo-references"] == []


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2, 3]", "list of"),
        ('"overfit"', "got str"),
        ("7", "got int"),
        ("null", "got NoneType"),
        ('[{"verdict": 1}]', "rows lacking image_id"),
        ('{"x": 1}', "image_id must be a whole number"),
        ('{"3": true}', "unknown verdict True"),
        ("{", "is not valid JSON"),
    ],
)
def test_bad_decision_json(tmp_path, content, message):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_decisions(path)


def test_decision_file_size_is_bounded(tmp_path, monkeypatch):
    import gal.review

    monkeypatch.setattr(gal.review, "MAX_DECISION_FILE", 100)
    path = tmp_path / "big.csv"
    path.write_text("image_id,verdict\n" + "1,overfit\n" * 50)
    with pytest.raises(ValueError, match="over the 0 MB limit"):
        read_decisions(path)


def test_a_boolean_is_not_a_verdict(shared_studio, references):
    run_id = shared_studio.create_run(__import__("conftest").tiny_config(pause_for_review=True), references)
    shared_studio.advance(run_id)
    image_id = shared_studio.review_state(run_id)["anchors"][0]["images"][0]["id"]
    for value in (True, False):
        with pytest.raises(ValueError, match="verdict must be 0"):
            shared_studio.decide(run_id, image_id, value)
    assert shared_studio.review_state(run_id)["counters"]["reviewed"] == 0
