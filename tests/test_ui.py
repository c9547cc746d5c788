"""The web app's handlers, called directly on the tiny models, and the launched app through gradio_client.

One run is set up once for the module (round 1 trains in the app's worker thread, ~10 s on 2 cores);
the tests then review it through the same functions the page calls, checking SQLite after each step.
"""

from __future__ import annotations

import html
import json
import os
import re
import socket
import types
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import gradio as gr
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import storage  # noqa: E402
from gal.engine import Studio  # noqa: E402
from gal.fields import config_from_form, default_form, field_names, form_from_config  # noqa: E402
from gal_studio import app  # noqa: E402
from ui import charts, progress, render, selection  # noqa: E402
from ui.handlers import Handlers  # noqa: E402
from ui.references import references_from  # noqa: E402

FORM_FIELDS = field_names()
FILLED = ("files", "gallery", "table", *FORM_FIELDS, "validation")  # what the demo and a preset fill

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "anchors": "{} on grass\n{} in the sea\n{} in the snow\n{} at sunset",
    "m": 3,
    "k": 2,
    "train_steps": 10,
    "gen_steps": 3,
    "eval_per_prompt": 1,
    "gen_batch": 12,
}


def filled(out: dict) -> dict:
    """A handler's answer that fills the set-up: exactly the images, the table, every field, the verdict."""
    assert set(out) == set(FILLED), set(out) ^ set(FILLED)
    return out


def form_values(form: dict) -> list:
    return [form[name] for name in FORM_FIELDS]


def tile_ids(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'class="gal-tile[^"]*" data-id="(\d+)"', html)]


def select(index: int, **value) -> gr.SelectData:
    return gr.SelectData(None, {"index": index, "value": value})


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Studio:
    return Studio(tmp_path_factory.mktemp("runs"), model="tiny", oracle="tiny")


@pytest.fixture(scope="module")
def handlers(studio) -> Handlers:
    return Handlers(studio)


@pytest.fixture(scope="module")
def demo_form(handlers) -> tuple[list[str], list[list], dict]:
    out = filled(handlers.demo_fill("object"))
    form = {name: out[name] for name in FORM_FIELDS}
    form.update(TINY)
    return out["files"], out["table"], form


@pytest.fixture(scope="module")
def run_id(handlers, demo_form) -> str:
    files, table, form = demo_form
    view = handlers.start_run(files, table, *form_values(form))
    assert view["run_id"] and view["run_box"] == view["run_id"]
    assert handlers.worker.wait_idle(120), "round 1 did not finish in 2 minutes"
    assert not handlers.worker.errors, handlers.worker.errors
    return view["run_id"]


def rows(studio, run_id, r=1) -> dict[int, dict]:
    with storage.open_db(studio.db_path) as db:
        return {im["id"]: im for im in storage.list_images(db, run_id, r)}


# -- the set-up form ------------------------------------------------------------------------------


def test_default_form_is_valid_and_pauses_for_review():
    config = config_from_form(default_form("tiny", "tiny"))
    assert config.gal.pause_for_review is True
    assert len(config.anchors) == 18 and config.task == "object"


@pytest.mark.parametrize(
    ("change", "fix"),
    [
        ({"k": 30}, "lower k or add anchors"),
        ({"m": 2.5}, "m (images drawn per anchor) must be a whole number"),
        ({"m": None}, "m (images drawn per anchor) is empty"),
        ({"lam": -1}, "λ must be a finite number >= 0"),
        ({"resolution": 100}, "multiple of 8"),
        ({"subject_phrase": "a cat"}, "lacks the SoI token"),
        ({"anchors": ""}, "no anchors"),
        ({"strategy": "best"}, "choose a strategy"),
        ({"images_per_anchor": 0}, "images per picked anchor must be at least 1"),
        ({"images_per_anchor": 2}, "only applies to the +diversity strategies"),
    ],
)
def test_invalid_values_are_refused_with_the_fix(handlers, change, fix):
    form = {**default_form("tiny", "tiny"), **change}
    with pytest.raises(ValueError, match=re.escape(fix)):
        config_from_form(form)
    message = handlers.validate_form(*form_values(form))
    assert "✗" in message and fix.split()[0] in message
    # leaving the field says it at once, too; toasts render HTML, so the message comes escaped (issue 16.3)
    with pytest.warns(UserWarning, match=re.escape(html.escape(fix, quote=False))):
        handlers.check_field(*form_values(form))


def test_demo_fills_the_form_with_the_toy_scenario(handlers, demo_form):
    files, table, form = demo_form
    assert len(files) == 4 and all(Path(f).is_file() for f in files)
    assert [row[1] for row in table] == ["a <sks> star on stairs"] * 4
    assert form["soi_token"] == "<sks>" and form["subject_phrase"] == "a <sks> star"
    assert "✓" in handlers.validate_form(*form_values(form))


def test_a_run_started_from_the_demo_form_trains_as_the_demo_does(handlers, tmp_path):
    """Every training setting of the demo survives the form (a lost lr schedule made rounds blow up)."""
    from gal.demo import demo_scenario

    demo, _ = demo_scenario(tmp_path, "object", model=handlers.studio.default_model)
    out = filled(handlers.demo_fill("object"))
    started = config_from_form({name: out[name] for name in FORM_FIELDS})
    assert started.train == demo.train and started.generate == demo.generate
    assert started.gal.m == demo.gal.m and started.gal.k == demo.gal.k and started.gal.lam == demo.gal.lam
    assert started.train.lr_schedule == "cosine"


def test_informative_captions_from_the_form_are_what_round_1_trains_on(handlers, demo_form):
    """The SID caption option end to end in the app: the form's choice reaches training, and the round
    keeps the captions it trained on (the references' prompts do not name the stairs; their non-SoI does)."""
    files, table, form = demo_form
    bare = [[name, "a <sks> star", non_soi] for name, _, non_soi in table]
    config = config_from_form({**form, "captions": "informative"})
    assert config.train.captions == "informative" and form_from_config(config)["captions"] == "informative"
    view = handlers.start_run(files, bare, *form_values({**form, "captions": "informative", "name": "sid"}))
    assert handlers.worker.wait_idle(120), "round 1 did not finish in 2 minutes"
    assert not handlers.worker.errors, handlers.worker.errors
    with storage.open_db(handlers.studio.db_path) as db:
        assert storage.get_run(db, view["run_id"])["config"]["train"]["captions"] == "informative"
    kept = handlers.studio.run_dir(view["run_id"]) / "rounds/r01/adapter/training_set.json"
    kept = json.loads(kept.read_text())
    assert [x["caption"] for x in kept] == ["a <sks> star on stairs"] * 4


def test_uploads_get_a_preview_and_a_row_each_keeping_typed_prompts(handlers, tmp_path):
    paths = [str(tmp_path / f"img{i}.png") for i in range(3)]
    out = handlers.files_changed(paths, [["img1.png", "a <sks> cat", "a cat on a sofa"]])
    preview, table = out["gallery"], out["table"]
    assert preview == paths
    assert table == [
        ["img0.png", "", ""],
        ["img1.png", "a <sks> cat", "a cat on a sofa"],
        ["img2.png", "", ""],
    ]
    with pytest.raises(ValueError, match="image 1 .* has no prompt"):
        references_from(paths, table)
    with pytest.raises(ValueError, match="2 rows for 3 images"):
        references_from(paths, table[:2])


def test_own_photos_on_a_builtin_model_warn_and_name_the_model_fix(handlers, demo_form, tmp_path):
    """Issue 26.3: four photos of a mug on the toy/tiny model gave meaningless grids with no warning."""
    from PIL import Image

    files, table, form = demo_form
    values = form_values(form)
    demo = handlers.validate_setup(files, table, *values)
    assert "Ready" in demo and "--model" not in demo  # the demo's own images: no warning
    copies = []  # an upload of the demo's images is a copy under another name: still the demo
    for i, f in enumerate(files):
        copies.append(str(tmp_path / f"copy{i}.png"))
        Path(copies[-1]).write_bytes(Path(f).read_bytes())
    assert "--model" not in handlers.validate_setup(copies, table, *values)
    photos = []
    for i in range(len(files)):
        photos.append(str(tmp_path / f"mug{i}.png"))
        Image.new("RGB", (96, 96), (200, 30 + i, 30)).save(photos[-1])
    mine = handlers.validate_setup(photos, table, *values)
    assert "Ready" in mine and "Your own photos meet the built-in &#x27;tiny&#x27; model" in mine.replace(
        "'", "&#x27;"
    )
    assert "--model" in mine and "warn" in mine


def test_the_oracle_field_offers_the_judges(handlers, studio):
    """Issue 27: the app offers the judges (``gal.judges.available`` through ``Studio.judges``)."""
    from gal.judges import available, validate

    offered = studio.judges()
    assert offered[0] == studio.default_oracle
    assert {"siglip", "dino", "vlm", "ensemble:clip+dino"} <= set(offered)
    assert len(offered) >= len(available())  # every kind, plug-ins included
    for spec in offered:
        validate(spec)  # each one a spec the run accepts
    from ui import blocks

    page = blocks.build(studio)
    oracle = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "gal-f-oracle")
    assert isinstance(oracle, gr.Dropdown) and oracle.allow_custom_value
    assert [value for _, value in oracle.choices] == offered


def test_switching_the_task_loads_the_papers_presets(handlers):
    out = handlers.task_changed("style", "a <sks> cat")
    anchors, eval_prompts, subject = out["anchors"], out["eval_prompts"], out["subject_phrase"]
    assert len(anchors.splitlines()) == 18 and anchors.startswith("A tie {}")
    assert subject == "in <sks> style" and eval_prompts
    assert (
        handlers.task_changed("object", "a <sks> red mug")["subject_phrase"] == "a <sks> red mug"
    )  # typed: kept


def test_the_style_demo_is_valid_too(handlers):
    out = filled(handlers.demo_fill("style"))
    assert out["task"] == "style" and len(out["files"]) == 2 and "✓" in out["validation"]


def test_start_refuses_a_run_without_images(handlers):
    with pytest.raises(gr.Error, match="no reference images"):
        handlers.start_run([], [], *form_values(default_form("tiny", "tiny")))


# -- review ---------------------------------------------------------------------------------------


def test_round_one_opens_as_a_grid_with_verdicts_and_scores(handlers, studio, run_id):
    view = handlers.open(run_id)
    ids = tile_ids(view["grid"])
    assert len(ids) == 12 and set(ids) == set(rows(studio, run_id))
    assert view["grid"].count("✓ aligned") + view["grid"].count("✗ overfit") >= 12  # words, not colour alone
    assert "β " in view["grid"] and "Ω " in view["grid"]
    assert "Reviewed <b>0/12</b>" in view["counters"]
    assert view["mode"] == "auto" and "If you commit now" in view["preview"]
    assert "awaiting review" in view["header"]


def test_select_writes_the_verdict_to_sqlite_at_once(handlers, studio, run_id):
    ids = tile_ids(handlers.review(run_id)["grid"])
    target = ids[2]
    oracle = rows(studio, run_id)[target]["oracle_verdict"]
    # the page sends the tile's position and the verdict it painted
    view = handlers.select_tile(run_id, select(2, image_id=target, verdict=1 - oracle))
    assert rows(studio, run_id)[target]["person_verdict"] == 1 - oracle
    assert "Reviewed <b>1/12</b>" in view["counters"] and "Overrides <b>1</b>" in view["counters"]
    # the grid is not re-sent: a patch carries every tile's verdicts [id, final, person, oracle, pick]
    patch = json.loads(view["patch"])
    assert patch["ack"] == 0 and [1 - oracle, 1 - oracle, oracle] in [
        t[1:4] for t in patch["tiles"] if t[0] == target
    ]
    # no verdict: a click flips the current one; no image id: the index names the tile
    handlers.select_tile(run_id, gr.SelectData(None, {"index": 2, "value": {}}))
    assert rows(studio, run_id)[target]["person_verdict"] == oracle
    handlers.undo(run_id)
    assert rows(studio, run_id)[target]["person_verdict"] == 1 - oracle
    handlers.decide(run_id, f"{target} clear")
    assert rows(studio, run_id)[target]["person_verdict"] is None
    with storage.open_db(studio.db_path) as db:
        history = [d["verdict"] for d in storage.decision_history(db, target) if d["source"] == "person"]
    assert history == [1 - oracle, oracle, 1 - oracle, None]  # append-only


def test_every_answer_acknowledges_the_pages_clicks_so_far(handlers, studio, run_id):
    """The page numbers its clicks (``nonce``); any later answer to that page -- a patch for another
    click, for undo, a full render -- says the latest one handled, so an answer the page misses (two
    answers merged into one ``watch`` call) or gets late still settles every pending tile."""
    page, other = types.SimpleNamespace(session_hash="page-1"), types.SimpleNamespace(session_hash="page-2")
    ids = tile_ids(handlers.review(run_id)["grid"])
    first = json.loads(
        handlers.select_tile(run_id, select(0, image_id=ids[0], verdict=1, nonce=1), page)["patch"]
    )
    second = json.loads(
        handlers.select_tile(run_id, select(1, image_id=ids[1], verdict=1, nonce=2), page)["patch"]
    )
    assert (first["ack"], second["ack"]) == (1, 2) and second["seq"] > first["seq"]  # seq: the order of reads
    assert [ids[1], 1, 1] in [t[:3] for t in second["tiles"]]
    undone = json.loads(handlers.undo(run_id, page)["patch"])
    assert undone["ack"] == 2 and undone["seq"] > second["seq"]  # cumulative: undo's answer covers click 2
    assert json.loads(handlers.undo(run_id, other)["patch"])["ack"] == 0  # another page's clicks are its own
    # a full render (the poll, a reload) carries the same state, read in the same order
    html = handlers.review(run_id, request=page)["grid"]
    state = json.loads(re.search(r'data-state="([^"]*)"', html).group(1).replace("&quot;", '"'))
    assert state["ack"] == 2 and state["seq"] > undone["seq"] and len(state["tiles"]) == 12
    assert [t[2] for t in state["tiles"] if t[0] in ids[:2]] == [None, None]
    # a refused click is acknowledged too: the next answer shows SQLite's truth for it
    with pytest.warns(UserWarning):
        handlers.select_tile(run_id, gr.SelectData(None, {"index": 99, "value": {"nonce": 3}}), page)
    assert json.loads(handlers.mark_below(run_id, -2.0, page)["patch"])["ack"] == 3  # marks nothing
    assert all(r["person_verdict"] is None for r in rows(studio, run_id).values())


def test_a_bad_click_warns_and_rerenders_from_sqlite(handlers, run_id):
    with pytest.warns(UserWarning, match="no image at position 99"):
        view = handlers.select_tile(run_id, gr.SelectData(None, {"index": 99, "value": None}))
    assert len(tile_ids(view["grid"])) == 12
    with pytest.raises(
        gr.Error, match="expected '&lt;image_id&gt; &lt;verdict&gt;'"
    ):  # escaped: shown as text
        handlers.decide(run_id, "overfit")


def test_preview_follows_each_verdict_and_the_mode(handlers, studio, run_id):
    images = sorted(rows(studio, run_id).values(), key=lambda im: (im["anchor_index"], im["slot"]))
    # open two anchors (k = 2) by overriding one image in each: the preview then picks 2 images
    for im in (images[0], images[3]):
        handlers.select_tile(run_id, select(0, image_id=im["id"], verdict=1 - im["oracle_verdict"]))
    view = handlers.review(run_id)
    assert 'data-picks="2"' in view["preview"]
    assert (
        len(re.findall(r'class="gal-tile[^"]* pick"', view["grid"])) == 2
    )  # ★ on the tiles commit would add
    assert "2</b> mixed" in view["counters"]
    human = handlers.set_mode(run_id, "human")
    assert "mode <b>human</b>" in human["preview"] and studio.round_mode(run_id) == "human"
    handlers.set_mode(run_id, "auto")


def test_bulk_actions(handlers, studio, run_id):
    before = rows(studio, run_id)
    view = handlers.mark_below(run_id, -2.0)  # nothing is that dissimilar
    assert rows(studio, run_id) == before and len(json.loads(view["patch"])["tiles"]) == 12
    with pytest.raises(gr.Error, match="enter a similarity threshold"):
        handlers.mark_below(run_id, None)
    handlers.accept_oracle(run_id)
    after = rows(studio, run_id)
    assert all(im["person_verdict"] is not None for im in after.values())
    assert all(
        after[i]["person_verdict"] == before[i]["person_verdict"]
        for i in before
        if before[i]["person_verdict"] is not None
    )  # overrides survive


def test_bulk_actions_touch_only_unjudged_images_and_undo_as_one_step(handlers, studio, run_id):
    """Issue 16.1: a bulk action never overwrites the person's own verdicts unless asked; every action
    (a click, a key, a bulk action) is one undo step; redo re-applies it; history stays append-only."""
    start = {i: (im["person_verdict"], im["person_seen"]) for i, im in rows(studio, run_id).items()}
    assert all(v is not None for v, _ in start.values())  # test_bulk_actions accepted the oracle on all 12
    assert handlers.studio.mark_below(run_id, 1.1) == 0  # everything is judged: nothing to mark
    cleared = sorted(start)[:3]
    studio.decide_many(run_id, dict.fromkeys(cleared, None), label="clear three")
    handlers.mark_below(run_id, 1.1)  # every sim is < 1.1: only the 3 unjudged images change
    after = rows(studio, run_id)
    assert all(after[i]["person_verdict"] == start[i][0] for i in start if i not in cleared)  # yours kept
    assert all(after[i]["person_verdict"] == 1 for i in cleared)
    patch = json.loads(handlers.undo(run_id)["patch"])  # ONE undo restores all three
    assert all(rows(studio, run_id)[i]["person_verdict"] is None for i in cleared)
    assert [t[2] for t in patch["tiles"] if t[0] in cleared] == [None, None, None]
    handlers.redo(run_id)  # U: the whole action again
    assert all(rows(studio, run_id)[i]["person_verdict"] == 1 for i in cleared)
    handlers.undo(run_id)
    # "also overwrite mine": every image under the threshold, the person's too; one undo takes it all back
    handlers.mark_below(run_id, 1.1, overwrite=True)
    assert all(im["person_verdict"] == 1 for im in rows(studio, run_id).values())
    handlers.undo(run_id)
    handlers.undo(run_id)  # the clearing
    assert {i: (im["person_verdict"], im["person_seen"]) for i, im in rows(studio, run_id).items()} == start
    with storage.open_db(studio.db_path) as db:
        history = [d for d in storage.decision_history(db, cleared[0]) if d["source"] == "person"]
        _, redo_stack = storage.verdicts.action_stacks(db, run_id, 1)
    assert redo_stack and redo_stack[-1]["label"] == "clear three"  # what U would redo now
    last = history[-1]  # appended, never rewritten: the undo row names the row it undid
    assert last["note"] == f"undo:{last['undoes']}" and last["undoes"] in {d["id"] for d in history[:-1]}
    assert last["action_id"] is not None
    assert studio.review_state(run_id)["redo"] == "clear three"


def test_a_new_action_clears_redo_and_accept_oracle_keeps_your_overrides(handlers, studio, run_id):
    start = {i: im["person_verdict"] for i, im in rows(studio, run_id).items()}
    target = sorted(start)[0]
    oracle = rows(studio, run_id)[target]["oracle_verdict"]
    handlers.select_tile(run_id, select(0, image_id=target, verdict=1 - oracle))  # an override
    other = sorted(start)[1]
    handlers.select_tile(run_id, select(1, image_id=other, verdict=None))  # cleared: unjudged again
    handlers.accept_oracle(run_id)  # only the unjudged one
    now = rows(studio, run_id)
    assert now[target]["person_verdict"] == 1 - oracle  # the override survives
    assert now[other]["person_verdict"] == now[other]["oracle_verdict"]
    handlers.undo(run_id)
    assert rows(studio, run_id)[other]["person_verdict"] is None
    handlers.select_tile(run_id, select(1, image_id=other, verdict=1))  # a new action: nothing to redo now
    assert studio.review_state(run_id)["redo"] is None
    handlers.accept_oracle(run_id, overwrite=True)  # also mine: every image back to the oracle's verdict
    assert all(im["person_verdict"] == im["oracle_verdict"] for im in rows(studio, run_id).values())
    handlers.undo(run_id)
    handlers.undo(run_id)
    handlers.undo(run_id)
    handlers.undo(run_id)
    assert {i: im["person_verdict"] for i, im in rows(studio, run_id).items()} == start


def test_keys_sent_together_are_still_one_undo_step_each(handlers, studio, run_id):
    """Keys pressed while an answer is on its way go in one event (the page's outbox); each stays its own
    action, and the answer acknowledges the last one."""
    page = types.SimpleNamespace(session_hash="batch-page")
    a, b = sorted(rows(studio, run_id))[6:8]
    before = {i: rows(studio, run_id)[i]["person_verdict"] for i in (a, b)}
    view = handlers.select_tile(run_id, select(0, batch=[[a, 1, 41], [b, 0, 42], [a, 0, 43]]), page)
    assert json.loads(view["patch"])["ack"] == 43
    assert (rows(studio, run_id)[a]["person_verdict"], rows(studio, run_id)[b]["person_verdict"]) == (0, 0)
    handlers.undo(run_id)  # the last key only
    assert (rows(studio, run_id)[a]["person_verdict"], rows(studio, run_id)[b]["person_verdict"]) == (1, 0)
    handlers.undo(run_id)
    handlers.undo(run_id)
    assert {i: rows(studio, run_id)[i]["person_verdict"] for i in (a, b)} == before
    with pytest.warns(UserWarning, match="1 verdict not recorded"):
        bad = handlers.select_tile(run_id, select(0, batch=[[99999, 1, 44]]), page)
    assert "patch" not in bad and "gal-tile" in bad["grid"]  # a full re-read from SQLite


def test_skip_is_seen_no_opinion_and_counts_as_reviewed(handlers, studio, run_id):
    target = sorted(rows(studio, run_id))[5]
    studio.decide(run_id, target, None)
    before = studio.review_state(run_id)["counters"]["reviewed"]
    view = handlers.select_tile(run_id, select(5, image_id=target, verdict=2))  # key s
    row = rows(studio, run_id)[target]
    assert (
        row["person_verdict"] is None and row["person_seen"] and row["final_verdict"] == row["oracle_verdict"]
    )
    state = studio.review_state(run_id)
    assert state["counters"]["reviewed"] == before + 1 and state["counters"]["skipped"] >= 1
    assert [t[5] for t in json.loads(view["patch"])["tiles"] if t[0] == target] == [1]
    assert "Skipped <b>" in view["counters"]
    assert 'class="gal-tile' in handlers.review(run_id)["grid"] and "seen" in handlers.review(run_id)["grid"]
    from gal.review import SKIP, parse_verdict

    assert parse_verdict("s") == SKIP == parse_verdict("skip") and parse_verdict(2) == SKIP
    handlers.undo(run_id)
    assert not rows(studio, run_id)[target]["person_seen"]
    handlers.undo(run_id)  # the clear


def test_anchors_order_by_omega_index_or_beta_and_filters(handlers, studio, run_id):
    state = studio.review_state(run_id)
    anchors = state["anchors"]
    by_omega = render.ordered_anchors(anchors, "omega")
    omegas = [a.get("uncertainty") or 0 for a in by_omega if a["in_pool"]]
    assert omegas == sorted(omegas, reverse=True)
    assert [a["anchor_index"] for a in render.ordered_anchors(anchors, "index")] == sorted(
        a["anchor_index"] for a in anchors
    )
    betas = [a.get("overfit_rate") or 0 for a in render.ordered_anchors(anchors, "beta") if a["in_pool"]]
    assert betas == sorted(betas, reverse=True)
    html = handlers.review(run_id)["grid"]  # the grid renders in Ω order, most mixed first
    shown = [int(x) for x in re.findall(r'<section class="gal-anchor[^"]*" data-anchor="(\d+)"', html)]
    assert shown == [a["anchor_index"] for a in by_omega]
    with pytest.raises(ValueError, match="order must be one of"):
        render.ordered_anchors(anchors, "size")
    images = [(im, a) for a in anchors for im in a["images"]]
    target = images[0][0]
    studio.decide(run_id, target["id"], 1 - target["oracle_verdict"])
    state = studio.review_state(run_id)
    images = [(im, a) for a in state["anchors"] for im in a["images"]]
    overrides = [im["id"] for im, a in images if render.visible(im, a, {"overrides"})]
    assert target["id"] in overrides and all(
        im["person_verdict"] != im["oracle_verdict"] for im, a in images if im["id"] in overrides
    )
    unreviewed = {im["id"] for im, a in images if render.visible(im, a, {"unreviewed"})}
    assert target["id"] not in unreviewed
    assert all(im["oracle_verdict"] == 1 for im, a in images if render.visible(im, a, {"oracle-overfit"}))
    assert all((a.get("uncertainty") or 0) > 0 for im, a in images if render.visible(im, a, {"mixed"}))
    with pytest.raises(ValueError, match="unknown filter"):
        render.visible(images[0][0], images[0][1], {"pretty"})
    handlers.undo(run_id)


def test_messages_are_text_never_html(handlers, demo_form):
    """Issue 16.3: '<sks>' in a toast was read as a tag and cut the message."""
    files, table, form = demo_form
    bad = [[r[0], "a star on stairs", r[2]] for r in table]  # no token
    with pytest.raises(gr.Error) as err:
        handlers.start_run(files, bad, *form_values(form))
    assert "&lt;sks&gt;" in err.value.message and "<sks>" not in err.value.message
    from ui.common import text

    assert text("a <b>&") == "a &lt;b&gt;&amp;"
    with pytest.warns(UserWarning, match="&lt;sks&gt;"):
        handlers.check_field(*form_values({**form, "subject_phrase": "a cat"}))


def test_setup_validates_images_and_prompts_as_you_type(handlers, demo_form):
    """Issue 16.2: "✓ Ready" only when Start would start: images, one prompt each, each with the token."""
    files, table, form = demo_form
    ready = handlers.validate_setup(files, table, *form_values(form))
    assert "✓ Ready: 4 reference images" in ready
    none = handlers.validate_setup(None, None, *form_values(form))
    assert "✗" in none and "no reference images" in none and "Ready" not in none
    empty = [[r[0], "", r[2]] for r in table]
    assert "image 1 (" in handlers.validate_setup(files, empty, *form_values(form))
    assert "has no prompt" in handlers.validate_setup(files, empty, *form_values(form))
    tokenless = [[r[0], "a star on stairs", r[2]] for r in table]
    message = handlers.validate_setup(files, tokenless, *form_values(form))
    assert "lacks the SoI token &lt;sks&gt;" in message and "a &lt;sks&gt; cat" in message
    both = handlers.validate_setup(None, None, *form_values({**form, "k": 99}))
    assert "lower k" in both and "no reference images" in both  # every problem, each with its fix


def test_presets_save_and_load_the_whole_setup(handlers, studio, demo_form):
    files, table, form = demo_form
    dropdown = handlers.save_preset("tiny star", files, table, *form_values({**form, "seed": 7}))["preset_dd"]
    assert dropdown.value == "tiny star" and "tiny star" in [c[0] for c in dropdown.choices]
    saved = json.loads((studio.runs_root / "presets" / "tiny star.json").read_text())
    assert saved["form"]["seed"] == 7 and len(saved["images"]) == 4
    loaded = filled(handlers.load_preset("tiny star"))
    assert loaded["seed"] == 7 and loaded["m"] == form["m"] and len(loaded["files"]) == 4
    assert all(Path(f).is_file() and "presets" in f for f in loaded["files"])
    # the same file names: the table's rows are keyed by them (renamed copies lost every prompt on load)
    assert [Path(f).name for f in loaded["files"]] == [Path(f).name for f in files]
    assert [r[1] for r in loaded["table"]] == [r[1] for r in table] and "✓ Ready" in loaded["validation"]
    assert handlers.presets()["preset_dd"].choices[0][0] == "tiny star"
    with pytest.raises(gr.Error, match="name the preset"):
        handlers.save_preset("../escape", files, table, *form_values(form))
    for name in ("..", ".", "CON"):  # issue 25.1: '..' wrote <runs>/images and could delete it
        with pytest.raises(gr.Error):
            handlers.save_preset(name, files, table, *form_values(form))
    assert not (studio.runs_root / "images").exists() and not (studio.runs_root / ".json").exists()
    with pytest.raises(gr.Error, match="no preset"):
        handlers.load_preset("missing")


def test_the_poll_patches_the_grid_when_another_tab_judged(handlers, studio, run_id):
    """Issue 16.6: a verdict from another tab (or the CLI) reaches this page at the next poll."""
    view = handlers.open(run_id)
    assert "patch" not in handlers.tick(run_id, view["seen"], view["revision"])  # nothing new: nothing sent
    target = sorted(rows(studio, run_id))[4]
    studio.decide(run_id, target, 1)  # "the other tab"
    out = handlers.tick(run_id, view["seen"], view["revision"])
    patch = json.loads(out["patch"])
    assert [t[2] for t in patch["tiles"] if t[0] == target] == [1] and out["revision"] > view["revision"]
    assert "patch" not in handlers.tick(run_id, view["seen"], out["revision"])  # sent once
    handlers.undo(run_id)


def test_controls_are_disabled_when_they_cannot_act(handlers, studio, run_id):
    view = handlers.open(run_id)
    assert view["commit_btn"]["interactive"] and view["accept_btn"]["interactive"]  # in review
    assert (
        not view["resume_btn"]["interactive"] and not view["cancel_btn"]["interactive"]
    )  # nothing to resume/cancel
    empty = handlers.empty()
    assert not empty["commit_btn"]["interactive"] and not empty["undo_btn"]["interactive"]
    asked = handlers.commit_ask(run_id, "auto")
    shown, body = asked["confirm_box"], asked["confirm_text"]
    assert shown["visible"] is True and "Commit round 1" in body and "adds 2 images" in body
    assert "round 1" in view["export_note"] or "No round is trained" not in view["export_note"]


def test_the_eta_counts_a_stages_first_chunk_and_the_loss_curve_fills():
    """Issue 16.8: a stage's first report comes after its first batch; timing from it read '~0 s left'."""
    import time

    from gal.jobs import Jobs

    jobs = Jobs()
    jobs.start("r")
    report = jobs.reporter("r", None)
    time.sleep(0.3)
    report("generate", 12, 48, round=1)  # one batch of 4 done after 0.3 s
    assert jobs.live["r"]["eta"] == pytest.approx(0.9, abs=0.25)
    for step in range(1, 6):
        report("train", step, 5, loss=1.0 / step)
    job = jobs.live["r"]
    assert [s for s, _ in job["losses"]] == [1, 2, 3, 4, 5] and any(
        "train: done" in line for line in job["log"]
    )
    svg = charts.training_chart(job["losses"], {}, 1)
    assert "<polyline" in svg and "round 1: 0.419 (smoothed)" in svg  # EMA 0.9, debiased
    assert "job started" in progress.log_html(job["log"])


def test_the_timer_rerenders_only_on_a_change(handlers, run_id):
    view = handlers.open(run_id)
    skip = handlers.tick(run_id, view["seen"])
    assert skip == {}  # nothing changed: every output left as it is
    fresh = handlers.tick(run_id, "")
    assert fresh["seen"] == view["seen"] and tile_ids(fresh["grid"])


def test_human_mode_refuses_a_commit_without_an_accepted_image(handlers, studio, run_id):
    accepted = [i for i, im in rows(studio, run_id).items() if im["person_verdict"] == 0]
    handlers.set_mode(run_id, "human")
    try:
        studio.decide_many(run_id, {i: 1 for i in accepted})
        with pytest.raises(gr.Error, match="no image is accepted"):
            handlers.commit(run_id, "human")
    finally:
        studio.decide_many(run_id, {i: 0 for i in accepted})
        handlers.set_mode(run_id, "auto")


def test_human_preview_warns_when_added_images_would_outnumber_the_references(handlers, studio, run_id):
    before = {i: im["person_verdict"] for i, im in rows(studio, run_id).items()}
    handlers.set_mode(run_id, "human")
    try:
        studio.decide_many(run_id, dict.fromkeys(before, 0))  # accept all 12 images: 4 references vs 12 added
        preview = handlers.review(run_id)["preview"]
        assert 'data-picks="12"' in preview and "would fill only 25% of the next round" in preview
        first = min(before)
        studio.decide_many(run_id, {i: int(i != first) for i in before})  # accept one: no warning
        preview = handlers.review(run_id)["preview"]
        assert 'data-picks="1"' in preview and "would fill only" not in preview
        state = studio.review_state(run_id)
        many = [{"anchor_index": 0, "slot": i, "image_id": -1 - i} for i in range(12)]
        assert "would fill only" in selection.dilution_note(state, 12)
        auto = selection.preview_html(
            {
                "mode": "auto",
                "strategy": "uncertainty+balance",
                "openness": 0.001,
                "weight": 0.001,
                "round": 1,
                "picks": many,
            },
            state,
        )
        assert 'data-picks="12"' in auto and "would fill only" not in auto  # auto adds k a round by design
    finally:
        studio.decide_many(run_id, before)
        handlers.set_mode(run_id, "auto")


def test_human_preview_counts_the_anchors_leaving_the_pool_and_warns_when_the_run_ends(
    handlers, studio, run_id
):
    """Issue 26.6: accepting images in every anchor empties the pool (the run ends after the next round);
    leaving fewer than k anchors lets Eq. 10 end it; the confirm says so; the last commit says finish."""
    before = {i: im["person_verdict"] for i, im in rows(studio, run_id).items()}
    by_anchor: dict[int, list[int]] = {}
    for i, im in rows(studio, run_id).items():
        by_anchor.setdefault(im["anchor_index"], []).append(i)
    anchors = sorted(by_anchor)
    assert len(anchors) == 4
    handlers.set_mode(run_id, "human")
    try:
        studio.decide_many(run_id, dict.fromkeys(before, 0))  # accept everything: all 4 anchors leave
        view = handlers.review(run_id)
        assert 'data-leaving="4"' in view["preview"] and 'data-ends="1"' in view["preview"]
        assert "4 anchors leave the pool (0 of 4 stay)" in view["preview"]
        assert "No anchor is left: round 2 trains, draws nothing, and the run finishes" in view["preview"]
        asked = handlers.commit_ask(run_id, "human")
        assert (
            "4 anchors leave the pool" in asked["confirm_text"]
            and "No anchor is left" in asked["confirm_text"]
        )
        # images accepted in 3 anchors: 1 stays, fewer than k = 2, so Eq. 10 ends an auto round 2
        studio.decide_many(run_id, {i: int(studio_anchor == anchors[0]) for studio_anchor in anchors
                                    for i in by_anchor[studio_anchor]})  # fmt: skip
        preview = handlers.review(run_id)["preview"]
        assert 'data-leaving="3"' in preview and "Eq. 10 ends the run at round 2" in preview
        # one anchor: 3 stay, said plainly, no warning
        studio.decide_many(run_id, {i: int(a != anchors[0]) for a in anchors for i in by_anchor[a]})
        view = handlers.review(run_id)
        assert (
            "1 anchor leaves the pool (3 of 4 stay)" in view["preview"] and 'data-ends="0"' in view["preview"]
        )
        assert view["commit_btn"]["value"] == selection.COMMIT_NEXT
        assert handlers.commit_ask(run_id, "human")["confirm_yes"]["value"] == "Yes, commit and train"
    finally:
        studio.decide_many(run_id, before)
        handlers.set_mode(run_id, "auto")
    state = studio.review_state(run_id)
    last = {"mode": "auto", "strategy": "s", "openness": 0.0, "weight": 0.0, "round": 1, "picks": [],
            "last_round": True, "stop": False}  # fmt: skip
    assert selection.commit_label(last, state) == selection.COMMIT_FINISH == "Commit and finish"
    stop = {**last, "last_round": False, "stop": True}
    assert selection.commit_label(stop, state) == selection.COMMIT_FINISH


def test_commit_trains_round_two_in_the_worker(handlers, studio, run_id):
    view = handlers.commit(run_id, "auto")
    assert view["run_id"] == run_id
    assert handlers.worker.wait_idle(120) and not handlers.worker.errors
    with storage.open_db(studio.db_path) as db:
        assert len(storage.list_selections(db, run_id, 1)) == 2
        assert storage.get_run(db, run_id)["current_round"] == 2
    round2 = handlers.tick(run_id, view["seen"])
    assert 'data-round="2"' in round2["grid"] and "Round <b>2</b>" in round2["counters"]
    assert "out of the pool" in round2["grid"]  # the two picked anchors left the pool
    with pytest.raises(gr.Error, match="awaits your review"):
        handlers.resume(run_id)


def test_the_grid_carries_the_judges_disagreement_order(handlers, studio, run_id):
    """Issue 27: the review can order by disagreement (``Studio.review_queue``): each tile carries its place
    in that queue and whether the judges disagreed, each anchor its first place (the page sorts by it)."""
    assert handlers.worker.wait_idle(180)  # an earlier test may have committed: the round in review now
    r = studio.snapshot(run_id)[0]["current_round"]
    grid = handlers.review(run_id)["grid"]
    queue = studio.review_queue(run_id, r, order="disagreement")
    assert queue
    for rank, im in enumerate(queue):
        tile = re.search(rf'<button[^>]*data-id="{im["id"]}"[^>]*>', grid).group(0)
        assert f'data-rank="{rank}"' in tile
        assert f'data-disagree="{1 if im.get("disagree") else 0}"' in tile
    first = {}
    for rank, im in enumerate(queue):
        first.setdefault(im["anchor_index"], rank)
    for a, rank in first.items():
        assert re.search(rf'data-anchor="{a}" data-pool="1" data-disrank="{rank}"', grid)
    disagree = studio.review_queue(run_id, r, order="disagreement", disagree_only=True)
    assert grid.count('data-disagree="1"') == len(disagree)


def test_history_shows_how_often_the_person_agreed_with_each_judge(handlers, studio, run_id):
    """Issue 27: History shows per-judge agreement with the person (``Studio.judge_agreement``)."""
    assert handlers.worker.wait_idle(180)  # an earlier test may have committed: the round in review now
    r = studio.snapshot(run_id)[0]["current_round"]
    before = {i: im["person_verdict"] for i, im in rows(studio, run_id, r).items()}
    ims = sorted(rows(studio, run_id, r).values(), key=lambda im: im["id"])[:3]
    try:
        # agree with the judge on two images, overrule it on one
        verdicts = {im["id"]: im["oracle_verdict"] for im in ims[:2]}
        verdicts[ims[2]["id"]] = 1 - ims[2]["oracle_verdict"]
        studio.decide_many(run_id, verdicts)
        found = studio.judge_agreement(run_id)
        assert found and all(r["judged"] >= 3 for r in found)
        page = handlers.history(run_id)["agreement"]
        assert f'data-judges="{len(found)}"' in page
        for r in found:
            assert f'data-judge="{html.escape(r["judge"])}"' in page and f"{r['rate']:.0%}" in page
    finally:
        studio.decide_many(run_id, before)
    assert 'data-judges="0"' in handlers.history(None)["agreement"]


def test_history_shows_metrics_references_and_one_anchor_across_rounds(handlers, run_id):
    h = handlers.history(run_id)
    assert (
        list(h["txt_plot"]["round"]) == ["1", "2"] and len(h["ovf_plot"]) == 2 and len(h["delta_plot"]) == 1
    )
    assert len(h["references"]) == 6 and sum("round 1" in caption for _, caption in h["references"]) == 2
    assert "round 1" in h["compare"] and "round 2" in h["compare"] and "seed" in h["compare"]
    # issue 16.10: Compare opens on the anchor the last commit picked
    # (its round-1 images, then out of the pool)
    with storage.open_db(handlers.studio.db_path) as db:
        picked = storage.list_selections(db, run_id)[-1]["anchor_index"]
    assert h["anchor"].value == picked
    assert h["compare"].count("<img") == 3 and "out of the pool" in h["compare"]
    in_pool = handlers.history(
        run_id, anchor=next(c[1] for c in h["anchor"].choices if c[1] != picked and "out" not in c[0])
    )
    page = handlers.history_page(run_id)
    assert (
        page["txt_plot"].y_lim[0] < h["txt_plot"]["value"].min() < page["txt_plot"].y_lim[1]
    )  # readable at one point too
    assert in_pool["compare"].count("<img") in (3, 6)


def test_the_mode_shows_in_the_header_and_runs_table_and_reaches_other_tabs(handlers, studio, run_id):
    """Issue 26.8: the header and the Runs table say the round's real mode (not the auto strategy in Human
    mode); another page's poll sees a mode change (its key changes) and shows it."""
    before = handlers.open(run_id)
    assert 'data-mode="auto"' in before["header"] and "human" not in before["header"]
    try:
        changed = handlers.set_mode(run_id, "human")
        assert 'data-mode="human"' in changed["header"] and "uncertainty" not in changed["header"]
        assert changed["order"] == "disagreement"  # human mode: the judges' disagreements first
        assert changed["seen"] != before["seen"]
        other = handlers.tick(run_id, before["seen"])  # a second tab, opened before the change
        assert other["mode"] == "human" and 'data-mode="human"' in other["header"]
        row = next(r for r in handlers.runs()["runs_table"] if r[0] == run_id)
        assert row[5:7] == ["human", "human"]
    finally:
        assert "order" not in handlers.set_mode(run_id, "auto")  # the person's order stays
    row = next(r for r in handlers.runs()["runs_table"] if r[0] == run_id)
    assert row[5] == "auto" and row[6] == studio.snapshot(run_id)[0]["config"]["gal"]["strategy"]


def test_runs_list_opens_a_run_by_click_and_by_url(handlers, run_id):
    listed = handlers.runs()
    table = listed["runs_table"]
    assert listed["run_dd"].value == table[0][0]
    assert table[0][0] == run_id and table[0][3] == "awaiting_review"
    opened = handlers.run_selected(
        gr.SelectData(None, {"index": [0, 1], "value": table[0][1], "row_value": table[0]})
    )
    assert opened["run_id"] == run_id
    by_url = handlers.load(types.SimpleNamespace(query_params={"run": run_id}))
    assert by_url["run_id"] == run_id and tile_ids(by_url["grid"]) == tile_ids(opened["grid"])
    with pytest.warns(UserWarning, match="could not open run"):
        assert handlers.load(types.SimpleNamespace(query_params={"run": "nope"}))["run_id"] is None


def test_export_writes_the_run_folder_and_a_zip(handlers, studio, run_id):
    out = handlers.export(run_id, ["diffusers", "dataset", "card"], False)
    folder = studio.run_dir(run_id) / "export"
    assert (folder / "README.md").is_file() and (folder / "dataset" / "metadata.jsonl").is_file()
    assert {"README.md", "dataset/metadata.jsonl"} <= set(zipfile.ZipFile(out["export_file"]).namelist())
    with pytest.raises(gr.Error, match="tick 'Replace the previous export'"):
        handlers.export(run_id, ["card"], False)
    handlers.export(run_id, ["card"], True)
    assert not (folder / "dataset").exists()
    with pytest.raises(gr.Error, match="choose at least one format"):
        handlers.export(run_id, [], True)


def test_export_is_off_with_its_reason_while_the_worker_is_busy_and_the_last_zip_comes_back(
    handlers, studio, run_id, monkeypatch
):
    """Issue 26.5: while the worker trains, Export is disabled and says why (it was offered, then refused);
    revisiting the tab (or reloading the page) shows the last export's zip again."""
    handlers.export(run_id, ["card"], True)
    archive = studio.run_dir(run_id) / f"{run_id}-export.zip"
    assert archive.is_file()
    again = handlers.export_view(run_id)  # the tab revisited
    assert again["export_file"] == str(archive) and "The last export" in again["export_summary"]
    assert again["export_btn"]["interactive"] is True
    assert handlers.open(run_id)["export_file"] == str(archive)  # a reload opens the run with it
    monkeypatch.setattr(handlers.worker, "busy_with", lambda: "someone-else")
    busy = handlers.export_view(run_id)
    assert busy["export_btn"]["interactive"] is False
    assert "Export is off now: the model worker is busy with run someone-else" in busy["export_note"]
    assert handlers.open(run_id)["export_btn"]["interactive"] is False
    assert handlers.tick(run_id, "")["export_btn"]["interactive"] is False
    with pytest.raises(gr.Error, match="busy with run someone-else"):
        handlers.export(run_id, ["card"], True)
    assert handlers.empty()["export_btn"]["interactive"] is False  # no run: nothing to export


def test_progress_shows_the_stage_and_eta_and_cancel_keeps_the_run(handlers, studio, demo_form, capsys):
    files, table, form = demo_form
    view = handlers.start_run(files, table, *form_values({**form, "train_steps": 100_000, "name": "long"}))
    run_b = view["run_id"]
    try:

        def training():
            progress = handlers.tick(run_b, "")["progress"]
            return "Training the LoRA" in progress and " left" in progress and progress

        progress = wait_for(training, 60, "a training progress line with an ETA")
        assert re.search(r"\d+/100000 \(\d+%\)", progress)
        # a second run waits: one message (the progress line, naming the run it waits for), no toast and
        # no "is training" in its grid (issue 26.7)
        capsys.readouterr()
        waiting = handlers.start_run(files, table, *form_values({**form, "name": "second"}))
        run_c = waiting["run_id"]
        assert handlers.worker.state(run_c) == "queued"
        assert "trains now" not in capsys.readouterr().out  # gr.Info prints outside a request: no toast
        said = [waiting[k] for k in ("progress", "progress_mini", "grid")]
        assert [("waits" in text) for text in said] == [True, True, False]
        assert f"finishes run {run_b} first" in waiting["progress"] and "is training" not in waiting["grid"]
        handlers.cancel(run_c)
    finally:
        handlers.cancel(run_b)
        assert handlers.worker.wait_idle(60)
    assert "cancelled" in handlers.worker.errors[run_b]
    with storage.open_db(studio.db_path) as db:
        assert storage.get_run(db, run_b)["status"] == "cancelled"
    assert "Continue" in handlers.open(run_b)["progress"]


def wait_for(check, timeout: float, what: str):
    import time

    end = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


# -- the app: flags, launch, gradio_client -------------------------------------------------------------


def test_user_mistakes_are_one_log_line_not_a_traceback(handlers, demo_form, caplog):
    """Issue 26.11: a ValueError becomes gr.Error with print_exception off (Gradio prints no traceback for
    it) and one log line; Gradio's share hint names our --share flag."""
    import io
    import logging

    files, table, form = demo_form
    with caplog.at_level(logging.WARNING, logger="gal_studio"), pytest.raises(gr.Error) as caught:
        handlers.start_run(files, table, *form_values({**form, "k": 30}))
    assert caught.value.print_exception is False
    lines = [r.getMessage() for r in caplog.records if r.name == "gal_studio"]
    assert len(lines) == 1 and "user error (start_run)" in lines[0] and "lower k" in lines[0]
    assert "\n" not in lines[0] and not caplog.records[-1].exc_info
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gal_studio"), pytest.raises(gr.Error) as caught:
        handlers.export(None, ["card"], False)  # the handler's own gr.Error: logged once too
    assert caught.value.print_exception is False and len(caplog.records) == 1
    out = io.StringIO()
    app._OurFlags(out).write("* To create a public link, set `share=True` in `launch()`.\n")
    assert out.getvalue() == "* To create a public link, restart with --share (gal app --share).\n"


def test_app_flags_refuse_bad_values(tmp_path, capsys):
    assert app.main(["--runs-dir", str(tmp_path), "--auth", "nopassword"]) == 2
    assert "--auth must be USER:PASS" in capsys.readouterr().err
    assert app.main(["--runs-dir", str(tmp_path), "--model", str(tmp_path / "missing")]) == 2
    assert "not a diffusers pipeline" in capsys.readouterr().err
    args = app.build_parser().parse_args([])
    assert (args.host, args.port, args.share, args.auth) == ("127.0.0.1", 7860, False, None)
    from gal_studio.console import main as gal_main

    # `gal app` hands every flag over to app.main (with or without a `--` separator)
    assert gal_main(["app", "--runs-dir", str(tmp_path), "--auth", ":"]) == 2
    assert gal_main(["app", "--", "--runs-dir", str(tmp_path), "--auth", ":"]) == 2
    assert gal_main(["--runs-dir", str(tmp_path), "app", "--auth", ":"]) == 2  # global options may come first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_launched_app_through_gradio_client(studio, run_id):
    from gradio_client import Client

    port = free_port()
    args = app.build_parser().parse_args(
        ["--runs-dir", str(studio.runs_root), "--model", "tiny", "--oracle", "tiny", "--port", str(port)]
    )
    _, demo, kwargs = app.create_app(args)
    assert kwargs["allowed_paths"] == [str(studio.runs_root)] and kwargs["server_name"] == "127.0.0.1"
    demo.queue()
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(run_id, api_name="/open_run")
        target = tile_ids(handlers_grid(studio, run_id))[0]
        # the round under review, whichever tests ran before
        r = studio.review_state(run_id)["round"]["round_index"]
        _, counters, _, patch = client.predict(f"{target} overfit", api_name="/decide")
        assert rows(studio, run_id, r)[target]["person_verdict"] == 1
        assert [target, 1, 1] in [t[:3] for t in json.loads(patch)["tiles"]] and "Reviewed <b>1/" in counters
        client.predict(api_name="/undo")
        assert rows(studio, run_id, r)[target]["person_verdict"] is None
        runs, _ = client.predict(api_name="/runs")
        assert run_id in [row[0] for row in runs["data"]]

        base = f"http://127.0.0.1:{port}/gradio_api/file="
        image = next(iter(rows(studio, run_id, r).values()))["file"]
        with urllib.request.urlopen(base + str(studio.run_dir(run_id) / image)) as served:
            assert served.status == 200  # run folders are served
        for refused in (studio.db_path, ROOT / "pyproject.toml"):  # the database and anything else are not
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + str(refused))
            assert err.value.code == 403
    finally:
        demo.close()


def test_scripted_inputs_of_the_wrong_type_are_refused_naming_the_field(studio, run_id):
    """Issue 25.6/25.7 through the API: a bad value gets a message that names the field (never Gradio's
    "upstream app has raised an exception"), "5" alone does not clear image 5, and "yes" is not true."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    port = free_port()
    args = app.build_parser().parse_args(
        ["--runs-dir", str(studio.runs_root), "--model", "tiny", "--oracle", "tiny", "--port", str(port)]
    )
    _, demo, kwargs = app.create_app(args)
    demo.queue()
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(run_id, api_name="/open_run")
        r = studio.review_state(run_id)["round"]["round_index"]
        before = rows(studio, run_id, r)
        for bad in ("abc", "nan", None, [1]):
            with pytest.raises(AppError, match="similarity threshold"):
                client.predict(bad, False, api_name="/mark_below")
        with pytest.raises(AppError, match="overwrite must be true or false, got str 'yes'"):
            client.predict("yes", api_name="/accept_oracle")
        target = sorted(before)[0]
        studio.decide(run_id, target, 1)
        with pytest.raises(AppError, match="verdict"):
            client.predict(str(target), api_name="/decide")  # "5" alone: not "clear image 5"
        assert rows(studio, run_id, r)[target]["person_verdict"] == 1
        studio.undo(run_id)
        assert rows(studio, run_id, r) == before
        form = default_form("tiny", "tiny")
        with pytest.raises(AppError, match="reference table must be rows"):
            client.predict(None, "a table", *form_values(form), api_name="/start_run")
        with pytest.raises(AppError, match=re.escape("m (images drawn per anchor) must be a number")):
            client.predict(None, None, *form_values({**form, "m": "abc"}), api_name="/start_run")
        image = studio.run_dir(run_id) / next(iter(before.values()))["file"]  # inside the runs folder
        gallery, table = client.predict([handle_file(str(image))], None, api_name="/files_changed")
        assert len(gallery) == 1 and table["data"] == [[image.name, "", ""]]
        with pytest.raises(AppError, match="reference table must be rows"):
            client.predict([handle_file(str(image))], "a table", api_name="/files_changed")
    finally:
        demo.close()


def handlers_grid(studio, run_id) -> str:
    return Handlers(studio).review(run_id)["grid"]


def test_only_ui_and_app_import_gradio():
    for package in ("gal", "storage"):
        for path in (ROOT / package).rglob("*.py"):
            assert not re.search(r"^\s*(import|from)\s+gradio", path.read_text(), re.M), path


def test_the_model_field_names_the_family_and_fills_its_defaults(handlers, tmp_path):
    """Leaving the Model field: a full-size model's family fills its defaults; the built-in ones keep
    theirs."""
    import torch

    from gal.families import defaults
    from gal.models import load_pipeline

    current = (0, 1e-4, 8, 50, 7.5)
    out = handlers.model_changed("tiny-sdxl", *current)
    assert "Stable Diffusion XL" in out["model_family"] and set(out) == {"model_family"}  # fields kept
    folder = tmp_path / "my-flux"
    load_pipeline("tiny-flux", torch.device("cpu"), torch.float32).save_pretrained(folder)
    out = handlers.model_changed(str(folder), *current)
    d = defaults("flux")
    fields = [out[n] for n in ("resolution", "learning_rate", "rank", "gen_steps", "guidance")]
    assert "FLUX.1" in out["model_family"]
    assert (
        "24 GB: int8 base, gradient checkpointing, text encoders offloaded — applied on CUDA"
        in (out["model_family"])
    )
    assert fields == [d.resolution, d.learning_rate, d.rank, d.steps, d.guidance_scale]
    out = handlers.model_changed(str(tmp_path / "missing"), *current)
    assert "✗ Model" in out["model_family"] and "model_index.json" in out["model_family"]
    assert set(out) == {"model_family"}


def test_the_training_view_shows_the_latest_previews():
    run = {"run_id": "r", "status": "active", "current_round": 1}
    rnd = {"round_index": 1, "state": "training"}
    job = {
        "stage": "train",
        "done": 4,
        "total": 6,
        "info": {"loss": 0.5},
        "updated": 0,
        "losses": [(1, 0.9)],
        "previews": ["/runs/r/rounds/r01/previews/s000004_a00.png"],
        "log": [],
    }
    html_ = progress.progress_html(run, rnd, job, "running", None)
    assert 'class="gal-previews"' in html_ and "s000004_a00.png" in html_
    assert "gal-previews" not in progress.progress_html(run, rnd, {**job, "previews": []}, "running", None)


def test_the_header_names_a_run_once_without_a_name_and_name_plus_id_with_one(handlers, studio, run_id):
    """Issue 26.12: a run without a name showed its id twice in the header."""
    run, rnd = studio.snapshot(run_id)
    unnamed = render.header_html({**run, "name": ""}, rnd)
    assert unnamed.count(run_id) == 1
    named = render.header_html({**run, "name": "my <mug>"}, rnd)
    assert named.count(run_id) == 1 and "my &lt;mug&gt;" in named
    assert handlers.open(run_id)["header"].count(run_id) == 1


def test_export_offers_the_single_file_checkpoint_and_writes_it(handlers, studio, run_id):
    """Issue 26.12: the UI's Export tab offers the single-file checkpoint `gal export` already wrote."""
    from ui.export import export_choices

    assert "checkpoint" in [value for _, value in export_choices()]
    out = handlers.export(run_id, ["checkpoint"], True)
    names = zipfile.ZipFile(out["export_file"]).namelist()
    assert any(n.endswith(".safetensors") and "/" not in n for n in names), names
    assert "checkpoint" in out["export_summary"]


def test_one_reference_passes_with_a_hint_and_several_without(handlers, demo_form):
    """Issue 26.12: a single reference passed validation with no word about what to expect."""
    files, table, form = demo_form
    one = handlers.validate_setup(files[:1], table[:1], *form_values(form))
    assert "✓ Ready: 1 reference image " in one and "Only one reference image" in one
    assert "Only one reference image" not in handlers.validate_setup(files, table, *form_values(form))


def test_setup_says_which_run_is_open_and_can_take_its_settings(handlers, studio, run_id):
    """Issue 26.12: the Set up tab did not reflect the open run; now it names it and can copy its settings."""
    assert "No run is open" in handlers.empty()["setup_run"]
    assert handlers.empty()["setup_use_btn"]["visible"] is False
    opened = handlers.open(run_id)
    assert f'data-run="{run_id}"' in opened["setup_run"] and "new</b> run" in opened["setup_run"]
    assert opened["setup_use_btn"]["visible"] is True
    run, _ = studio.snapshot(run_id)
    form = handlers.use_run_settings(run_id)
    assert form["m"] == run["config"]["gal"]["m"] and form["train_steps"] == run["config"]["train"]["steps"]
    assert form["anchors"].splitlines() == run["config"]["anchors"]
    with pytest.raises(gr.Error, match="no run is open"):
        handlers.use_run_settings(None)


def test_the_training_view_smooths_keeps_every_round_and_never_reads_zero(handlers, run_id):
    """Issue 26.9: raw loss only, 'loss 0.000' late in a run (its minimum was 2e-5), and the curve gone once
    the round ended. Now: EMA over the faint raw loss, log axis, every finished round's curve kept."""
    late = [(s, 2e-5 + 0.5 / s**2) for s in range(1, 301)]
    svg = charts.training_chart(late, {1: [0.4, 0.3, 0.2, 0.1], 2: [0.2, 0.1, 0.05]}, 3)
    assert 'data-scale="log"' in svg and 'data-rounds="1,2,3"' in svg
    assert 'class="raw"' in svg and 'class="ema"' in svg and svg.count('class="past"') == 2
    labels = re.findall(r">([^<>]+)</text>", svg)
    assert "0.0001" in labels and "0.001" in labels and "1e-05" not in labels  # log ticks at the decades
    assert not any(re.search(r"(^|\s)0\.0+($|\s)", t) for t in labels), labels  # never a "0.000"
    assert charts.ema([1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]  # debiased: no pull towards 0 at the start
    line = progress.progress_html(
        {"run_id": "r", "status": "active", "current_round": 3}, {"state": "training"},
        {"total": 300, "done": 300, "stage": "train", "info": {"loss": 2.3e-5}, "losses": late},
        "running", None,
    )  # fmt: skip
    assert "loss 2.3e-05" in line and "loss 0.000" not in line
    done = handlers.open(run_id)["progress"]  # no job runs: every trained round's curve is still drawn
    assert re.search(r'data-rounds="1(,\d+)*"', done) and 'class="past"' in done


def test_a_cancelled_round_says_cancelled_once():
    """Issue 26.4: the progress line read "cancelled: cancelled"."""
    run = {"run_id": "r", "status": "cancelled", "current_round": 1}
    line = progress.progress_html(run, {"state": "training"}, None, None, "cancelled")
    assert line.count("cancelled") == 1 and "resume" in line
    failed = progress.progress_html(
        {**run, "status": "failed"}, {"state": "training"}, None, None, "OSError: x"
    )
    assert "<b>failed</b>: OSError: x" in failed
