"""The `gal` CLI: a scripted Human round (images -> decide -> commit), runs, export, and clear errors."""

import csv
import io

import pytest

import storage
from gal.cli import main
from gal.review import read_decisions

FAST = [
    "--model",
    "tiny",
    "--oracle",
    "tiny",
    "--steps",
    "3",
    "--gen-steps",
    "2",
    "--m",
    "2",
    "--rounds",
    "2",
]


def test_scripted_human_round(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert (
        main(
            [
                "--runs-dir",
                runs,
                "run",
                "--demo",
                *FAST,
                "--strategy",
                "human+balance",
                "--sampling",
                "real-rate",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "awaits review" in out
    with storage.open_db(tmp_path / "runs" / "gal.db") as db:
        run_id = storage.list_runs(db)[0]["run_id"]

    assert main(["--runs-dir", runs, "images", run_id]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 18 * 2 and {"image_id", "oracle_verdict", "verdict"} <= set(rows[0])
    decisions = tmp_path / "verdicts.csv"
    decisions.write_text(
        "image_id,verdict\n"
        + "\n".join(f"{r['image_id']},{'accept' if i < 3 else 'reject'}" for i, r in enumerate(rows))
    )
    assert main(["--runs-dir", runs, "decide", run_id, str(decisions), "--commit"]) == 0
    with storage.open_db(tmp_path / "runs" / "gal.db") as db:
        selections = storage.list_selections(db, run_id)
        assert {s["image_id"] for s in selections} == {int(r["image_id"]) for r in rows[:3]}
        assert storage.get_run(db, run_id)["current_round"] == 2
        assert storage.get_run(db, run_id)["config"]["train"]["reference_sampling"] == "real-rate"

    assert main(["--runs-dir", runs, "runs"]) == 0
    assert run_id in capsys.readouterr().out
    out_dir = tmp_path / "export"
    assert main(["--runs-dir", runs, "export", run_id, str(out_dir), "--format", "diffusers,card"]) == 0
    assert (out_dir / "pytorch_lora_weights.safetensors").exists() and (out_dir / "README.md").exists()
    assert main(["--runs-dir", runs, "export", run_id, str(out_dir)]) == 2
    assert "--force" in capsys.readouterr().err


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["--runs-dir", str(tmp_path), "run", "--resume", "missing-run"]) == 2
    assert "run 'missing-run' does not exist" in capsys.readouterr().err
    assert main(["--runs-dir", str(tmp_path), "run", "--demo", *FAST, "--k", "40"]) == 2
    assert "k=40 is larger than the 18 anchors" in capsys.readouterr().err
    assert (
        main(
            ["--runs-dir", str(tmp_path), "run", "--ref", str(tmp_path / "nope.png"), "--prompt", "a <sks> x"]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_read_decisions_formats(tmp_path):
    js = tmp_path / "d.json"
    js.write_text('{"3": "overfit", "4": "aligned", "5": "clear"}')
    assert read_decisions(js) == {3: 1, 4: 0, 5: None}
    rows = tmp_path / "d2.json"
    rows.write_text('[{"image_id": 7, "verdict": 1}]')
    assert read_decisions(rows) == {7: 1}
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,verdict\n3,maybe\n")
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        read_decisions(bad)
    headless = tmp_path / "h.csv"
    headless.write_text("3,1\n")
    with pytest.raises(ValueError, match="header with image_id and verdict"):
        read_decisions(headless)


def test_the_science_flags_reach_the_config(tmp_path):
    """--scenario known-style, --captions, --images-per-anchor (issue 17) land in the run's config."""
    from gal.cli import _new_config, build_parser

    args = build_parser().parse_args(
        ["--runs-dir", str(tmp_path), "run", "--demo", "--scenario", "known-style"]
        + ["--strategy", "uncertainty+diversity", "--captions", "informative", "--images-per-anchor", "2"]
    )
    config, references = _new_config(args)
    assert config.task == "style" and len(references) == 2
    assert (config.gal.strategy, config.gal.images_per_anchor) == ("uncertainty+diversity", 2)
    assert config.train.captions == "informative"
    config.validate()
