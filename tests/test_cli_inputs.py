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


# -- issue 25: the last tracebacks, and files accepted where a person wants a refusal ----------------------


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"anchors": [1, 2]}', "anchors: item 1 must be a string"),
        ('{"anchors": "{} on grass"}', "anchors must be a list of strings"),
        ('{"task": "bogus"}', "task must be 'object' or 'style', got 'bogus'"),
        ('{"seed": "7"}', "seed must be a whole number"),
        ('{"gal": {"k": 2.5}}', "gal.k must be a whole number"),
        ('{"train": {"learning_rate": "fast"}}', "train.learning_rate must be a number"),
        ('{"eval": {"prompts": [null]}}', "eval.prompts: item 1 must be a string"),
        ("[" * 100_000, "nests too deeply"),
    ],
)
def test_config_values_of_the_wrong_type_name_the_field(tmp_path, capsys, content, message):
    config = tmp_path / "c.json"
    config.write_text(content)
    runs = tmp_path / "runs"
    assert main(["--runs-dir", str(runs), "run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (runs / "gal.db").exists() or not storage.list_runs(storage.open_db(runs / "gal.db"))


@pytest.mark.parametrize("device", ["bogus", "cuda:x", "tpu"])
def test_a_bad_device_is_one_line(tmp_path, capsys, device):
    assert main(["--runs-dir", str(tmp_path / "runs"), "--device", device, "run", "--demo"]) == 2
    err = capsys.readouterr().err
    assert f"--device {device!r}" in err and "cpu" in err and err.count("\n") == 1


def test_a_deeply_nested_decide_file_is_one_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[" * 100_000)
    with pytest.raises(ValueError, match="nests too deeply"):
        read_decisions(path)


def test_conflicting_rows_for_one_image_are_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("image_id,verdict\n5,overfit\n6,aligned\n5,aligned\n")
    with pytest.raises(ValueError, match=r"image 5 has two different verdicts, 'overfit' \(line 2\) and "
                       r"'aligned' \(line 4\)"):  # fmt: skip
        read_decisions(path)
    path.write_text("image_id,verdict\n5,overfit\n6,aligned\n5,1\n")  # the same verdict twice: harmless
    assert read_decisions(path) == {5: 1, 6: 0}
    path = tmp_path / "d.json"
    path.write_text('[{"image_id": 5, "verdict": 1}, {"image_id": "5", "verdict": 0}]')
    with pytest.raises(ValueError, match=r"image 5 has two different verdicts, 1 \(row 1\) and 0 \(row 2\)"):
        read_decisions(path)


def test_duplicate_json_keys_with_different_verdicts_are_refused(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"5": "overfit", "5": "aligned"}')
    with pytest.raises(ValueError, match="image 5 has two different verdicts"):
        read_decisions(path)


@pytest.mark.parametrize("content", ["image_id,verdict\n5,2\n", '{"5": 2}', '{"5": "2"}'])
def test_two_is_not_a_verdict_in_a_file(tmp_path, content):
    path = tmp_path / ("d.json" if content.startswith("{") else "d.csv")
    path.write_text(content)
    with pytest.raises(ValueError, match="2 is not a verdict in a file: write skip"):
        read_decisions(path)
    path.write_text(content.replace("2", "skip") if content.startswith("i") else '{"5": "skip"}')
    assert read_decisions(path) == {5: __import__("gal.review").review.SKIP}


def test_trailing_text_after_a_verdict_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("image_id,verdict\n5,overfit\n6,aligned,but not sure\n")
    with pytest.raises(ValueError, match=r"line 3: \['but not sure'\] after the last column \(verdict\)"):
        read_decisions(path)
    path.write_text('image_id,verdict,note\n6,aligned,"fine, I think"\n')  # a named, quoted column is fine
    assert read_decisions(path) == {6: 0}


def test_non_soi_with_the_token_is_refused(tmp_path, capsys, reference_files):
    runs = tmp_path / "runs"
    prompt = "a <sks> star on stairs"
    args = ["--runs-dir", str(runs), "run", "--ref", str(reference_files[0]), "--prompt", prompt]
    assert main([*args, "--non-soi", prompt]) == 2
    err = capsys.readouterr().err
    assert "contains the SoI token '<sks>' (it is the prompt itself)" in err
    assert "'a star on stairs'" in err and err.count("\n") == 1
    assert not (runs / "gal.db").exists() or not storage.list_runs(storage.open_db(runs / "gal.db"))


def test_the_losing_commit_hears_the_round_was_committed(shared_studio, references):
    from conftest import tiny_config

    run_id = shared_studio.create_run(tiny_config(pause_for_review=True), references)
    shared_studio.advance(run_id)
    shared_studio.commit_round(run_id)  # the winner; round 2 is now training
    with pytest.raises(
        ValueError, match=rf"round 1 of run {run_id} was already committed .*round 2 is training"
    ):
        shared_studio.commit_round(run_id)
