"""End-to-end runs of the GAL loop on the tiny models, with the real SQLite file, peft and open_clip."""

import math

import numpy as np
import pytest
import torch
from conftest import tiny_config

import storage
from gal import algorithm

STRATEGIES = ["random", "human", "uncertainty", "uncertainty+balance", "human+balance"]


def _accept_first_images(studio, run_id, n=2):
    state = studio.review_state(run_id)
    images = [im for a in state["anchors"] if a["in_pool"] for im in a["images"]]
    for im in images[:n]:
        studio.decide(run_id, im["id"], 0)
    for im in images[n:]:
        studio.decide(run_id, im["id"], 1)
    return images[:n]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_rounds_of_every_strategy(shared_studio, references, strategy):
    studio = shared_studio
    run_id = studio.create_run(tiny_config(strategy), references)
    run = studio.advance(run_id)
    accepted = []
    if strategy.startswith("human"):
        assert run["status"] == "awaiting_review"  # Human mode waits for the person
        counters = studio.review_state(run_id)["counters"]
        assert (counters["real_refs"], counters["added_refs"]) == (len(references), 0)
        accepted = _accept_first_images(studio, run_id)
        studio.commit_round(run_id)
        run = studio.advance(run_id)
        assert run["status"] == "awaiting_review"
        counters = studio.review_state(run_id)["counters"]  # round 2 trained on the references + the 2 picks
        assert (counters["real_refs"], counters["added_refs"]) == (len(references), 2)
        studio.commit_round(run_id)
        run = studio.advance(run_id)
    assert run["status"] == "finished"

    with storage.open_db(studio.db_path) as db:
        rounds = storage.list_rounds(db, run_id)
        selections = storage.list_selections(db, run_id)
        refs = storage.list_references(db, run_id)
        anchors_r1 = storage.list_anchors(db, run_id, 1)
        anchors_r2 = storage.list_anchors(db, run_id, 2)
        images_r1 = storage.list_images(db, run_id, 1)
    assert [r["round_index"] for r in rounds] == [1, 2]
    assert all(r["state"] == "done" for r in rounds)
    assert all({"txt_aln", "img_aln", "ovf", "train_loss"} <= set(r["metrics"]) for r in rounds)
    assert len(images_r1) == 4 * 3  # 4 anchors × m=3

    # Eq. 6-9 recomputed from the stored final verdicts match what the round stored.
    verdicts = np.array(
        [[im["final_verdict"] for im in images_r1 if im["anchor_index"] == a] for a in range(4)]
    )
    omega = algorithm.direction_uncertainty(algorithm.overfit_rate(verdicts))
    np.testing.assert_allclose([a["uncertainty"] for a in anchors_r1], omega)
    assert rounds[0]["openness"] == pytest.approx(0.005 * omega.mean())

    synthetic = [r for r in refs if r["source"] == "synthetic"]
    if strategy.startswith("human"):
        assert {s["image_id"] for s in selections} == {im["id"] for im in accepted}
    else:
        assert len(selections) == 2  # k picks in round 1; round 2 is the last and adds none
    expected_weight = rounds[0]["openness"] if strategy.endswith("balance") else 1.0
    assert [r["weight"] for r in synthetic] == pytest.approx([expected_weight] * len(synthetic))
    assert all(r["weight"] == 1.0 for r in refs if r["source"] == "real")
    # official: a selected anchor leaves the pool
    picked = {s["anchor_index"] for s in selections}
    assert {a["anchor_index"] for a in anchors_r2 if not a["in_pool"]} == picked
    if strategy.startswith("uncertainty"):
        expected = algorithm.top_k_anchors(omega, 2)
        assert sorted(picked) == sorted(expected.tolist())


def test_override_changes_live_preview_and_selection(shared_studio, references):
    studio = shared_studio
    config = tiny_config("uncertainty", pause_for_review=True)
    run_id = studio.create_run(config, references)
    assert studio.advance(run_id)["status"] == "awaiting_review"
    state = studio.review_state(run_id)
    # Make anchor 3 the only mixed one: everything else settled by the person.
    for a in state["anchors"]:
        for j, im in enumerate(a["images"]):
            verdict = (j % 2) if a["anchor_index"] == 3 else 1
            studio.decide(run_id, im["id"], verdict)
    preview = studio.preview_selection(run_id)
    assert preview["picks"][0]["anchor_index"] == 3
    counters = studio.review_state(run_id)["counters"]
    assert counters["reviewed"] == counters["total"] == 12
    assert counters["mixed"] == 1
    # The picked image of the mixed anchor is an aligned one.
    pick = preview["picks"][0]
    verdict = {
        im["id"]: im["final_verdict"] for a in studio.review_state(run_id)["anchors"] for im in a["images"]
    }
    assert verdict[pick["image_id"]] == 0
    studio.commit_round(run_id)
    with storage.open_db(studio.db_path) as db:
        assert storage.list_selections(db, run_id)[0]["anchor_index"] == 3


def test_undo_restores_previous_verdict_and_keeps_history(shared_studio, references):
    studio = shared_studio
    run_id = studio.create_run(tiny_config("uncertainty", pause_for_review=True), references)
    studio.advance(run_id)
    image = studio.review_state(run_id)["anchors"][0]["images"][0]
    oracle = image["oracle_verdict"]
    studio.decide(run_id, image["id"], 1 - oracle)
    studio.decide(run_id, image["id"], oracle)
    studio.undo(run_id)
    again = studio.review_state(run_id)["anchors"][0]["images"][0]
    assert again["final_verdict"] == 1 - oracle
    with storage.open_db(studio.db_path) as db:
        history = storage.decision_history(db, image["id"])
    assert [h["source"] for h in history] == ["oracle", "person", "person", "person"]


def test_bulk_accept_oracle_and_threshold(shared_studio, references):
    studio = shared_studio
    run_id = studio.create_run(tiny_config("uncertainty", pause_for_review=True), references)
    studio.advance(run_id)
    images = [im for a in studio.review_state(run_id)["anchors"] for im in a["images"]]
    threshold = float(np.median([im["sim_anchor"] for im in images]))
    n_below = sum(im["sim_anchor"] < threshold for im in images)
    assert studio.mark_below(run_id, threshold) == n_below
    assert studio.accept_oracle(run_id) == len(images) - n_below
    after = [im for a in studio.review_state(run_id)["anchors"] for im in a["images"]]
    assert all(im["person_verdict"] is not None for im in after)
    assert all(im["final_verdict"] == 1 for im in after if im["sim_anchor"] < threshold)


def test_continue_adapter_and_keep_selected_options(shared_studio, references):
    studio = shared_studio
    config = tiny_config("uncertainty", remove_selected=False)
    config.train.retrain_from_base = False
    run_id = studio.create_run(config, references)
    assert studio.advance(run_id)["status"] == "finished"
    with storage.open_db(studio.db_path) as db:
        assert all(a["in_pool"] for a in storage.list_anchors(db, run_id, 2))
        assert len(storage.list_images(db, run_id, 2)) == 12


def test_adaptive_stop_ends_run_when_directions_settle(shared_studio, references):
    studio = shared_studio
    config = tiny_config("uncertainty", pause_for_review=True, adaptive_stop=True, max_rounds=4)
    run_id = studio.create_run(config, references)
    studio.advance(run_id)
    for a in studio.review_state(run_id)["anchors"]:
        for im in a["images"]:
            studio.decide(run_id, im["id"], 1)  # every direction settled: Ω = 0 everywhere
    assert studio.preview_selection(run_id)["stop"] is True
    assert studio.commit_round(run_id)["status"] == "finished"
    with storage.open_db(studio.db_path) as db:
        assert storage.get_round(db, run_id, 1)["metrics"]["stopped_by_eq10"] is True


def test_prior_preservation_trains_with_class_images(shared_studio, references):
    studio = shared_studio
    config = tiny_config("uncertainty", max_rounds=1)
    config.train.prior_preservation = True
    config.train.class_prompt = "a star"
    config.train.num_class_images = 3
    run_id = studio.create_run(config, references)
    assert studio.advance(run_id)["status"] == "finished"
    assert len(list((studio.run_dir(run_id) / "class_images").glob("*.png"))) == 3


def test_openness_weights_match_lambda(shared_studio, references):
    studio = shared_studio
    config = tiny_config("uncertainty+balance", lam=0.5)
    run_id = studio.create_run(config, references)
    studio.advance(run_id)
    with storage.open_db(studio.db_path) as db:
        r1 = storage.get_round(db, run_id, 1)
        anchors = storage.list_anchors(db, run_id, 1)
    assert r1["openness"] == pytest.approx(0.5 * np.mean([a["uncertainty"] for a in anchors]))
    assert r1["openness"] <= 0.5 * math.log(2)


def test_same_config_same_round_one_whatever_ran_before(shared_studio, references):
    """Round 1 (plain DreamBooth-LoRA) is identical across strategies: LoRA init and training are seeded."""
    import torch

    studio = shared_studio
    first = studio.create_run(tiny_config("uncertainty", max_rounds=1), references)
    studio.advance(first)
    torch.rand(1000)  # disturb the global RNG, as any other work in the process would
    second = studio.create_run(tiny_config("random", max_rounds=1), references)
    studio.advance(second)
    with storage.open_db(studio.db_path) as db:
        a = storage.get_round(db, first, 1)["metrics"]
        b = storage.get_round(db, second, 1)["metrics"]
    assert a["train_loss"] == b["train_loss"] and a["txt_aln"] == b["txt_aln"]


def test_a_pool_emptied_by_the_person_ends_the_run_after_training_on_the_picks(shared_studio, references):
    """Human mode may select every anchor in one round; the next round trains on the picks, evaluates,
    and ends."""
    studio = shared_studio
    run_id = studio.create_run(tiny_config("human+balance", max_rounds=3), references)
    assert studio.advance(run_id)["status"] == "awaiting_review"
    state = studio.review_state(run_id)
    studio.decide_many(
        run_id, {a["images"][0]["id"]: 0 for a in state["anchors"]}
    )  # one image of every anchor
    studio.commit_round(run_id)
    run = studio.advance(run_id)
    assert run["status"] == "finished" and run["current_round"] == 2
    with storage.open_db(studio.db_path) as db:
        r2 = storage.get_round(db, run_id, 2)
        assert r2["state"] == "done" and r2["metrics"]["pool_exhausted"] is True
        assert {"txt_aln", "img_aln", "ovf"} <= set(r2["metrics"])  # round 2's model was still evaluated
        assert [im for im in storage.list_images(db, run_id, 2) if im["kind"] == "anchor"] == []
        assert sum(x["source"] == "synthetic" for x in storage.list_references(db, run_id)) == 4


def test_training_previews_are_drawn_and_change_nothing(shared_studio, references):
    """train.preview_every draws slot 0 of two anchors every N steps (the Progress tab shows the latest);
    the run trains exactly as one without previews (own generators, no gradients)."""
    from safetensors.torch import load_file

    from gal.training import LORA_FILE

    adapters = []
    for every in (0, 2):
        config = tiny_config(max_rounds=1)
        config.train.preview_every = every
        config.train.checkpoint_every = 5  # its own interval: previews keep theirs (they used this one)
        run_id = shared_studio.create_run(config, references)
        shared_studio.advance(run_id)
        folder = shared_studio.run_dir(run_id)
        previews = (
            sorted(p.name for p in (folder / "rounds" / "r01" / "previews").glob("*.png")) if every else []
        )
        adapters.append(load_file(str(folder / "rounds" / "r01" / "adapter" / LORA_FILE)))
        if every:
            assert previews == [f"s{s:06d}_a{a:02d}.png" for s in (2, 4, 6) for a in (0, 1)]
            live = shared_studio.jobs.live[run_id]
            assert [p.rsplit("/", 1)[-1] for p in live["previews"]] == ["s000006_a00.png", "s000006_a01.png"]
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_generation_is_announced_and_every_rounds_loss_curve_is_kept(shared_studio, references):
    """Issue 26.9: the page said nothing between training's last step and the first batch of images (16 s
    on 2 cores), and a round's loss curve was gone once the round ended."""
    config = tiny_config(max_rounds=2, strategy="uncertainty")
    config.gal.pause_for_review = False
    run_id = shared_studio.create_run(config, references)
    reports = []
    shared_studio.advance(
        run_id, progress=lambda stage, done, total, info: reports.append((stage, done, total))
    )
    first = next(i for i, r in enumerate(reports) if r[0] == "generate")
    assert reports[first][1] == 0 and reports[first][2] > 0  # said before the first image is drawn
    assert reports[first - 1][0] == "train" and reports[first - 1][1] == reports[first - 1][2]
    curves = shared_studio.loss_curves(run_id)
    assert sorted(curves) == [1, 2] and all(len(c) == config.train.steps for c in curves.values())
    live = shared_studio.jobs.live[run_id]["losses"]  # the last round's, as the page saw it
    assert [v for _, v in live] == curves[2]


def test_the_cpu_demo_draws_previews_where_they_are_cheap():
    """Issue 26.9: no sample images on the demo. The toy model's previews cost ~4-5 % of a demo round at every
    100 steps (bench/bench_previews.py), so the CPU demo draws them; other CPU models do not by default."""
    from gal.steps import preview_interval

    assert preview_interval(None, "cpu", "toy") == 100
    assert preview_interval(None, "cpu", "tiny") == 0 and preview_interval(None, "cpu", "some/sd15") == 0
    assert preview_interval(None, "cuda", "some/sd15") == 100
    assert preview_interval(0, "cpu", "toy") == 0 and preview_interval(7, "cpu", "tiny") == 7
