"""gal.judges: the judge interface, CLIP (Eq. 8, today's verdicts bit for bit), SigLIP, DINOv2, a VLM,
the ensemble, plug-ins by entry point, disagreement-first review, the per-judge agreement log and VLM
captions — tiny random-init models built offline, known answers where a rule has them."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from sqlite_utils import Database

import storage
from gal import judges
from gal.judges import Judgement, JudgeRequest, load_judge
from gal.judges.clip import clip_scores
from gal.judges.ensemble import combine
from gal.oracle import ClipOracle
from gal.review import review_order
from tests.conftest import tiny_config


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def _request(images, refs=None) -> JudgeRequest:
    anchors = ["a star in a museum", "a star on a boat"] * (len(images) // 2) + ["a star"] * (len(images) % 2)
    return JudgeRequest(
        images, anchors, ["a star on stairs"], references=lambda: refs or images[:2], subject="a star"
    )


# -- specs and the registry ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, kind, name",
    [
        ("tiny", "clip", "clip:tiny"),
        ("clip:tiny", "clip", "clip:tiny"),
        ("ViT-B-32/openai", "clip", "clip:ViT-B-32/openai"),
        ("/models/my-clip", "clip", "clip:/models/my-clip"),
        ("siglip", "siglip", "siglip:tiny"),
        ("dino", "dino", "dino:tiny"),
        ("vlm:/models/smolvlm", "vlm", "vlm:/models/smolvlm"),
        ("ensemble:tiny+dino+vlm", "ensemble", "ensemble:clip:tiny+dino:tiny+vlm:tiny"),
    ],
)
def test_specs_name_one_judge_each(spec, kind, name):
    assert judges.parse(spec)[0] == kind
    assert judges.canonical(spec) == name


@pytest.mark.parametrize(
    "spec, words",
    [
        ("nosuch:x", "unknown judge 'nosuch'"),
        ("ensemble:dino", "two or more"),
        ("ensemble", "needs its members"),
        ("ensemble:dino+ensemble:clip+vlm", "nests"),
        ("dino:", "lacks its model"),
        ("", "must name a judge"),
    ],
)
def test_bad_judge_specs_say_what_to_write(spec, words):
    with pytest.raises(ValueError, match=words):
        judges.validate(spec)


def test_config_validates_the_judge_and_vlm_captions():
    config = tiny_config()
    config.oracle = "nosuch:x"
    with pytest.raises(ValueError, match="unknown judge"):
        config.validate()
    config = tiny_config()
    config.train.captions = "vlm"
    with pytest.raises(ValueError, match="needs a VLM judge"):
        config.validate()
    config.oracle = "ensemble:tiny+vlm"
    config.validate()


def test_the_scorer_of_a_run_is_a_clip_model_whatever_the_judge():
    assert judges.scorer_spec("ViT-B-32/openai") == "ViT-B-32/openai"
    assert judges.scorer_spec("siglip:tiny") == "siglip:tiny"
    assert judges.scorer_spec("ensemble:dino+clip:tiny") == "tiny"
    from gal.models import default_oracle

    assert judges.scorer_spec("vlm:tiny") == default_oracle()


# -- the rules, with known answers --------------------------------------------------------------------


def test_probability_to_verdict_and_confidence():
    assert judges.from_probability(0.9) == (1, pytest.approx(0.8))
    assert judges.from_probability(0.25) == (0, pytest.approx(0.5))
    assert judges.from_probability(0.5) == (1, 0.0)  # a tie is overfit, as Eq. 8's <=
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        judges.from_probability(float("nan"))


def test_ensemble_is_a_confidence_weighted_vote_that_marks_disagreement():
    assert combine({"a": (1, 0.8), "b": (0, 0.2)}) == (1, pytest.approx(0.3), pytest.approx(0.3))
    assert combine({"a": (1, 0.2), "b": (0, 0.8)}) == (0, pytest.approx(0.3), pytest.approx(-0.3))
    assert combine({"a": (1, 0.5), "b": (0, 0.5)})[:2] == (1, 0.0)  # tie: overfit
    assert combine({"a": (0, 0.6), "b": (0, 0.3), "c": (1, 0.6)})[:2] == (0, pytest.approx(0.1))
    assert Judgement(1, 0.3, votes={"a": (1, 0.8), "b": (0, 0.2)}).disagree
    assert not Judgement(1, 0.3, votes={"a": (1, 0.8), "b": (1, 0.2)}).disagree


def test_clip_judge_is_eq8_bit_for_bit_with_its_models_own_temperature():
    oracle = ClipOracle.from_spec("tiny")
    images = _images(6)
    request = _request(images)
    sim_anchor, sim_non_soi = clip_scores(oracle, images, request.anchor_texts, request.non_soi_texts)
    judged = load_judge("tiny", scorer=lambda spec: oracle).judge(request)
    expected = (sim_anchor <= sim_non_soi).astype(int)
    assert [j.verdict for j in judged] == list(expected)
    scale = math.exp(float(oracle.model.logit_scale.detach()))
    for j, a, b in zip(judged, sim_anchor, sim_non_soi, strict=True):
        assert j.evidence == {"sim_anchor": float(a), "sim_non_soi": float(b)}
        p = 1 / (1 + math.exp(-scale * (b - a)))  # CLIP's two-way zero-shot probability of "overfit"
        assert j.confidence == pytest.approx(abs(2 * p - 1), rel=1e-6)
    # Scores the step already computed are reused, not recomputed: fake ones give their own verdicts.
    fake = {"sim_anchor": np.array([0.3] * 6), "sim_non_soi": np.array([0.2, 0.4] * 3)}
    reused = load_judge("tiny", scorer=lambda spec: oracle).judge(
        JudgeRequest(images, request.anchor_texts, request.non_soi_texts, scores=fake, scorer="tiny")
    )
    assert [j.verdict for j in reused] == [0, 1] * 3


def test_siglip_judge_builds_offline_with_a_sigmoid_bias():
    judge = load_judge("siglip:tiny")
    assert float(judge.oracle.model.logit_bias.detach()) == pytest.approx(-10.0)
    out = judge.judge(_request(_images(4)))
    assert len(out) == 4 and all(0 <= j.confidence <= 1 for j in out)


def test_dino_rule_against_the_references_pairwise_similarity():
    judge = load_judge("dino:tiny")
    vectors = {  # known unit embeddings: refs 60° apart (τ = cos 60° = 0.5)
        "r1": [1.0, 0.0], "r2": [0.5, math.sqrt(3) / 2],
        "copy": [1.0, 0.0], "new": [-1.0, 0.0], "edge": [math.cos(1.0), math.sin(1.0)],
    }  # fmt: skip
    names = {}
    for key in vectors:
        im = Image.new("RGB", (32, 32), (len(names) * 40, 0, 0))
        names[id(im)] = key
        vectors[key] = (im, np.array(vectors[key]))
    judge.embed = lambda ims: np.stack([vectors[names[id(im)]][1] for im in ims])
    refs = [vectors["r1"][0], vectors["r2"][0]]
    out = judge.judge(_request([vectors[k][0] for k in ("copy", "new", "edge")], refs))
    assert [j.verdict for j in out] == [1, 0, 1]  # cos(1 rad) = 0.54 >= 0.5: closer than refs are
    assert out[0].evidence == {"sim_ref": pytest.approx(1.0), "threshold": pytest.approx(0.5)}
    assert out[0].confidence == pytest.approx(math.tanh(20 * 0.5 / 2))
    assert out[1].evidence["sim_ref"] == pytest.approx(-0.5)  # its closest reference is r2, 120° away
    # one reference: no pair, the fixed threshold
    assert judge.threshold(np.array([[1.0, 0.0]])) == judges.dino.SINGLE_REFERENCE_THRESHOLD


def test_dino_real_model_calls_a_copy_of_a_reference_overfit():
    images = _images(3, seed=1)
    out = load_judge("dino:tiny").judge(_request([images[0], images[1]], refs=images))
    assert [j.verdict for j in out] == [1, 1]  # each is one of the references: sim 1 >= τ
    assert all(j.evidence["sim_ref"] == pytest.approx(1.0, abs=1e-5) for j in out)


def test_vlm_judge_reads_yes_against_no():
    judge = load_judge("vlm:tiny")
    assert judge.yes and judge.no and not set(judge.yes) & set(judge.no)
    images = _images(2)
    out = judge.judge(_request(images))
    for j in out:
        p = j.evidence["p_yes"] / (j.evidence["p_yes"] + j.evidence["p_no"])
        assert (j.verdict, j.confidence) == (int(p >= 0.5), pytest.approx(abs(2 * p - 1)))
    assert [j.evidence for j in judge.judge(_request(images))] == [j.evidence for j in out]  # deterministic
    # A model that cannot tell yes from no (all logits equal): p = 0.5, overfit with confidence 0.
    import torch

    with torch.no_grad():
        judge.model.lm_head.weight.zero_()
    flat = judge.judge(_request(images[:1]))[0]
    assert (flat.verdict, flat.confidence) == (1, 0.0)
    assert flat.evidence["p_yes"] == pytest.approx(flat.evidence["p_no"])


def test_ensemble_keeps_every_members_vote():
    out = load_judge("ensemble:tiny+dino+vlm").judge(_request(_images(4)))
    for j in out:
        assert set(j.votes) == {"clip:tiny", "dino:tiny", "vlm:tiny"}
        assert (j.verdict, j.confidence) == pytest.approx(combine(j.votes)[:2])
        assert j.disagree == (len({v for v, _ in j.votes.values()}) > 1)


# -- plug-ins by entry point --------------------------------------------------------------------------

PLUGIN = '''
import numpy as np
from gal.judges import Judgement

class Bright:
    """Overfit when the image is brighter than a level: a judge anyone could ship."""
    def __init__(self, level):
        self.level = float(level or 128)
        self.name = f"bright:{self.level:g}"

    def judge(self, request):
        out = []
        for im in request.images:
            m = float(np.asarray(im.convert("L"), dtype=np.float64).mean())
            v, c = int(m > self.level), min(1.0, abs(m - self.level) / 128)
            out.append(Judgement(v, c, {"brightness": m}, {self.name: (v, c)}))
        return out

def factory(argument, device):
    return Bright(argument)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A tiny third-party package, 'installed' as a dist-info with an entry point on sys.path."""
    import importlib

    (tmp_path / "galjudge_bright").mkdir()
    (tmp_path / "galjudge_bright" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "galjudge_bright-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: galjudge-bright\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gal.judges]\nbright = galjudge_bright:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield "bright"
    sys.modules.pop("galjudge_bright", None)


def test_a_plugin_judge_is_found_by_its_entry_point(plugin):
    assert plugin in judges.available()
    assert judges.parse("bright:100") == ("bright", "100")
    judge = load_judge("bright:100")
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    out = judge.judge(_request([white, black]))
    assert [(j.verdict, j.confidence) for j in out] == [(1, 1.0), (0, pytest.approx(100 / 128))]


def test_without_the_plugin_its_name_is_refused():
    with pytest.raises(ValueError, match="unknown judge 'bright'"):
        judges.validate("bright:100")


def test_a_run_judged_by_a_plugin(plugin, shared_studio, references):
    config = tiny_config("uncertainty", pause_for_review=True)
    config.oracle = "bright:60"
    run_id = shared_studio.create_run(config, references)
    assert shared_studio.advance(run_id)["status"] == "awaiting_review"
    images = [im for a in shared_studio.review_state(run_id)["anchors"] for im in a["images"]]
    for im in images:
        m = np.asarray(Image.open(im["path"]).convert("L"), dtype=np.float64).mean()
        assert im["judge"] == "bright:60" and im["oracle_verdict"] == int(m > 60)
        assert im["evidence"]["brightness"] == pytest.approx(m)
        assert im["sim_anchor"] is not None  # the run's CLIP still measures it


# -- storage: verdicts with confidence, the agreement log -----------------------------------------------


@pytest.fixture
def db():
    database = Database(memory=True)
    database.execute("PRAGMA foreign_keys = ON")
    storage.migrate(database)
    storage.create_run(database, run_id="r", name="R", config={}, run_dir="r")
    storage.start_round(database, run_id="r", round_index=1, mode="human")
    yield database
    database.close()


def _judged_images(db, votes_per_image):
    ids = storage.add_images(
        db,
        [
            {
                "run_id": "r",
                "round_index": 1,
                "anchor_index": i,
                "slot": 0,
                "file": f"{i}.png",
                "kind": "anchor",
            }
            for i in range(len(votes_per_image))
        ],
    )
    rows = []
    for image_id, votes in zip(ids, votes_per_image, strict=True):
        verdict, confidence, _ = combine(votes)
        rows.append({"id": image_id, "sim_anchor": 0.1, "sim_non_soi": 0.2, "oracle_verdict": verdict,
                     "judge": "ens", "confidence": confidence, "evidence": {"score": 0.0},
                     "votes": {**votes, "ens": (verdict, confidence)},
                     "disagree": len({v for v, _ in votes.values()}) > 1})  # fmt: skip
    storage.set_similarities(db, rows)
    return ids


def test_agreement_log_counts_each_judge_against_the_persons_latest_word(db):
    a, b, c = _judged_images(
        db,
        [
            {"clip": (1, 0.9), "dino": (0, 0.4)},  # ens: overfit (0.25)
            {"clip": (0, 0.8), "dino": (0, 0.6)},  # ens: aligned (0.7)
            {"clip": (1, 0.1), "dino": (0, 0.9)},  # ens: aligned (0.4)
        ],
    )
    image = storage.list_images(db, "r", 1)[0]
    assert (image["judge"], image["disagree"], image["evidence"]) == ("ens", 1, {"score": 0.0})
    assert image["confidence"] == pytest.approx(0.25)
    storage.record_action(db, "r", 1, {a: 1, b: 0, c: 1})
    summary = {
        row["judge"]: (row["judged"], row["agreed"], row["overruled"]) for row in storage.judge_agreement(db)
    }
    assert summary == {"clip": (3, 3, 0), "dino": (3, 1, 2), "ens": (3, 2, 1)}
    storage.undo_action(db, "r", 1)  # the person's verdicts are gone: nothing to agree with
    assert storage.judge_agreement(db, "r") == []
    storage.redo_action(db, "r", 1)
    storage.record_action(db, "r", 1, {c: storage.SEEN})  # a skip is no opinion
    summary = {row["judge"]: (row["judged"], row["agreed"]) for row in storage.judge_agreement(db, "r")}
    assert summary == {"clip": (2, 2), "dino": (2, 1), "ens": (2, 2)}
    assert storage.judge_agreement(db, "other-run") == []
    logged = db.execute("SELECT COUNT(*) FROM judge_agreement").fetchone()[0]
    assert logged == 3 * 3 + 3 * 3 + 3 * 3 + 3  # do, undo, redo: 3 images × 3 judges; the skip: 3
    with pytest.raises(Exception, match="append-only"):
        db.execute("DELETE FROM judge_agreement")


def test_judge_fields_are_checked(db):
    (image_id,) = storage.add_images(
        db,
        [{"run_id": "r", "round_index": 1, "anchor_index": 0, "slot": 0, "file": "x.png", "kind": "anchor"}],
    )
    row = {"id": image_id, "sim_anchor": 0.1, "sim_non_soi": 0.2, "oracle_verdict": 1, "judge": "j"}
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        storage.set_similarities(db, [{**row, "confidence": 1.5}])
    with pytest.raises(ValueError, match="no 'judge' name"):
        storage.set_similarities(db, [{**row, "judge": "", "confidence": 0.5}])


# -- disagreement first -------------------------------------------------------------------------------


def test_review_order_puts_disagreements_then_low_confidence_first():
    def im(i, disagree, confidence, person=None):
        return {"id": i, "anchor_index": i // 2, "slot": i % 2, "disagree": disagree,
                "confidence": confidence, "person_verdict": person, "person_seen": False}  # fmt: skip

    images = [
        im(0, 0, 0.9),
        im(1, 1, 0.5),
        im(2, 0, 0.1),
        im(3, 1, 0.2, person=1),
        im(4, None, None),
        im(5, 0, 0.1),
    ]
    assert [x["id"] for x in review_order(images)] == [3, 1, 2, 5, 0, 4]
    assert [x["id"] for x in review_order(images, "anchor")] == [0, 1, 2, 3, 4, 5]
    assert [x["id"] for x in review_order(images, disagree_only=True)] == [3, 1]
    assert [x["id"] for x in review_order(images, max_confidence=0.2)] == [3, 2, 5]
    assert [x["id"] for x in review_order(images, unreviewed=True, disagree_only=True)] == [1]
    with pytest.raises(ValueError, match="review order"):
        review_order(images, "random")
    with pytest.raises(ValueError, match="max_confidence"):
        review_order(images, max_confidence=2)


def test_an_ensemble_run_reviews_disagreements_first_and_logs_agreement(shared_studio, references):
    config = tiny_config("human+balance", pause_for_review=True)
    config.oracle = "ensemble:tiny+dino"
    run_id = shared_studio.create_run(config, references)
    assert shared_studio.advance(run_id)["status"] == "awaiting_review"
    queue = shared_studio.review_queue(run_id)
    assert len(queue) == 12 and all(set(im) >= {"judge", "confidence", "disagree"} for im in queue)
    keys = [(not im["disagree"], im["confidence"]) for im in queue]
    assert keys == sorted(keys)
    counted = shared_studio.review_state(run_id)["counters"]["disagreements"]
    assert counted == sum(im["disagree"] for im in queue)
    with storage.open_db(shared_studio.db_path) as db:
        votes = {
            (row["image_id"], row["judge"]): row["verdict"]
            for row in db.query("SELECT * FROM judge_votes WHERE image_id = ?", [queue[0]["id"]])
        }
    assert set(j for _, j in votes) == {"clip:tiny", "dino:tiny", "ensemble:clip:tiny+dino:tiny"}
    shared_studio.decide(run_id, queue[0]["id"], 1)
    summary = {row["judge"]: row for row in shared_studio.judge_agreement(run_id)}
    assert {j: (row["judged"], row["agreed"]) for j, row in summary.items()} == {
        j: (1, int(v == 1)) for (_, j), v in votes.items()
    }


# -- CLIP runs are unchanged; every judge runs the demo; VLM captions ----------------------------------


def test_a_clip_run_stores_todays_eq8_verdicts_and_similarities(shared_studio, references):
    run_id = shared_studio.create_run(tiny_config("uncertainty", pause_for_review=True), references)
    shared_studio.advance(run_id)
    state = shared_studio.review_state(run_id)
    images = [im for a in state["anchors"] for im in a["images"]]
    texts = {a["anchor_index"]: a["oracle_text"] for a in state["anchors"]}
    oracle = ClipOracle.from_spec("tiny")
    pil = [Image.open(im["path"]).convert("RGB") for im in images]
    unique = list(dict.fromkeys(texts.values()))
    sims = oracle.text_similarities(pil, unique + ["a star on stairs"])  # the judge step before judges
    sim_anchor = sims[np.arange(len(images)), [unique.index(texts[im["anchor_index"]]) for im in images]]
    assert [im["sim_anchor"] for im in images] == [float(x) for x in sim_anchor]
    assert [im["sim_non_soi"] for im in images] == [float(x) for x in sims[:, len(unique)]]
    assert [im["oracle_verdict"] for im in images] == [int(a <= b) for a, b in zip(sim_anchor, sims[:, -1])]
    assert {im["judge"] for im in images} == {"clip:tiny"} and all(im["disagree"] == 0 for im in images)


CLI_FAST = [
    "--model",
    "tiny",
    "--steps",
    "2",
    "--gen-steps",
    "2",
    "--m",
    "2",
    "--rounds",
    "2",
    "--no-adaptive-stop",
]


@pytest.mark.parametrize(
    "judge",
    [
        "ensemble:clip+dino+vlm",  # every built-in kind in one run: the fast one (~45 s on a busy 2-core box)
        *[pytest.param(j, marks=pytest.mark.slow) for j in ("tiny", "siglip:tiny", "dino:tiny", "vlm:tiny")],
    ],
)
def test_gal_run_demo_with_each_judge_runs_two_rounds(tmp_path, judge):
    from gal.cli import main

    runs = tmp_path / "runs"
    assert main(["--runs-dir", str(runs), "run", "--demo", *CLI_FAST, "--oracle", judge]) == 0
    with storage.open_db(runs / "gal.db") as db:
        (run,) = storage.list_runs(db)
        assert [r["round_index"] for r in storage.list_rounds(db, run["run_id"])] == [1, 2]
        for r in (1, 2):
            images = storage.list_images(db, run["run_id"], r)
            assert images and {im["judge"] for im in images} == {judges.canonical(judge)}
            assert all(0 <= im["confidence"] <= 1 and im["oracle_verdict"] in (0, 1) for im in images)


def test_vlm_captions_are_the_judges_words_stored_with_the_round(tmp_path):
    from gal.cli import main

    runs = tmp_path / "runs"
    args = ["--runs-dir", str(runs), "run", "--demo", *CLI_FAST, "--oracle", "vlm:tiny", "--captions", "vlm"]
    assert main(args) == 0
    with storage.open_db(runs / "gal.db") as db:
        (run,) = storage.list_runs(db)
        refs = storage.list_references(db, run["run_id"], up_to_round=1)
    folder = runs / run["run_id"]
    trained = json.loads(next(folder.glob("rounds/r02/**/training_set.json")).read_text())
    assert len(trained) == len(refs) and any(x["source"] == "synthetic" for x in trained)
    vlm = load_judge("vlm:tiny")
    for row in trained:
        words = vlm.describe(Image.open(folder / row["file"]).convert("RGB"), "a star")
        ref = next(x for x in refs if x["file"] == row["file"])
        assert row["caption"] == (f"{ref['prompt']}, {words}" if words else ref["prompt"])
    assert any(
        row["caption"] != next(x for x in refs if x["file"] == row["file"])["prompt"] for row in trained
    )
