"""Every event of the page, as one object: ``Handlers(studio)`` mixes in each tab's handlers.

Each tab module (``ui.setup``, ``ui.review``, ``ui.progress``, ``ui.history``, ``ui.runs``, ``ui.export``)
holds its layout, its wiring and its handlers; this module holds what they share: the Studio and the
worker, the click ledger (which page's clicks are settled), and ``open`` -- everything a page shows for
one run. Handlers return ``{name: value}`` (names: the page's component registry, ``ui.blocks``); the
tests call them directly.
"""

from __future__ import annotations

import html
import itertools
import threading
from collections import OrderedDict

import gradio as gr

from gal.engine import Studio
from ui import render
from ui.common import CONTROLS, MAX_SESSIONS, select_tab, user_errors, warn
from ui.export import ExportHandlers
from ui.history import HistoryHandlers
from ui.progress import ProgressHandlers, progress_html
from ui.review import ReviewHandlers
from ui.runs import RunsHandlers
from ui.setup import SetupHandlers
from ui.worker import Worker

# What opening a run (or none) sets: the session's run, the address, every tab's run-dependent part.
OPEN_OUTPUTS = (
    "run_id",
    "run_box",
    "header",
    "tabs",
    "grid",
    "counters",
    "preview",
    "patch",
    "mode",
    "progress",
    "progress_mini",
    "seen",
    *(f"{name}_btn" for name in CONTROLS),
    "export_note",
    "export_btn",
    "export_file",
    "export_summary",
    "revision",
    "setup_run",
    "setup_use_btn",
)


class Handlers(
    SetupHandlers, ReviewHandlers, ProgressHandlers, HistoryHandlers, RunsHandlers, ExportHandlers
):
    """Every event of the page; ``ui.blocks.build`` wires them, the tests call them directly."""

    def __init__(self, studio: Studio, worker: Worker | None = None):
        self.studio = studio
        self.worker = worker or Worker(studio)
        self._keeper = studio.keep_open()  # an idle connection: see Studio.keep_open
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

    @staticmethod
    def _remember(ledger: OrderedDict, session: str, value: int) -> None:
        """Under ``_read_lock``: the page's latest value; the oldest pages past MAX_SESSIONS are forgotten."""
        ledger[session] = value
        ledger.move_to_end(session)
        while len(ledger) > MAX_SESSIONS:
            ledger.popitem(last=False)

    def _handled(self, request: gr.Request | None, nonce) -> None:
        """Record that this page's click ``nonce`` was handled (written, or refused) before any later read."""
        session = getattr(request, "session_hash", None)
        if not session or not isinstance(nonce, int) or isinstance(nonce, bool):
            return
        with self._read_lock:
            self._remember(self._acks, session, max(self._acks.get(session, 0), nonce))

    # -- a run on the page ------------------------------------------------------------------------
    @user_errors
    def open(self, run_id: str, tab: str | None = "review") -> dict:
        """Everything a page shows for one run (after opening, creating or committing it)."""
        run, rnd = self.studio.snapshot(run_id)
        view, controls = self.review(run_id), self.controls(run, rnd)
        if "commit_btn" in view:  # the label (finish or train the next) with the control's interactive
            controls["commit_btn"] = {**controls["commit_btn"], "value": view.pop("commit_btn")["value"]}
        return {
            "run_id": run_id,
            "run_box": run_id,
            "header": render.header_html(run, rnd, self.worker.state(run_id)),
            "tabs": select_tab(tab),
            **view,
            "mode": rnd["mode"] if rnd else None,
            **self._progress(run, rnd),
            "seen": self._key(run, rnd),
            **controls,
            **self.export_view(run_id),
            "revision": self.studio.revision(run_id, rnd["round_index"]) if rnd else 0,
            **self.setup_view(run_id),
        }

    def empty(self, tab: str | None = "setup") -> dict:
        return {
            "run_id": None,
            "run_box": "",
            "header": render.header_html(None),
            "tabs": select_tab(tab),
            **self.review(None),
            "mode": None,
            "progress": progress_html(None, None, None, None, None),
            "progress_mini": "",
            "seen": "",
            **self.controls(None, None),
            **self.export_view(None),
            "revision": None,
            **self.setup_view(None),
        }

    def load(self, request: gr.Request | None = None) -> dict:
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
