"""The Review tab: the grid of the round's images, verdicts (clicks, keys, the scripted ``/decide``), bulk
actions, undo/redo, the mode, and Commit (asked once).

A verdict click that cannot apply (the round left review) becomes a ``gr.Warning`` and the grid is re-read
from SQLite; bad input to a scripted call becomes ``gr.Error`` naming the field.
"""

from __future__ import annotations

import gradio as gr

from gal.engine import parse_verdict
from ui import assets, render, review_tools, selection
from ui.common import error, info, user_errors, warn, wire

REVIEW = {
    "concurrency_id": "review",
    "concurrency_limit": 1,
    "trigger_mode": "multiple",
    "show_progress": "hidden",
}
REVIEW_OUTPUTS = ("grid", "counters", "preview", "patch", "commit_btn")


def layout(c: dict) -> None:
    # the sticky bar: counters, mode, Commit and the verdict buttons stay in view during a pass
    with gr.Column(elem_id="gal-sticky"):
        c["progress_mini"] = gr.HTML("", elem_id="gal-progress-mini")
        with gr.Row(equal_height=True):
            c["counters"] = gr.HTML(render.counters_html(None), elem_id="gal-counters")
            c["mode"] = gr.Radio(
                ["auto", "human"], value=None, show_label=False, scale=0, min_width=230, elem_id="gal-mode"
            )
            c["commit_btn"] = gr.Button(
                selection.COMMIT_NEXT,
                variant="primary",
                size="sm",
                elem_id="gal-commit",
                scale=0,
                min_width=230,
                interactive=False,
            )
        with gr.Group(visible=False, elem_id="gal-confirm") as c["confirm_box"]:
            c["confirm_text"] = gr.HTML("", elem_id="gal-confirm-text")
            with gr.Row():
                c["confirm_yes"] = gr.Button(
                    "Yes, commit and train",
                    variant="primary",
                    size="sm",
                    elem_id="gal-commit-yes",
                    scale=0,
                    min_width=200,
                )
                c["confirm_no"] = gr.Button(
                    "Keep reviewing", size="sm", elem_id="gal-commit-no", scale=0, min_width=160
                )
        with gr.Row(equal_height=True):
            for key, label, elem in (
                ("accept_btn", "✓ Aligned (a)", "accept"),
                ("reject_btn", "✗ Overfit (x)", "reject"),
                ("skip_btn", "– Skip (s)", "skip"),
                ("zoom_btn", "⤢ Zoom (z)", "zoom"),
                ("undo_btn", "↶ Undo (u)", "undo"),
                ("redo_btn", "↷ Redo (U)", "redo"),
                ("help_btn", "Keys (?)", "help"),
            ):
                kw = {} if elem in ("zoom", "help") else {"interactive": False}
                c[key] = gr.Button(label, size="sm", elem_id=f"gal-btn-{elem}", min_width=90, **kw)
        gr.HTML(assets.HELP_HTML, elem_id="gal-help")
    review_tools.layout(c)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            c["grid"] = gr.HTML(
                render.grid_html(None), js_on_load=assets.GRID_JS, elem_id="gal-grid", apply_default_css=False
            )
        with gr.Column(scale=1, min_width=240):
            c["preview"] = gr.HTML(selection.preview_html(None, None), elem_id="gal-preview")
    # verdict events send the grid's new state here as JSON; the grid's script applies it
    c["patch"] = gr.HTML(
        "", visible="hidden", elem_id="gal-patch", apply_default_css=False, js_on_load=assets.PATCH_JS
    )
    # The scripted path for a verdict (gradio_client, tests): "<image_id> <verdict>".
    c["decide_box"] = gr.Textbox(visible="hidden", elem_id="gal-decide-box")
    c["decide_btn"] = gr.Button("decide", visible="hidden", elem_id="gal-decide-btn")


def connect(c: dict, h, open_names: tuple) -> None:
    run, out = c["run_id"], REVIEW_OUTPUTS
    # every verdict event shares one queue so they apply in the order they were made
    wire(c["grid"].select, h.select_tile, run, out, c, **REVIEW)
    wire(c["decide_btn"].click, h.decide, [run, c["decide_box"]], out, c, api_name="decide", **REVIEW)
    wire(c["undo_btn"].click, h.undo, run, out, c, api_name="undo", **REVIEW)
    wire(c["redo_btn"].click, h.redo, run, out, c, api_name="redo", **REVIEW)
    # the bulk actions take their inputs raw (preprocess=False): a threshold of "abc" or an overwrite of
    # "yes" from a script reaches the handler, which names the field, instead of failing in Gradio
    wire(c["oracle_btn"].click, h.accept_oracle, [run, c["overwrite"]], out, c, api_name="accept_oracle",
         preprocess=False, **REVIEW)  # fmt: skip
    wire(c["below_btn"].click, h.mark_below, [run, c["threshold"], c["overwrite"]], out, c,
         api_name="mark_below", preprocess=False, **REVIEW)  # fmt: skip
    # the mode lives in SQLite (the round's): the header says it, other tabs' polls pick it up
    moded = (*out, "header", "seen", "order")
    wire(c["mode"].input, h.set_mode, [run, c["mode"]], moded, c, api_name="set_mode", **REVIEW)
    # Commit asks once (what it adds, how many are unreviewed); only "Yes" writes
    asked = ("confirm_box", "confirm_text", "confirm_yes")
    wire(c["commit_btn"].click, h.commit_ask, [run, c["mode"]], asked, c, show_progress="hidden")
    wire(
        c["confirm_yes"].click,
        h.commit,
        [run, c["mode"]],
        open_names,
        c,
        api_name="commit",
        concurrency_id="review",
        concurrency_limit=1,
    ).then(  # fmt: skip
        lambda: gr.update(visible=False), None, c["confirm_box"], show_progress="hidden"
    )
    c["confirm_no"].click(lambda: gr.update(visible=False), None, c["confirm_box"], show_progress="hidden")
    for key, k in (("accept_btn", "a"), ("reject_btn", "x"), ("skip_btn", "s"), ("zoom_btn", "z")):
        press = f"() => {{ window.gal && window.gal.key && window.gal.key('{k}'); }}"
        c[key].click(None, None, None, js=press)
    c["help_btn"].click(None, None, None, js="() => { window.gal && window.gal.toggleHelp(); }")
    arrange = "(o, f) => { window.gal.arrange && window.gal.arrange(o, f); }"
    c["order"].change(None, [c["order"], c["filters"]], None, js=arrange)
    c["filters"].change(None, [c["order"], c["filters"]], None, js=arrange)
    c["tile_size"].change(
        None, c["tile_size"], None, js="(v) => { window.gal.tileSize && window.gal.tileSize(v); }"
    )
    # a person's change to a review control hands the keyboard back to the grid (issue 26.1)
    refocus = "() => { window.gal && window.gal.focusGrid && window.gal.focusGrid(); }"
    for name in ("mode", "order", "filters"):
        c[name].input(None, None, None, js=refocus)
    c["tile_size"].release(None, None, None, js=refocus)


def _run_id(value) -> str:
    if not value:
        raise error("no run is open: set one up, or open one from the Runs tab")
    if not isinstance(value, str):
        raise error(f"the run id must be text, got {type(value).__name__} {value!r}")
    return value


class ReviewHandlers:
    """The Review tab's events (mixed into ``ui.handlers.Handlers``)."""

    def _require(self, run_id) -> str:
        return _run_id(run_id)

    def review(
        self, run_id: str | None, patch: bool = False, request: gr.Request | None = None, nonce=0
    ) -> dict:
        """The review tab, read from SQLite: the full grid, or (``patch``) just its state as JSON.

        Both carry ``seq`` (the order of this read) and ``ack`` (the latest click of the asking page,
        ``request``'s session, handled before this read; at least ``nonce``), so the page can settle
        its pending tiles from any answer, whichever answers it misses or gets out of order.
        """
        if not run_id:
            return {
                "grid": render.grid_html(None),
                "counters": render.counters_html(None),
                "preview": selection.preview_html(None, None),
            }
        session = getattr(request, "session_hash", None)
        with self._read_lock:
            seq = next(self._seq)
            ack = max(self._acks.get(session, 0) if session else 0, nonce if isinstance(nonce, int) else 0)
            state = self.studio.review_state(run_id)
            in_review = state["round"]["state"] == "review"
            if session:
                self._remember(self._sent, session, state["revision"])
            preview = self.studio.preview_selection(run_id) if in_review else None
        view = {
            "counters": render.counters_html(state, preview["mode"] if preview else None),
            "preview": selection.preview_html(preview, state),
        }
        if in_review:
            view["commit_btn"] = gr.update(value=selection.commit_label(preview, state))
        if patch and in_review:
            return {**view, "patch": render.grid_patch(state, preview, seq, ack)}
        waiting = not in_review and self.worker.state(run_id) == "queued"
        queue = (
            self.studio.review_queue(run_id, state["round"]["round_index"], order="disagreement")
            if in_review
            else None
        )
        grid = render.grid_html(state, preview, seq=seq, ack=ack, waiting=waiting, queue=queue)
        return {**view, "grid": grid}

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

    def select_tile(self, run_id: str | None, evt: gr.SelectData, request: gr.Request | None = None) -> dict:
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

    def _select_batch(self, run_id: str, batch: list, request) -> dict:
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
    def decide(self, run_id: str | None, action: str, request: gr.Request | None = None) -> dict:
        """The scripted form of a click (``api_name="decide"``): ``"<image_id> <verdict>"``,
        verdict one of aligned/accept/0, overfit/reject/1, clear (a verdict is required: "5" alone is
        refused, not read as clearing image 5)."""
        run_id = self._require(run_id)
        if not isinstance(action, str):
            raise ValueError(f"action must be text '<image_id> <verdict>', got {type(action).__name__}")
        parts = action.replace(":", " ").replace(",", " ").split()
        if not parts or not parts[0].isdigit():
            raise ValueError(f"expected '<image_id> <verdict>', got {action!r}")
        if len(parts) != 2:
            raise ValueError(
                f"expected '<image_id> <verdict>' (verdict: aligned, overfit or clear), got {action!r}"
            )
        self.studio.decide(run_id, int(parts[0]), parse_verdict(parts[1]))
        return self.review(run_id, patch=True, request=request)

    def undo(self, run_id: str | None, request: gr.Request | None = None) -> dict:
        """Undo the last action — a click, a key or a whole bulk action — in one step."""
        return self._undo_redo(run_id, request, redo=False)

    def redo(self, run_id: str | None, request: gr.Request | None = None) -> dict:
        """Redo the last undone action (U / shift-u)."""
        return self._undo_redo(run_id, request, redo=True)

    def _undo_redo(self, run_id, request, redo: bool) -> dict:
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
    def accept_oracle(self, run_id: str | None, request: gr.Request | None = None, overwrite=False) -> dict:
        """Bulk: agree with the oracle on every image you have not judged (``overwrite``: on all).
        One undo step."""
        run_id = self._require(run_id)
        overwrite = review_tools.flag(overwrite, "overwrite")
        n = self.studio.accept_oracle(run_id, overwrite=overwrite)
        whose = "" if overwrite else " you had not judged"
        info(f"you agreed with the oracle on {n} image{'s' if n != 1 else ''}{whose} — one u undoes it all")
        return self.review(run_id, patch=True, request=request)

    @user_errors
    def mark_below(
        self, run_id: str | None, threshold, request: gr.Request | None = None, overwrite=False
    ) -> dict:
        """Bulk: mark overfit every image under the threshold you have not judged
        (``overwrite``: yours too)."""
        run_id = self._require(run_id)
        threshold = review_tools.threshold(threshold)
        overwrite = review_tools.flag(overwrite, "overwrite")
        n = self.studio.mark_below(run_id, threshold, verdict=1, overwrite=overwrite)
        kept = "" if overwrite else "; your own verdicts are kept"
        info(
            f"marked {n} image{'s' if n != 1 else ''} with sim(image, anchor) < {threshold:g} "
            f"overfit{kept} — one u undoes it all"
        )
        return self.review(run_id, patch=True, request=request)

    @user_errors
    def set_mode(self, run_id: str | None, mode: str, request: gr.Request | None = None) -> dict:
        run_id = self._require(run_id)
        self.studio.set_round_mode(run_id, mode)
        run, rnd = self.studio.snapshot(run_id)
        out = {
            **self.review(run_id, patch=True, request=request),
            "header": render.header_html(run, rnd, self.worker.state(run_id)),
            "seen": self._key(run, rnd),
        }
        if mode == "human":  # the person's verdicts now train: show first where the judges disagree
            out["order"] = "disagreement"
        return out

    @user_errors
    def commit_ask(self, run_id: str | None, mode: str | None) -> dict:
        """Commit, step 1: say what committing adds and ask once (the confirm panel); nothing is written."""
        run_id = self._require(run_id)
        preview = self.studio.preview_selection(run_id, mode)
        if preview.get("error"):
            raise ValueError(preview["error"])
        state = self.studio.review_state(run_id)
        c = state["counters"]
        finishing = bool(preview.get("last_round") or preview.get("stop"))
        if finishing:
            what = "finishes the run (nothing is added)"
        else:
            n = len(preview["picks"])
            what = (
                f"adds {n} image{'s' if n != 1 else ''} (weight {preview['weight']:.4g}) "
                "to the references and "
                f"trains round {state['round']['round_index'] + 1}"
            )
        pool = selection.pool_text(selection.pool_effect(preview, state), state["round"]["round_index"])
        left = c["total"] - c["reviewed"]
        unreviewed = (
            f" {left} of {c['total']} images are unreviewed: the oracle's verdicts stand for them."
            if left
            else ""
        )
        body = (
            f"<b>Commit round {state['round']['round_index']} ({render.esc(preview['mode'])} mode)?</b> "
            f"It {render.esc(what)}.{render.esc(unreviewed)} {render.esc(pool)} "
            "Verdicts cannot change after this."
        )
        return {
            "confirm_box": gr.update(visible=True),
            "confirm_text": render.message(body, "warn"),
            "confirm_yes": gr.update(value=selection.COMMIT_FINISH if finishing else "Yes, commit and train"),
        }

    @user_errors
    def commit(self, run_id: str | None, mode: str | None) -> dict:
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
            self.worker.submit(run_id)  # a wait for another run is said once, on the progress line
        return self.open(run_id, tab=None)
