"""A killed `gal run` resumes without redoing work; an export reloads in a fresh process and redraws
the images."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import kill_demo_run_mid_generation, tiny_config
from PIL import Image

import storage


def _gal(runs_dir, *args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "gal", "--runs-dir", str(runs_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_killed_run_resumes_where_it_stopped(tmp_path):
    runs = tmp_path / "runs"
    run_id, before = kill_demo_run_mid_generation(runs, "tiny")
    adapter = runs / run_id / "rounds" / "r01" / "adapter" / "pytorch_lora_weights.safetensors"
    adapter_mtime = adapter.stat().st_mtime_ns

    done = _gal(runs, "run", "--resume", run_id)
    assert done.returncode == 0, done.stderr[-2000:]
    with storage.open_db(runs / "gal.db") as db:
        run = storage.get_run(db, run_id)
        after = storage.list_images(db, run_id, 1)
        rounds = storage.list_rounds(db, run_id)
    assert run["status"] == "finished"
    assert len(after) == 18 * 10  # every image once
    assert len({(im["anchor_index"], im["slot"]) for im in after}) == 180
    before_ids = {im["id"]: im["file"] for im in before}
    assert {im["id"]: im["file"] for im in after if im["id"] in before_ids} == before_ids  # kept, not redrawn
    assert adapter.stat().st_mtime_ns == adapter_mtime  # round 1 was not retrained
    assert [r["state"] for r in rounds] == ["done", "done"]


REPLAY = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from diffusers import StableDiffusionPipeline
    from gal.models import build_tiny_pipeline
    out, cases = sys.argv[1], json.loads(sys.argv[2])
    def draw(pipe, case):
        g = [torch.Generator().manual_seed(case["seed"])]
        image = pipe([case["prompt"]], num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                     height=32, width=32, generator=g).images[0]
        return np.asarray(image, dtype=np.float32)
    results = {}
    pipe = build_tiny_pipeline()
    pipe.load_lora_weights(out, weight_name="pytorch_lora_weights.safetensors")
    results["diffusers"] = [draw(pipe, c).tolist() for c in cases]
    pipe = build_tiny_pipeline()
    pipe.load_lora_weights(out, weight_name=sys.argv[3])
    results["kohya"] = [draw(pipe, c).tolist() for c in cases]
    fused = StableDiffusionPipeline.from_pretrained(out + "/pipeline", safety_checker=None)
    results["fused"] = [draw(fused, c).tolist() for c in cases]
    print(json.dumps(results))
""")


def test_export_round_trip_in_a_fresh_process(shared_studio, references, tmp_path):
    studio = shared_studio
    config = tiny_config("uncertainty", max_rounds=1)
    run_id = studio.create_run(config, references)
    studio.advance(run_id)
    out = tmp_path / "export"
    written = studio.export(run_id, out, ("diffusers", "kohya", "fused", "dataset", "card"))
    assert set(written) == {"diffusers", "kohya", "fused", "dataset", "card"}

    images = studio.review_state(run_id, 1)["anchors"][0]["images"][:2]
    cases = [
        {
            "seed": im["seed"],
            "prompt": im["prompt"],
            "steps": config.generate.steps,
            "guidance": config.generate.guidance_scale,
        }
        for im in images
    ]
    proc = subprocess.run(
        [sys.executable, "-c", REPLAY, str(out), json.dumps(cases), written["kohya"].name],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for fmt in ("diffusers", "kohya", "fused"):
        for im, redrawn in zip(images, results[fmt]):
            saved = np.asarray(Image.open(im["path"]), dtype=np.float32)
            assert np.allclose(np.asarray(redrawn), saved, atol=2.0), (
                f"{fmt} export does not redraw image {im['id']}"
            )

    # Provenance in the safetensors headers; kohya keys for A1111; dataset and card.
    from safetensors import safe_open

    with safe_open(str(written["diffusers"]), "pt") as f:
        meta = f.metadata()
        assert meta["gal.run_id"] == run_id and meta["gal.config_hash"] == config.config_hash()
    with safe_open(str(written["kohya"]), "pt") as f:
        assert all(k.startswith("lora_unet_") for k in f.keys())
        assert f.metadata()["ss_network_dim"] == str(config.train.rank)
    rows = [json.loads(line) for line in (out / "dataset" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all((out / "dataset" / r["file_name"]).exists() for r in rows)
    assert {"prompt", "weight", "round", "source"} <= set(rows[0])
    # plain captions: each image trained on its prompt, written beside it as kohya's scripts read captions
    assert all(r["caption"] == r["prompt"] and r["trained"] and r["caption_kept"] for r in rows)
    for r in rows:
        assert (out / "dataset" / r["file_name"]).with_suffix(".txt").read_text() == r["caption"] + "\n"
    card = (out / "README.md").read_text()
    assert "tiny" in card and "uncertainty" in card and "| 1 |" in card
    # a round trained before captions were kept: still trained on, the caption is the prompt, not "kept"
    (studio.run_dir(run_id) / "rounds/r01/adapter/training_set.json").unlink()
    older = studio.export(run_id, tmp_path / "older", ("dataset",))["dataset"]
    rows = [json.loads(line) for line in (older / "metadata.jsonl").read_text().splitlines()]
    assert all(r["trained"] and not r["caption_kept"] and r["caption"] == r["prompt"] for r in rows)


def test_export_refuses_existing_folder_unless_forced(shared_studio, references, tmp_path):
    studio = shared_studio
    run_id = studio.create_run(tiny_config("uncertainty", max_rounds=1), references)
    studio.advance(run_id)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for force in (False, True):  # a folder that is not our export is never replaced, not even with --force
        with pytest.raises(ValueError, match="not a GAL Studio export"):
            studio.export(run_id, out, force=force)
        assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
        assert (out / "precious.txt").read_text() == "keep me"
    ours = tmp_path / "ours"
    studio.export(run_id, ours)
    with pytest.raises(ValueError, match="--force"):
        studio.export(run_id, ours, ("card",))
    studio.export(run_id, ours, ("card",), force=True)
    assert (ours / "README.md").exists() and not (ours / "dataset").exists()
