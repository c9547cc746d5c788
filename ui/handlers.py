"""Thin Gradio handlers over ``gal.engine.Studio``: each reads SQLite through the Studio and returns HTML.

Handlers take plain values (the run id, field values, ``gr.SelectData``) and return tuples whose
order matches the outputs wired in ``ui.blocks``; the NamedTuples below name them for the tests.
Input errors become ``gr.Error`` (the event stops, the message names the fix); a verdict click that
cannot apply (the round left review) becomes a ``gr.Warning`` and the grid is re-read from SQLite.
"""

from __future__ import annotations

import functools
import html
import itertools
import json
import re
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd

import storage
from gal.config import load_presets
from gal.demo import demo_scenario
from gal.engine import ReferenceInput, Studio
from gal.export import DEFAULT_FORMATS
from gal.fields import (
    DEFAULT_SUBJECT,
    STRATEGY_CHOICES,  # noqa: F401  (ui.blocks)
    config_from_form,
    default_form,
    field_names,
    form_from_config,
)
from gal.review import parse_verdict
from gal.runfolder import safe_join
from ui import render
from ui.worker import Worker

FORM_FIELDS = field_names()  # the set-up form, in the order the handlers take it (gal.fields)
TABLE_HEADERS = ["image", "prompt (with the SoI token)", "non-SoI caption (what the model must NOT learn)"]
MAX_SESSIONS = 1000  # pages whose latest click nonce is remembered
RUN_HEADERS = ["run id", "name", "task", "status", "round", "strategy", "created"]


# The review controls whose ``interactive`` follows the run (in this order in ``OpenView`` and the poll).
CONTROLS = ("commit", "accept", "reject", "skip", "undo", "redo", "oracle", "below", "resume", "cancel")
PRESET_NAME = re.compile(r"^[\w .-]{1,60}$")


def text(message) -> str:
    """A message for a toast as text: Gradio renders toast messages as HTML, so ``<sks>`` vanished as an
    unknown tag; escaping < > & shows every message as typed."""
    return html.escape(str(message), quote=False)


def error(message) -> gr.Error:
    return gr.Error(text(message))


def warn(message, **kw) -> None:
    gr.Warning(text(message), **kw)


def info(message, **kw) -> None:
    gr.Info(text(message), **kw)


class ReviewView(NamedTuple):
    grid: Any  # the grid's HTML, or gr.skip() when ``patch`` carries the change
    counters: str
    preview: str
    patch: Any  # the grid's state as JSON for the page to apply, or gr.skip() after a full render


class OpenView(NamedTuple):
    run_id: Any  # gr.State
    run_box: Any  # hidden textbox mirrored into the URL (?run=...)
    header: Any
    tabs: Any
    grid: Any
    counters: Any
    preview: Any
    patch: Any
    mode: Any
    progress: Any
    progress_mini: Any
    seen: Any  # what the page last rendered, so the timer re-renders only on a change
    commit_ctl: Any = None  # the controls' interactive states (CONTROLS)
    accept_ctl: Any = None
    reject_ctl: Any = None
    skip_ctl: Any = None
    undo_ctl: Any = None
    redo_ctl: Any = None
    oracle_ctl: Any = None
    below_ctl: Any = None
    resume_ctl: Any = None
    cancel_ctl: Any = None
    export_note: Any = None  # which round Export writes
    revision: Any = None  # the round's latest decision id the page was sent (the poll patches on a change)


class HistoryView(NamedTuple):
    txt_aln: Any
    img_aln: Any
    ovf: Any
    delta: Any
    table: str
    references: list
    anchor: Any
    compare: str


class ExportView(NamedTuple):
    file: Any
    summary: str


def user_errors(handler):
    """A handler's ``ValueError`` (bad input; its message names the fix) becomes ``gr.Error``: the event
    stops and the page shows the message."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as err:
            raise error(err) from err

    return wrapper


def _rows(table) -> list[list]:
    if table is None:
        return []
    if hasattr(table, "values"):  # a pandas DataFrame
        table = table.values.tolist()
    if isinstance(table, dict):
        table = table.get("data") or []
    return [list(r) for r in table if any(str(c or "").strip() for c in r)]


def _paths(files) -> list[str]:
    if not files:
        return []
    if isinstance(files, (str, Path)):
        files = [files]
    return [str(getattr(f, "name", None) or getattr(f, "path", None) or f) for f in files]


def references_from(files, table, soi_token: str | None = None) -> list[ReferenceInput]:
    """Pair the uploaded images with the table's rows (one row per image, in order); with ``soi_token``,
    every prompt must contain it (the token is what the model learns to bind to the subject)."""
    paths, rows = _paths(files), _rows(table)
    if not paths:
        raise ValueError("no reference images: drop at least one image of the subject or style above")
    if len(rows) != len(paths):
        raise ValueError(f"the table has {len(rows)} rows for {len(paths)} images: give each image one row")
    refs = []
    for i, (path, row) in enumerate(zip(paths, rows, strict=True), 1):
        prompt = str(row[1] if len(row) > 1 and row[1] is not None else "").strip()
        non_soi = str(row[2] if len(row) > 2 and row[2] is not None else "").strip() or None
        if not prompt:
            raise ValueError(
                f"image {i} ({Path(path).name}) has no prompt: describe it, e.g. 'a <sks> cat on the stairs'"
            )
        if soi_token and soi_token not in prompt:
            raise ValueError(
                f"image {i} ({Path(path).name})'s prompt {prompt!r} lacks the SoI token {soi_token}: "
                f"write it where the subject is, e.g. 'a {soi_token} cat on the stairs'"
            )
        refs.append(ReferenceInput(path, prompt, non_soi))
    return refs


# -- the handlers ---------------------------------------------------------------------------------


class Handlers:
    """Every event of the page; ``ui.blocks.build`` wires them, the tests call them directly."""

    def __init__(self, studio: Studio, worker: Worker | None = None):
        self.studio = studio
        self.worker = worker or Worker(studio)
        # One idle connection held for the app's life: SQLite checkpoints the WAL (an fsync) whenever
        # the *last* connection closes, and every Studio call opens and closes its own. Holding this
        # one open halves a click's write time (27 -> 13 ms measured). It never runs a statement.
        self._keeper = storage.open_db(studio.db_path)
        # Every read of the grid gets the next number under one lock, so a larger number is a newer read:
        # the page keeps the newest state when a full render (the poll) and a patch (a click) cross.
        self._seq = itertools.count(1)
        self._read_lock = threading.Lock()
        # Per page (Gradio session): the latest click nonce handled, so every answer -- a patch, a
        # full render, even one for undo -- tells the page which of its clicks are settled.
        self._acks: OrderedDict[str, int] = OrderedDict()
        # Per page: the round revision its latest answer carried, so the poll does not re-send a patch
        # for the page's own verdicts (only for another tab's, or the CLI's).
        self._sent: OrderedDict[str, int] = OrderedDict()

    def _handled(self, request: gr.Request | None, nonce) -> None:
        """Record that this page's click ``nonce`` was handled (written, or refused) before any later read."""
        session = getattr(request, "session_hash", None)
        if not session or not isinstance(nonce, int) or isinstance(nonce, bool):
            return
        with self._read_lock:
            self._acks[session] = max(self._acks.get(session, 0), nonce)
            self._acks.move_to_end(session)
            while len(self._acks) > MAX_SESSIONS:
                self._acks.popitem(last=False)

    # -- reading ------------------------------------------------------------------------------
    def _snapshot(self, run_id: str) -> tuple[dict, dict | None]:
        with self.studio.db() as db:
            run = storage.get_run(db, run_id)
            rnd = storage.get_round(db, run_id, run["current_round"]) if run["current_round"] else None
        return run, rnd

    def review(
        self, run_id: str | None, patch: bool = False, request: gr.Request | None = None, nonce: int = 0
    ) -> ReviewView:
        """The review tab, read from SQLite: the full grid, or (``patch``) just its state as JSON.

        Both carry ``seq`` (the order of this read) and ``ack`` (the latest click of the asking page,
        ``request``'s session, handled before this read; at least ``nonce``), so the page can settle
        its pending tiles from any answer, whichever answers it misses or gets out of order.
        """
        if not run_id:
            return ReviewView(
                render.grid_html(None), render.counters_html(None), render.preview_html(None, None), gr.skip()
            )
        session = getattr(request, "session_hash", None)
        with self._read_lock:
            seq = next(self._seq)
            ack = max(self._acks.get(session, 0) if session else 0, nonce if isinstance(nonce, int) else 0)
            state = self.studio.review_state(run_id)
            in_review = state["round"]["state"] == "review"
            if session:
                self._sent[session] = state["revision"]
                self._sent.move_to_end(session)
                while len(self._sent) > MAX_SESSIONS:
                    self._sent.popitem(last=False)
            preview = self.studio.preview_selection(run_id) if in_review else None
        counters = render.counters_html(state, preview["mode"] if preview else None)
        if patch and in_review:
            return ReviewView(
                gr.skip(),
                counters,
                render.preview_html(preview, state),
                render.grid_patch(state, preview, seq, ack),
            )
        return ReviewView(
            render.grid_html(state, preview, seq=seq, ack=ack),
            counters,
            render.preview_html(preview, state),
            gr.skip(),
        )

    def _key(self, run: dict, rnd: dict | None) -> str:
        job = self.worker.state(run["run_id"])
        return (
            f"{run['run_id']}|{run['status']}|{run['current_round']}|"
            f"{rnd['state'] if rnd else ''}|{job or ''}"
        )

    def _progress(self, run: dict, rnd: dict | None) -> tuple[str, str]:
        run_id = run["run_id"]
        job_state = self.worker.state(run_id)
        error = self.worker.errors.get(run_id)
        job = self.studio.jobs.live.get(run_id) if job_state == "running" else None
        full = render.progress_html(run, rnd, job, job_state, error)
        if job is None:  # the last job's log stays readable after it ends
            full += render.log_html((self.studio.jobs.live.get(run_id) or {}).get("log") or [])
        mini = (
            render.progress_html(run, rnd, job, job_state, error, compact=True)
            if (job_state or error)
            else ""
        )
        return full, mini

    def controls(self, run: dict | None, rnd: dict | None) -> tuple:
        """``interactive`` of each control in CONTROLS: verdict buttons and Commit only while a round is in
        review, Continue only when the run stopped mid-round, Cancel only while a job runs or waits."""
        job = self.worker.state(run["run_id"]) if run else None
        in_review = bool(run and rnd and rnd["state"] == "review" and run["status"] == "awaiting_review")
        resumable = bool(run and run["status"] in ("active", "failed", "cancelled") and not job)
        on = {
            "commit": in_review,
            "accept": in_review,
            "reject": in_review,
            "skip": in_review,
            "undo": in_review,
            "redo": in_review,
            "oracle": in_review,
            "below": in_review,
            "resume": resumable,
            "cancel": bool(job),
        }
        return tuple(gr.update(interactive=on[name]) for name in CONTROLS)

    def export_note(self, run_id: str | None) -> str:
        """Which round's LoRA Export writes (the latest trained one), said before the person exports."""
        if not run_id:
            return render.message("No run open: open one from the Runs tab to export it.")
        rounds = self.studio.history(run_id)["rounds"]
        trained = [r for r in rounds if r.get("adapter_path")]
        if not trained:
            return render.message(
                "No round is trained yet: Export becomes possible once round 1 has trained.", "warn"
            )
        last = trained[-1]["round_index"]
        latest = rounds[-1]
        tail = (
            "" if latest["round_index"] == last else f" (round {latest['round_index']} is {latest['state']})"
        )
        return render.message(
            f"Exports <b>round {last}</b>'s LoRA — the latest trained round of "
            f"{len(rounds)}{render.esc(tail)} — "
            f"with the references and weights it trained on.",
            "ok",
        )

    @user_errors
    def open(self, run_id: str, tab: str | None = "review") -> OpenView:
        """Everything a page shows for one run (after opening, creating or committing it)."""
        run, rnd = self._snapshot(run_id)
        view = self.review(run_id)
        full, mini = self._progress(run, rnd)
        mode = rnd["mode"] if rnd else None
        return OpenView(
            run_id,
            run_id,
            render.header_html(run, rnd, self.worker.state(run_id)),
            gr.Tabs(selected=tab) if tab else gr.skip(),
            *view,
            mode,
            full,
            mini,
            self._key(run, rnd),
            *self.controls(run, rnd),
            self.export_note(run_id),
            self._revision(run_id, rnd),
        )

    def _revision(self, run_id: str, rnd: dict | None) -> int:
        if not rnd:
            return 0
        with self.studio.db() as db:
            return storage.review_revision(db, run_id, rnd["round_index"])

    def empty(self, tab: str | None = "setup") -> OpenView:
        view = self.review(None)
        return OpenView(
            None,
            "",
            render.header_html(None),
            gr.Tabs(selected=tab) if tab else gr.skip(),
            *view,
            None,
            render.progress_html(None, None, None, None, None),
            "",
            "",
            *self.controls(None, None),
            self.export_note(None),
            None,
        )

    def load(self, request: gr.Request | None = None) -> OpenView:
        """Page load: open the run named in the URL (``?run=ID``), so a refresh shows the same run."""
        run_id = None
        if request is not None:
            run_id = (request.query_params.get("run") or "").strip() or None
        if run_id:
            try:
                return self.open(run_id, tab=self._tab_for(run_id))
            except (gr.Error, ValueError) as err:
                warn(
                    f"could not open run {run_id!r} from the address: "
                    f"{html.unescape(str(getattr(err, 'message', err)))}"
                )
        return self.empty()

    def _tab_for(self, run_id: str) -> str:
        run, _ = self._snapshot(run_id)
        if run["status"] in ("failed", "cancelled") or (
            run["status"] == "active" and not self.worker.state(run_id)
        ):
            return "progress"
        return "review"

    # -- set-up -------------------------------------------------------------------------------
    def validate_form(self, *values) -> str:
        """The settings alone (no images): ✓ or the first problem with its fix."""
        try:
            config_from_form(dict(zip(FORM_FIELDS, values, strict=True)))
        except ValueError as err:
            return render.message(f"✗ {render.esc(err)}", "error")
        return render.message("✓ Ready: these settings are valid.", "ok")

    def validate_setup(self, files, table, *values) -> str:
        """What Start would say, as the person types: the settings, then the reference images and their
        prompts (each must hold the SoI token). "✓ Ready" only when Start would start."""
        form = dict(zip(FORM_FIELDS, values, strict=True))
        problems = []
        try:
            config = config_from_form(form)
        except ValueError as err:
            problems.append(str(err))
            config = None
        token = config.soi_token if config else (form.get("soi_token") or "").strip()
        try:
            refs = references_from(files, table, token or None)
        except ValueError as err:
            problems.append(f"Reference images: {err}")
            refs = None
        if problems:
            items = "".join(f"<li>{render.esc(p)}</li>" for p in problems)
            return render.message(
                f"✗ Not ready — fix {'these' if len(problems) > 1 else 'this'} first:<ul>{items}</ul>",
                "error",
            )
        return render.message(
            f"✓ Ready: {len(refs)} reference image{'s' if len(refs) != 1 else ''} with prompts, "
            f"{len(config.anchors)} anchors, settings valid.",
            "ok",
        )

    def check_field(self, *values) -> None:
        """Leaving a field with an invalid form: say why at once (a toast), besides the panel above Start."""
        try:
            config_from_form(dict(zip(FORM_FIELDS, values, strict=True)))
        except ValueError as err:
            warn(str(err), duration=6)

    # -- presets: a named set-up saved as JSON under <runs>/presets ---------------------------------
    def _preset_dir(self) -> Path:
        return self.studio.runs_root / "presets"

    def presets(self) -> Any:
        folder = self._preset_dir()
        names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        return gr.Dropdown(choices=names, value=names[-1] if names else None)

    @user_errors
    def save_preset(self, name: str, files, table, *values) -> Any:
        """Save the set-up (every field, the reference images and their prompts) as preset ``name``."""
        name = (name or "").strip()
        if not PRESET_NAME.match(name):
            raise ValueError(
                f"name the preset with letters, digits, spaces, '.', '-' or '_' (at most 60), got {name!r}"
            )
        form = dict(zip(FORM_FIELDS, values, strict=True))
        folder = self._preset_dir() / name
        images_dir = folder / "images"
        if images_dir.exists():
            shutil.rmtree(images_dir)
        images_dir.mkdir(parents=True)
        saved = []
        for i, path in enumerate(_paths(files)):
            target = images_dir / f"{i:03d}" / Path(path).name  # the name the table's rows are keyed by
            target.parent.mkdir()
            shutil.copyfile(path, target)
            saved.append(str(target.relative_to(folder)))
        data = {"version": 1, "form": form, "images": saved, "table": _rows(table)}
        (self._preset_dir() / f"{name}.json").write_text(
            json.dumps(data, indent=1, ensure_ascii=False, default=str)
        )
        info(f"saved preset {name!r} ({len(saved)} images) in {self._preset_dir()}")
        names = sorted(p.stem for p in self._preset_dir().glob("*.json"))
        return gr.Dropdown(choices=names, value=name)

    @user_errors
    def load_preset(self, name: str | None) -> tuple:
        """Fill the form, the images and their prompts from preset ``name``."""
        if not name:
            raise ValueError("choose a preset to load (save one first with 'Save as preset')")
        file = self._preset_dir() / f"{name}.json"
        if not PRESET_NAME.match(name) or not file.is_file():
            raise ValueError(f"no preset {name!r} in {self._preset_dir()}: pick one from the list")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"preset {file} is not valid JSON ({err.msg}): save it again") from None
        form = {
            **default_form(self.studio.default_model, self.studio.default_oracle),
            **(data.get("form") or {}),
        }
        folder = self._preset_dir() / name
        paths = [str(safe_join(folder, rel)) for rel in data.get("images") or []]
        paths = [p for p in paths if Path(p).is_file()]
        table = data.get("table") or []
        values = [form[n] for n in FORM_FIELDS]
        return (paths, paths, table, *values, self.validate_setup(paths, table, *values))

    def files_changed(self, files, table) -> tuple[list, list[list]]:
        """New uploads: a preview, and one table row per image (kept rows keep what was typed)."""
        paths = _paths(files)
        typed = {str(r[0]): r for r in _rows(table) if r}
        rows = []
        for p in paths:
            name = Path(p).name
            old = typed.get(name)
            rows.append(
                [name, old[1] if old and len(old) > 1 else "", old[2] if old and len(old) > 2 else ""]
            )
        return paths, rows

    def task_changed(self, task: str, subject_phrase: str) -> tuple[str, str, str]:
        """Switching object/style loads that task's paper presets (18 anchors, held-out prompts)."""
        presets = load_presets()
        subject = subject_phrase
        if not (subject_phrase or "").strip() or subject_phrase in DEFAULT_SUBJECT.values():
            subject = DEFAULT_SUBJECT[task]
        return "\n".join(presets[task]), "\n".join(presets["eval"][task]), subject

    def model_changed(self, model: str, *current) -> tuple:
        """Leaving the Model field: name the model family it is and fill that family's defaults
        (resolution, learning rate, rank, sampling steps, guidance) — for full-size models; the built-in
        tiny and toy models keep the settings they were made for. ``current``: the fields' values now."""
        from gal.families import TINY, defaults
        from gal.models import model_family

        keep = tuple(gr.skip() for _ in current)
        spec = (model or "").strip()
        if not spec:
            return (
                render.message("Model: enter tiny, toy, a hub id or a local diffusers folder", "warn"),
                *keep,
            )
        try:
            family = model_family(spec)
        except ValueError as err:
            return (render.message(f"✗ Model: {render.esc(err)}", "error"), *keep)
        if spec in TINY or spec == "toy":
            note = f"{family.label}: the built-in {render.esc(spec)} model keeps its settings"
            return (render.message(note, "ok"), *keep)
        d = defaults(family.name)
        filled = (d.resolution, d.learning_rate, d.rank, d.steps, d.guidance_scale)
        note = (
            f"{family.label}: filled its defaults — {d.resolution} px, lr {d.learning_rate:g}, "
            f"rank {d.rank}, "
            f"{d.steps} sampling steps, guidance {d.guidance_scale:g}, sampler {render.esc(d.scheduler)}"
        )
        return (render.message(note, "ok"), *filled)

    def preset_anchors(self, task: str) -> str:
        return "\n".join(load_presets()[task])

    def demo_fill(self, task: str | None = "object") -> tuple:
        """'Use the built-in demo': the toy-world scenario's images, prompts and settings in the form."""
        task = task if task in ("object", "style") else "object"
        config, refs = demo_scenario(self.studio.runs_root / "_demo", task, self.studio.default_model)
        config.oracle = self.studio.default_oracle
        form = form_from_config(config)
        paths = [str(r.path) for r in refs]
        table = [[Path(r.path).name, r.prompt, r.non_soi_text or ""] for r in refs]
        values = [form[n] for n in FORM_FIELDS]
        return (paths, paths, table, *values, self.validate_setup(paths, table, *values))

    @user_errors
    def start_run(self, files, table, *values) -> OpenView:
        form = dict(zip(FORM_FIELDS, values, strict=True))
        config = config_from_form(form)
        run_id = self.studio.create_run(config, references_from(files, table, config.soi_token))
        self.worker.submit(run_id)
        info(f"Run {run_id} started: round 1 trains now; its images appear on the Review tab.", duration=5)
        return self.open(run_id, tab="review")

    # -- review -------------------------------------------------------------------------------
    def _require(self, run_id: str | None) -> str:
        if not run_id:
            raise error("no run is open: set one up, or open one from the Runs tab")
        return run_id

    @staticmethod
    def _tiles(state: dict) -> list[dict]:
        """The grid's tiles in page order (the ``index`` a select event carries): anchors as the grid
        renders them (most mixed first), each anchor's images by slot."""
        return [
            im
            for a in render.ordered_anchors(state["anchors"])
            if a["in_pool"]
            for im in sorted(a["images"], key=lambda x: x["slot"])
        ]

    def select_tile(
        self, run_id: str | None, evt: gr.SelectData, request: gr.Request | None = None
    ) -> ReviewView:
        """A click or a key on the grid: ``value`` carries the image id and the verdict to set;
        without a verdict the image's current verdict flips (aligned ⇄ overfit). ``value.nonce``
        numbers the page's clicks: the answer (and every later one to this page) acknowledges it."""
        run_id = self._require(run_id)
        value = evt.value if isinstance(evt.value, dict) else {}
        if isinstance(value.get("batch"), list):
            return self._select_batch(run_id, value["batch"], request)
        nonce = value.get("nonce")
        nonce = nonce if isinstance(nonce, int) and not isinstance(nonce, bool) else 0
        try:
            image_id = value.get("image_id")
            verdict = value.get("verdict", "flip")
            if image_id is None or verdict == "flip":
                state = self.studio.review_state(run_id)
                tiles = self._tiles(state)
                if image_id is None:
                    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
                    if not isinstance(index, int) or not 0 <= index < len(tiles):
                        raise ValueError(f"no image at position {evt.index!r} of the grid: reload the page")
                    image_id = tiles[index]["id"]
                if verdict == "flip":
                    current = next((t for t in tiles if t["id"] == int(image_id)), None)
                    if current is None:
                        raise ValueError(
                            f"image {image_id} is not in round {state['round']['round_index']}'s grid"
                        )
                    verdict = 0 if current["final_verdict"] == 1 else 1
            self.studio.decide(run_id, int(image_id), parse_verdict(verdict))
        except ValueError as err:
            warn(str(err))
            return self.review(run_id, request=request, nonce=nonce)  # re-read everything: the page was stale
        finally:
            self._handled(request, nonce)  # written or refused: either way, the next read shows the truth
        return self.review(run_id, patch=True, request=request, nonce=nonce)

    def _select_batch(self, run_id: str, batch: list, request) -> ReviewView:
        """Keys pressed while the previous answer was on its way, sent together (``[[image_id, verdict,
        nonce], ...]``, in the order pressed): each is still its own action (one undo step each), but the
        grid is read once, and the queue never holds a hundred events (Gradio re-sends every waiting
        event's queue position after each one, which made a fast pass slower the faster it went)."""
        nonce, refused = 0, []
        try:
            for item in batch:
                if not (isinstance(item, list) and len(item) == 3):
                    refused.append(f"a malformed verdict {item!r}")
                    continue
                image_id, verdict, n = item
                if isinstance(n, int) and not isinstance(n, bool):
                    nonce = max(nonce, n)
                try:
                    self.studio.decide(run_id, int(image_id), parse_verdict(verdict))
                except (TypeError, ValueError) as err:
                    refused.append(str(err))
        finally:
            self._handled(request, nonce)
        if refused:
            warn(f"{len(refused)} verdict{'s' if len(refused) > 1 else ''} not recorded: {refused[0]}")
            return self.review(run_id, request=request, nonce=nonce)
        return self.review(run_id, patch=True, request=request, nonce=nonce)

    @user_errors
    def decide(self, run_id: str | None, action: str, request: gr.Request | None = None) -> ReviewView:
        """The scripted form of a click (``api_name="decide"``): ``"<image_id> <verdict>"``,
        verdict one of aligned/accept/0, overfit/reject/1, clear."""
        run_id = self._require(run_id)
        parts = (action or "").replace(":", " ").replace(",", " ").split()
        if not parts or not parts[0].isdigit():
            raise ValueError(f"expected '<image_id> <verdict>', got {action!r}")
        self.studio.decide(run_id, int(parts[0]), parse_verdict(parts[1] if len(parts) > 1 else ""))
        return self.review(run_id, patch=True, request=request)

    def undo(self, run_id: str | None, request: gr.Request | None = None) -> ReviewView:
        """Undo the last action — a click, a key or a whole bulk action — in one step."""
        return self._undo_redo(run_id, request, redo=False)

    def redo(self, run_id: str | None, request: gr.Request | None = None) -> ReviewView:
        """Redo the last undone action (U / shift-u)."""
        return self._undo_redo(run_id, request, redo=True)

    def _undo_redo(self, run_id, request, redo: bool) -> ReviewView:
        run_id = self._require(run_id)
        what = "redo" if redo else "undo"
        try:
            row = self.studio.redo(run_id) if redo else self.studio.undo(run_id)
            if row is None:
                info(f"nothing to {what} in this round")
            elif len(row["images"]) > 1:  # a bulk action: say how much came back (a click shows itself)
                n = len(row["images"])
                info(
                    f"{'redid' if redo else 'undid'} “{row['label'] or 'a verdict'}” "
                    f"({n} image{'s' if n != 1 else ''})",
                    duration=3,
                )
        except ValueError as err:
            warn(str(err))
            return self.review(run_id, request=request)
        return self.review(run_id, patch=True, request=request)

    @user_errors
    def accept_oracle(
        self, run_id: str | None, request: gr.Request | None = None, overwrite=False
    ) -> ReviewView:
        """Bulk: agree with the oracle on every image you have not judged (``overwrite``: on all).
        One undo step."""
        run_id = self._require(run_id)
        n = self.studio.accept_oracle(run_id, overwrite=bool(overwrite))
        whose = "" if overwrite else " you had not judged"
        info(f"you agreed with the oracle on {n} image{'s' if n != 1 else ''}{whose} — one u undoes it all")
        return self.review(run_id, patch=True, request=request)

    @user_errors
    def mark_below(
        self, run_id: str | None, threshold, request: gr.Request | None = None, overwrite=False
    ) -> ReviewView:
        """Bulk: mark overfit every image under the threshold you have not judged
        (``overwrite``: yours too)."""
        run_id = self._require(run_id)
        if threshold is None or threshold == "":
            raise ValueError("enter a similarity threshold first, e.g. 0.25")
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"the similarity threshold must be a number, got {threshold!r}") from None
        n = self.studio.mark_below(run_id, threshold, verdict=1, overwrite=bool(overwrite))
        kept = "" if overwrite else "; your own verdicts are kept"
        info(
            f"marked {n} image{'s' if n != 1 else ''} with sim(image, anchor) < {float(threshold):g} "
            f"overfit{kept} "
            "— one u undoes it all"
        )
        return self.review(run_id, patch=True, request=request)

    @user_errors
    def set_mode(self, run_id: str | None, mode: str, request: gr.Request | None = None) -> ReviewView:
        run_id = self._require(run_id)
        self.studio.set_round_mode(run_id, mode)
        return self.review(run_id, patch=True, request=request)

    @user_errors
    def commit_ask(self, run_id: str | None, mode: str | None) -> tuple:
        """Commit, step 1: say what committing adds and ask once (the confirm panel); nothing is written."""
        run_id = self._require(run_id)
        preview = self.studio.preview_selection(run_id, mode)
        if preview.get("error"):
            raise ValueError(preview["error"])
        state = self.studio.review_state(run_id)
        c = state["counters"]
        if preview.get("last_round") or preview.get("stop"):
            what = "finishes the run (nothing is added)"
        else:
            n = len(preview["picks"])
            what = (
                f"adds {n} image{'s' if n != 1 else ''} (weight {preview['weight']:.4g}) "
                "to the references and "
                f"trains round {state['round']['round_index'] + 1}"
            )
        left = c["total"] - c["reviewed"]
        unreviewed = (
            f" {left} of {c['total']} images are unreviewed: the oracle's verdicts stand for them."
            if left
            else ""
        )
        body = (
            f"<b>Commit round {state['round']['round_index']} ({render.esc(preview['mode'])} mode)?</b> "
            f"It {render.esc(what)}.{render.esc(unreviewed)} Verdicts cannot change after this."
        )
        return gr.update(visible=True), render.message(body, "warn")

    @user_errors
    def commit(self, run_id: str | None, mode: str | None) -> OpenView:
        """Select + weigh this round through the engine (one transaction, no model, so it never waits on
        another run's training), then queue the next round's training in the worker."""
        run_id = self._require(run_id)
        preview = self.studio.preview_selection(run_id, mode)
        if preview.get("error"):
            raise ValueError(preview["error"])
        run = self.studio.commit_round(run_id, mode or preview["mode"])
        if run["status"] == "finished":
            info("the run is finished: see History, and Export the result")
        else:
            busy = self.worker.busy_with()
            self.worker.submit(run_id)
            if busy and busy != run_id:
                info(f"round {run['current_round']} is queued: the model worker finishes run {busy} first")
        return self.open(run_id, tab=None)

    # -- progress -----------------------------------------------------------------------------
    TICK_OUTPUTS = (
        9 + len(CONTROLS) + 1
    )  # progress, mini, header, seen, *ReviewView, mode, *controls, revision

    def tick(self, run_id: str | None, seen: str, revision=None, request: gr.Request | None = None) -> tuple:
        """The 1 s poll: progress while a job runs; the whole page when the run's state changed; and a grid
        patch when the round's verdicts changed (``revision``: the latest decision id this page was sent),
        so a verdict given in another tab (or by ``gal decide``) shows here within the next poll."""
        skip = gr.skip()
        n = self.TICK_OUTPUTS
        if not run_id:
            return (skip,) * n
        try:
            run, rnd = self._snapshot(run_id)
            with self.studio.db() as db:
                rev = storage.review_revision(db, run_id, rnd["round_index"]) if rnd else 0
        except ValueError:
            return (skip,) * n
        key = self._key(run, rnd)
        running = self.worker.state(run_id) is not None
        if key == seen:
            out = [skip] * n
            if running:
                out[0], out[1] = self._progress(run, rnd)
            if rnd and rnd["state"] == "review" and revision is not None and rev != revision:
                session = getattr(request, "session_hash", None)
                with self._read_lock:
                    own = session is not None and self._sent.get(session) == rev
                if not own:  # another tab's (or the CLI's) verdicts: send them
                    view = self.review(run_id, patch=True, request=request)
                    out[5], out[6], out[7] = view.counters, view.preview, view.patch
                out[-1] = rev
            return tuple(out)
        full, mini = self._progress(run, rnd)
        view = self.review(run_id, request=request)
        mode = rnd["mode"] if rnd else skip
        return (
            full,
            mini,
            render.header_html(run, rnd, self.worker.state(run_id)),
            key,
            *view,
            mode,
            *self.controls(run, rnd),
            rev,
        )

    def cancel(self, run_id: str | None) -> str:
        run_id = self._require(run_id)
        what = self.worker.cancel(run_id)
        if what == "idle":
            info("no job is running for this run")
        else:
            info("cancelling: the job stops at its next step; what was saved is kept")
        run, rnd = self._snapshot(run_id)
        return self._progress(run, rnd)[0]

    def resume(self, run_id: str | None) -> OpenView:
        run_id = self._require(run_id)
        run, _ = self._snapshot(run_id)
        if run["status"] == "finished":
            raise error(f"run {run_id} is finished: nothing to continue (export it, or set up a new run)")
        if run["status"] == "awaiting_review":
            raise error(f"run {run_id} awaits your review: review the round, then commit it")
        if self.worker.state(run_id):
            raise error(
                f"run {run_id}'s job is already {self.worker.state(run_id)}: watch it here, or cancel it"
            )
        self.worker.submit(run_id)
        return self.open(run_id, tab=None)

    def continue_run(self, run_id: str | None) -> OpenView:
        """Runs tab 'Continue': open the run, and resume its job when it stopped mid-round."""
        view = self.open_run(run_id)
        if self.worker.state(run_id):
            info(
                f"run {run_id}'s job is already {self.worker.state(run_id)}: "
                "its progress is on the Progress tab"
            )
        run, _ = self._snapshot(run_id)
        if run["status"] in ("active", "failed", "cancelled") and not self.worker.state(run_id):
            self.worker.submit(run_id)
            return self.open(run_id, tab="progress")
        return view

    # -- history ------------------------------------------------------------------------------
    def history(self, run_id: str | None, anchor: int | None = None) -> HistoryView:
        empty = pd.DataFrame({"round": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
        if not run_id:
            return HistoryView(
                empty,
                empty,
                empty,
                empty,
                render.metrics_table_html([]),
                [],
                gr.Dropdown(choices=[], value=None),
                render.compare_html("", {}, []),
            )
        history = self.studio.history(run_id)
        rounds = history["rounds"]

        def series(get) -> pd.DataFrame:
            # rounds as labels, not numbers: an axis of 1, 2, 3, never 1.2
            points = [(r["round_index"], get(r)) for r in rounds]
            points = [(str(i), float(v)) for i, v in points if isinstance(v, (int, float))]
            return pd.DataFrame(points, columns=["round", "value"]) if points else empty

        run_dir = self.studio.run_dir(run_id)
        references = [
            (
                str(safe_join(run_dir, ref["file"])),
                "real reference · weight 1"
                if ref["source"] == "real"
                else f"round {ref['round_added']} · weight {ref['weight']:.4g} · {ref['prompt']}",
            )
            for ref in history["references"]
        ]
        states = {r["round_index"]: self.studio.review_state(run_id, r["round_index"]) for r in rounds}
        anchors = states[max(states)]["anchors"] if states else []
        choices = [(f"#{a['anchor_index']} {a['prompt']}", a["anchor_index"]) for a in anchors]
        with self.studio.db() as db:
            selections = storage.list_selections(db, run_id)
        recent = selections[-1]["anchor_index"] if selections else None
        if (anchor is None or anchor not in {c[1] for c in choices}) and recent in {c[1] for c in choices}:
            anchor = recent  # the anchor the last commit picked: what changed most recently
        if anchor is None or anchor not in {c[1] for c in choices}:
            # no pick yet: the first anchor drawn in the most rounds (the longest side-by-side)
            drawn = {
                a["anchor_index"]: sum(
                    1
                    for s in states.values()
                    for b in s["anchors"]
                    if b["anchor_index"] == a["anchor_index"] and b["images"]
                )
                for a in anchors
            }
            anchor = max(drawn, key=lambda i: (drawn[i], -i)) if drawn else None
        per_round = {
            r: [im for a in s["anchors"] if a["anchor_index"] == anchor for im in a["images"]]
            for r, s in states.items()
        }
        prompt = next((a["prompt"] for a in anchors if a["anchor_index"] == anchor), "")
        return HistoryView(
            series(lambda r: (r.get("metrics") or {}).get("txt_aln")),
            series(lambda r: (r.get("metrics") or {}).get("img_aln")),
            series(lambda r: (r.get("metrics") or {}).get("ovf")),
            series(lambda r: r.get("openness")),
            render.metrics_table_html(rounds),
            references,
            gr.Dropdown(choices=choices, value=anchor),
            render.compare_html(prompt, per_round, sorted(states)),
        )

    def history_page(self, run_id: str | None, anchor: int | None = None) -> tuple:
        """``history`` for the page: each plot as points with a padded y range, so one round reads as a
        dot with round ticks (a degenerate range showed an empty box ticked 1.409577)."""
        view = self.history(run_id, anchor)
        plots = [gr.ScatterPlot(value=df, y_lim=padded_range(df)) for df in view[:4]]
        return (*plots, *view[4:])

    # -- runs ---------------------------------------------------------------------------------
    def runs(self) -> tuple[list[list], Any]:
        rows = []
        for run in self.studio.list_runs():
            config = run.get("config") or {}
            rows.append(
                [
                    run["run_id"],
                    run["name"],
                    config.get("task", ""),
                    run["status"],
                    run["current_round"],
                    (config.get("gal") or {}).get("strategy", ""),
                    run["created_at"][:19].replace("T", " "),
                ]
            )
        return rows, gr.Dropdown(choices=[r[0] for r in rows], value=rows[0][0] if rows else None)

    @user_errors
    def open_run(self, run_id: str | None) -> OpenView:
        if not run_id:
            raise ValueError("choose a run first")
        return self.open(run_id, tab=self._tab_for(run_id))

    def run_selected(self, evt: gr.SelectData) -> OpenView:
        """A click on a row of the runs table opens that run."""
        row = evt.row_value or []
        run_id = row[0] if row else (evt.value if isinstance(evt.value, str) else None)
        return self.open_run(run_id)

    # -- export -------------------------------------------------------------------------------
    def export(self, run_id: str | None, formats: list[str] | None, replace: bool) -> ExportView:
        run_id = self._require(run_id)
        formats = list(formats or [])
        if not formats:
            raise error("choose at least one format to export")
        busy = self.worker.busy_with()
        if busy:
            raise error(
                f"the model worker is busy with run {busy}: export when its round is in review or finished"
            )
        run_dir = self.studio.run_dir(run_id)
        out = run_dir / "export"
        try:
            written = self.studio.export(run_id, out, tuple(formats), force=bool(replace))
        except ValueError as err:
            message = str(err).replace("pass --force to replace it", "tick 'Replace the previous export'")
            raise error(message) from err
        archive = shutil.make_archive(str(run_dir / f"{run_id}-export"), "zip", root_dir=out)
        lines = "".join(
            f"<li><b>{render.esc(k)}</b>: "
            f"{render.esc(Path(v).relative_to(run_dir) if Path(v).is_relative_to(run_dir) else v)}</li>"
            for k, v in written.items()
        )
        trained = [r for r in self.studio.history(run_id)["rounds"] if r.get("adapter_path")]
        which = f"round {trained[-1]['round_index']}'s LoRA" if trained else "the run"
        summary = render.message(
            f"Exported {which} to <code>{render.esc(out)}</code>:<ul>{lines}</ul>"
            f"Download the zip below ({Path(archive).stat().st_size / 1e6:.1f} MB).",
            "ok",
        )
        return ExportView(archive, summary)


def padded_range(df: pd.DataFrame) -> list[float] | None:
    """A y range around the values with room on both sides (a single value gets ±10 % of itself), never
    below 0 for a metric that is never negative."""
    if df is None or not len(df):
        return None
    lo, hi = float(df["value"].min()), float(df["value"].max())
    pad = max((hi - lo) * 0.15, abs(hi) * 0.1, 1e-6)
    low = lo - pad if lo < 0 else max(0.0, lo - pad)
    return [round(low, 6), round(hi + pad, 6)]


def export_choices() -> list[tuple[str, str]]:
    return [
        ("diffusers LoRA (load_lora_weights)", "diffusers"),
        ("kohya / A1111 / ComfyUI LoRA", "kohya"),
        ("fused pipeline (LoRA merged into the base model)", "fused"),
        ("dataset (references + captions + weights)", "dataset"),
        ("model card (README.md)", "card"),
    ]


DEFAULT_EXPORT = list(DEFAULT_FORMATS)
