"""Issue 17 end to end on the tiny models: informative captions (SID seed), diverse uncertainty sampling
(AISEL seed) through the Studio, and the known-subject gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

import gal.steps
import storage
from gal.engine import ReferenceInput
from gal.steps import informative_caption


def test_informative_caption_names_the_non_soi_content_once():
    assert informative_caption("a <sks> star", "a star on stairs") == "a <sks> star on stairs"
    assert informative_caption("a <sks> star on stairs", "a star on stairs") == "a <sks> star on stairs"
    assert (
        informative_caption("a heart in <sks> style", "a heart on a blank background")
        == "a heart in <sks> style on a blank background"
    )
    # leading words the prompt already holds are not repeated
    assert informative_caption("a photo of <sks>", "a dog on a sofa") == "a photo of <sks> dog on a sofa"


@pytest.fixture
def captured(monkeypatch):
    """Every round's training examples (caption, weight, added), as train() hands them to train_lora."""
    seen: list[list[tuple[str, float, bool]]] = []
    real_train = gal.steps.train_lora

    def spy(pipe, examples, *args, **kwargs):
        seen.append([(e.prompt, e.weight, e.added) for e in examples])
        return real_train(pipe, examples, *args, **kwargs)

    monkeypatch.setattr(gal.steps, "train_lora", spy)
    return seen


def _bare_references(reference_files):
    # plain DreamBooth captions: the prompt does not name the stairs, the non-SoI caption does
    return [ReferenceInput(p, "a <sks> star", "a star on stairs") for p in reference_files]


def test_informative_captions_and_diverse_picks_two_rounds(
    shared_studio, reference_files, captured, tmp_path
):
    studio = shared_studio
    config = tiny_config("uncertainty+diversity", images_per_anchor=2)
    config.train.captions = "informative"
    config.gal.pause_for_review = True
    run_id = studio.create_run(config, _bare_references(reference_files))
    assert studio.advance(run_id)["status"] == "awaiting_review"
    # the judge step saved the oracle's image embeddings of round 1, one per image
    saved = np.load(studio.run_dir(run_id) / "rounds/r01/embeddings.npz")
    with studio.db() as db:
        images = storage.list_images(db, run_id, 1, kind="anchor")
    assert sorted(saved["ids"].tolist()) == sorted(im["id"] for im in images)
    assert saved["embeddings"].shape[0] == len(images)
    preview = studio.preview_selection(run_id)
    studio.commit_round(run_id)
    studio.advance(run_id)
    assert len(captured) == 2
    round1, round2 = captured[0], captured[-1]
    assert [c for c, _, added in round1] == ["a <sks> star on stairs"] * 4 and not any(a for *_, a in round1)
    real2 = [c for c, _, added in round2 if not added]
    added2 = [c for c, _, added in round2 if added]
    assert real2 == ["a <sks> star on stairs"] * 4
    # added images carry the generator prompt of what the oracle reads in them: an anchor or the references'
    allowed = set(config.anchor_prompts()) | {"a <sks> star on stairs"}
    assert added2 and set(added2) <= allowed
    with studio.db() as db:
        picks = storage.list_selections(db, run_id, 1)
    anchors = [p["anchor_index"] for p in picks]
    assert (
        len(set(anchors)) == config.gal.k and len(anchors) <= config.gal.k * 2 and len(added2) == len(anchors)
    )
    assert sorted(anchors) == sorted(p["anchor_index"] for p in preview["picks"])
    assert all(w == 1.0 for _, w, added in round2 if added)  # no +balance: weight 1
    # the round keeps what it trained on, and the dataset export writes those captions (.txt and jsonl)
    kept = json.loads((studio.run_dir(run_id) / "rounds/r02/adapter/training_set.json").read_text())
    assert [x["caption"] for x in kept] == [c for c, _, _ in round2]
    written = studio.export(run_id, tmp_path / "export", ["dataset", "kohya"])
    out = written["dataset"]
    rows = {r["file_name"]: r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    trained = {Path(x["file"]).name: x["caption"] for x in kept}
    assert {n: r["caption"] for n, r in rows.items() if r["trained"]} == trained
    assert all(r["caption_kept"] for r in rows.values())
    # kohya's tag frequency counts the captions trained on, not the bare prompts
    from safetensors import safe_open

    with safe_open(str(written["kohya"]), "pt") as f:
        tags = json.loads(f.metadata()["ss_tag_frequency"])["gal_references"]
    assert tags.get("a <sks> star on stairs") == 4 and "a <sks> star" not in tags
    assert all((out / n).with_suffix(".txt").read_text() == r["caption"] + "\n" for n, r in rows.items())
    assert "a <sks> star on stairs" in trained.values() and len(rows) == len(trained) == 4 + len(anchors)


def test_plain_captions_are_the_prompts(shared_studio, reference_files, captured):
    studio = shared_studio
    config = tiny_config("uncertainty+balance", max_rounds=1)
    run_id = studio.create_run(config, _bare_references(reference_files))
    studio.advance(run_id)
    assert [c for c, _, _ in captured[0]] == ["a <sks> star"] * 4


def test_known_gate_compares_aligned_drawings_with_real_renders(shared_studio, references):
    from gal.toyworld.gate import subject_gate
    from gal.toyworld.world import scenarios

    studio = shared_studio
    run_id = studio.create_run(tiny_config("uncertainty+balance", max_rounds=1), references)
    studio.advance(run_id)
    gate = subject_gate(studio, run_id, scenarios()["object"], n=2)
    assert gate["images"] == 4 * 3 and 0 <= gate["aligned"] <= gate["images"]
    assert np.isfinite(gate["real"]) and -1 <= gate["real"] <= 1
    if gate["aligned"]:
        assert gate["passes"] == (gate["generated"] >= gate["real"])
        assert gate["ratio"] == pytest.approx(gate["generated"] / gate["real"])


def test_positive_control_swaps_the_picks_for_real_renders(shared_studio, references, monkeypatch):
    """Issue 29's positive control: the round's picks become renders of the subject in their anchors'
    scenes — same count, weights and captions — and the next round trains on the renders."""
    import hashlib
    import sys

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.trial.controls import swap_added_for_renders, truth_spec
    from gal.toyworld.world import Spec, render, scenarios

    scenario = scenarios()["known"]
    assert truth_spec(scenario, "a <sks> star among clouds") == Spec("star", "green", "checkered", "clouds")
    with pytest.raises(ValueError, match="names no scene"):
        truth_spec(scenario, "a <sks> star")

    seen = []
    real_train = gal.steps.train_lora

    def spy(pipe, examples, *args, **kwargs):
        seen.append(
            [(np.asarray(e.image.convert("RGB")).copy(), e.prompt, e.weight, e.added) for e in examples]
        )
        return real_train(pipe, examples, *args, **kwargs)

    monkeypatch.setattr(gal.steps, "train_lora", spy)
    studio = shared_studio
    config = tiny_config("uncertainty+diversity", max_rounds=2)
    config.gal.pause_for_review = True
    run_id = studio.create_run(config, references)
    assert studio.advance(run_id)["status"] == "awaiting_review"
    studio.commit_round(run_id)
    with studio.db() as db:
        before = [x for x in storage.list_references(db, run_id) if x["source"] == "synthetic"]
    swapped = swap_added_for_renders(studio, run_id, scenario, 1, seed=5)
    with studio.db() as db:
        after = [x for x in storage.list_references(db, run_id) if x["source"] == "synthetic"]
    assert len(swapped) == len(before) == len(after) == 2  # k = 2: the same count
    assert [(x["prompt"], x["weight"], x["file"]) for x in after] == [
        (x["prompt"], x["weight"], x["file"]) for x in before
    ]
    folder = studio.folder(run_id)
    renders = {}
    for i, ref in enumerate(sorted(after, key=lambda x: x["file"])):
        spec = truth_spec(scenario, ref["prompt"])
        size = folder.open_rgb(ref["file"]).size[0]
        want = np.asarray(render(spec, np.random.default_rng([5, 11, 1, i]), size))
        got = np.asarray(Image.open(folder.path(ref["file"])).convert("RGB"))
        assert np.array_equal(got, want)
        assert ref["sha256"] == hashlib.sha256(folder.path(ref["file"]).read_bytes()).hexdigest()
        renders[ref["prompt"]] = want
    studio.advance(run_id)  # round 2 trains on the real references and the two renders
    added = [(img, p, w) for img, p, w, is_added in seen[-1] if is_added]
    assert len(added) == 2
    for img, prompt, weight in added:
        assert weight == 1.0 and np.array_equal(img, renders[prompt])
