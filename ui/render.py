"""HTML for the header, the review grid and its counters: plain functions of dicts.

The Progress and History tabs' HTML lives with them (``ui.progress``, ``ui.history``); the selection
preview and the Commit button's label in ``ui.selection``.

Everything shown comes from ``Studio`` (which reads SQLite), so two tabs render the same page. Text that
a person typed (prompts, captions, run names) is escaped. A verdict is never shown by colour alone:
each tile also carries ✓/✗ and a word, and the border style tells a person's verdict from the oracle's.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

from PIL import Image

VERDICT_WORD = {0: "✓ aligned", 1: "✗ overfit"}
ORDERS = ("omega", "index", "beta")  # how the grid orders its anchors (the page can re-sort in place)
SKIP_LINK = '<a class="gal-skip" href="#gal-grid" data-gal-skip="1">Skip to the review grid (g)</a>'

PIXEL_ART_MAX = 96  # images this small are upscaled with hard pixels instead of blur


def esc(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def file_url(path: str | Path) -> str:
    """A URL Gradio serves for a file under an ``allowed_paths`` folder (relative: works under a root
    path)."""
    return "gradio_api/file=" + quote(str(path))


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def message(text: str, kind: str = "") -> str:
    return f'<div class="gal-msg {esc(kind)}">{text}</div>'


def is_pixel_art(path: str | Path | None) -> bool:
    if not path:
        return False
    try:
        with Image.open(path) as im:  # reads the header only
            return max(im.size) <= PIXEL_ART_MAX
    except OSError:
        return False


# -- header ------------------------------------------------------------------------------------


def strategy_in_mode(config: dict, mode: str | None) -> str:
    """The strategy a round uses in ``mode`` (``gal.algorithm.Strategy.in_mode`` on the config's name): a
    human round takes the person's accepted images, whatever the configured auto strategy."""
    name = str((config.get("gal") or {}).get("strategy", ""))
    if mode == "human":
        return name if name.startswith("human") else "human"
    if mode == "auto" and name.startswith("human"):
        return "uncertainty"
    return name


def mode_pill(mode: str | None) -> str:
    if mode not in ("auto", "human"):
        return ""
    tip = "the person's accepted images train the next round" if mode == "human" else "the oracle decides"
    return f'<span class="gal-pill mode-{mode}" data-mode="{mode}" title="{tip}">{mode} mode</span>'


def run_title(run: dict) -> str:
    """A run as the page names it: its name with the id beside it, or the id alone (never twice)."""
    name = str(run.get("name") or "").strip()
    if not name or name == run["run_id"]:
        return f'<b class="gal-run-name">{esc(run["run_id"])}</b>'
    return f'<b class="gal-run-name">{esc(name)}</b> <span class="gal-muted">{esc(run["run_id"])}</span>'


def header_html(run: dict | None, round_row: dict | None = None, job_state: str | None = None) -> str:
    if run is None:
        return (
            f'{SKIP_LINK}<div class="gal-head"><span class="gal-title">GAL Studio</span>'
            '<span class="gal-muted">no run open — set one up, or open one from the Runs tab</span></div>'
        )
    config = run.get("config") or {}
    max_rounds = (config.get("gal") or {}).get("max_rounds", "?")
    status = run["status"]
    state = f" · round {run['current_round']}/{max_rounds}"
    if round_row is not None and status not in ("finished",):
        state += f" · {esc(round_row['state'])}"
    worker = f' <span class="gal-pill">{esc(job_state)}</span>' if job_state else ""
    mode = round_row.get("mode") if round_row else None
    return (
        f'{SKIP_LINK}<div class="gal-head"><span class="gal-title">GAL Studio</span>'
        f"<span>{run_title(run)}</span>"
        f'<span class="gal-pill {esc(status)}">{esc(status.replace("_", " "))}</span>{mode_pill(mode)}'
        f'<span class="gal-muted">{esc(config.get("task", ""))} · '
        f"{esc(strategy_in_mode(config, mode))}"
        f"{state}</span>{worker}</div>"
    )


# -- review ------------------------------------------------------------------------------------


def anchor_state(anchor: dict) -> tuple[str, str]:
    """(css class, words) for an anchor: mixed (Ω > 0, worth querying), settled, or out of the pool."""
    if not anchor.get("in_pool"):
        return "out", "out of the pool (already picked)"
    omega, beta = anchor.get("uncertainty"), anchor.get("overfit_rate")
    if omega is None:
        return "pending", "not judged yet"
    if omega > 0:
        return "mixed", "◐ mixed"
    return "settled", "● settled: all overfit" if beta == 1 else "● settled: all aligned"


def ordered_anchors(anchors: list[dict], order: str = "omega") -> list[dict]:
    """The grid's anchor order: ``omega`` (default: the most mixed first — highest Ω, ties by index),
    ``index``, or ``beta`` (most overfit first). Anchors out of the pool come last."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")

    def key(a):
        omega = a.get("uncertainty")
        beta = a.get("overfit_rate")
        if order == "index":
            value = 0.0
        elif order == "beta":
            value = -(beta if beta is not None else -1.0)
        else:
            value = -(omega if omega is not None else -1.0)
        return (not a.get("in_pool"), value, a["anchor_index"])

    return sorted(anchors, key=key)


def visible(image: dict, anchor: dict, filters: set[str] | frozenset[str] = frozenset()) -> bool:
    """Whether a tile shows under the page's filters (all must hold): ``unreviewed`` (you said nothing),
    ``overrides`` (your verdict differs from the oracle's), ``oracle-overfit`` / ``oracle-aligned`` (the
    oracle's verdict), ``mixed`` (its anchor is mixed: Ω > 0). grid.js applies the same rules in place."""
    person = image.get("person_verdict")
    reviewed = person is not None or bool(image.get("person_seen"))
    checks = {
        "unreviewed": not reviewed,
        "overrides": person is not None and person != image.get("oracle_verdict"),
        "oracle-overfit": image.get("oracle_verdict") == 1,
        "oracle-aligned": image.get("oracle_verdict") == 0,
        "mixed": (anchor.get("uncertainty") or 0) > 0,
    }
    unknown = set(filters) - set(checks)
    if unknown:
        raise ValueError(f"unknown filter(s) {sorted(unknown)}: use {', '.join(checks)}")
    return all(checks[f] for f in filters)


def grid_html(
    state: dict | None,
    preview: dict | None = None,
    note: str = "",
    seq: int = 0,
    ack: int = 0,
    order: str = "omega",
    waiting: bool = False,
    queue: list[dict] | None = None,
) -> str:
    """The round's images, one block per anchor, each tile showing its final verdict and similarities.

    The grid's root carries the same state as a patch (``data-state``: ``grid_state`` as JSON), so the
    page can tell a full render read *before* a patch it already applied (a lower ``seq``) and keep the
    newer state, and can settle the clicks the render's ``ack`` covers.
    """
    if state is None:
        return (
            '<div class="gal-grid"><div class="gal-empty">'
            "No run open. Set one up, or open one from the Runs tab.</div></div>"
        )
    rnd = state["round"]
    anchors = state["anchors"]
    images = [im for a in anchors for im in a["images"]]
    if waiting:  # the run waits for the worker: the line above says so, once (issue 26.7)
        return (
            '<div class="gal-grid"><div class="gal-empty" data-waiting="1">'
            f"Round {rnd['round_index']}'s images appear here once it has trained and been judged."
            "</div></div>"
        )
    if rnd["state"] != "review" or not images:
        what = {
            "training": "is training",
            "generating": "is generating its images",
            "judging": "is being judged by the oracle",
            "evaluating": "is being evaluated",
            "done": "is committed",
        }.get(rnd["state"], f"is {rnd['state']}")
        status = state["run"]["status"]
        extra = note or (
            "The run is finished: see History and Export."
            if status == "finished"
            else "The grid appears here when the round's images are judged; "
            "progress is shown above and on the Progress tab."
        )
        return (
            f'<div class="gal-grid"><div class="gal-empty"><b>Round {rnd["round_index"]} {esc(what)}.</b>'
            f"<br>{esc(extra)}</div></div>"
        )
    picks = {p["image_id"] for p in (preview or {}).get("picks", [])}
    # Studio.review_queue's order (judges disagree first, then the least confident): each tile's place
    ranks = {im["id"]: i for i, im in enumerate(queue or [])}
    pixel = is_pixel_art(images[0]["path"]) if images else False
    parts = [
        f'<div class="gal-grid{" pixel" if pixel else ""}" '
        f'data-round="{rnd["round_index"]}" data-seq="{seq}" '
        f'''data-state="{
            esc(json.dumps(grid_state(state, preview, seq, ack), separators=(",", ":"), ensure_ascii=False))
        }">''',
        '<div class="gal-legend"><b class="a">✓ aligned</b> (green) · <b class="o">✗ overfit</b> (red) · '
        "solid border: your verdict, dashed: the oracle's · ✎ you overrode the oracle · "
        "<b>★</b> commit would add it · numbers: sim(image, anchor) / sim(image, non-SoI caption) · "
        "click selects, double-click zooms · keys <kbd>a</kbd> <kbd>x</kbd> <kbd>s</kbd> skip "
        "<kbd>z</kbd> zoom <kbd>n</kbd> next unreviewed "
        "<kbd>u</kbd>/<kbd>U</kbd> undo/redo <kbd>?</kbd> all keys</div>",
    ]
    pos = 0
    for a in ordered_anchors(anchors, order):
        css, words = anchor_state(a)
        title = (
            f'<div class="gal-anchor-title"><span class="idx">#{a["anchor_index"]}</span>'
            f"{esc(a['prompt'])}</div>"
        )
        if not a["in_pool"]:
            parts.append(
                f'<section class="gal-anchor out" data-anchor="{a["anchor_index"]}" data-pool="0">'
                f"<div>{title}</div>"
                f'<div class="gal-anchor-stats"><span class="gal-state">{words}</span></div></section>'
            )
            continue
        stats = (
            '<div class="gal-anchor-stats"><span class="beta" '
            'title="overfit rate β (Eq. 7): share of its images '
            f'judged overfit">β {fmt(a.get("overfit_rate"))}</span>'
            '<span class="omega" title="direction uncertainty Ω '
            f'(Eq. 6)">Ω {fmt(a.get("uncertainty"))}</span>'
            f'<span class="gal-state {css}">{words}</span></div>'
        )
        tiles = []
        for im in sorted(a["images"], key=lambda x: x["slot"]):
            tiles.append(tile_html(im, pos, im["id"] in picks, ranks.get(im["id"])))
            pos += 1
        first = min((ranks[im["id"]] for im in a["images"] if im["id"] in ranks), default=len(ranks))
        parts.append(
            f'<section class="gal-anchor {css}" data-anchor="{a["anchor_index"]}" data-pool="1" '
            f'data-disrank="{first}" '
            f'data-omega="{a.get("uncertainty") if a.get("uncertainty") is not None else -1}" '
            f'data-beta="{a.get("overfit_rate") if a.get("overfit_rate") is not None else -1}" '
            f'data-prompt="{esc(a["prompt"])}"><div>{title}{stats}</div>'
            f'<div class="gal-tiles">{"".join(tiles)}</div></section>'
        )
    parts.append("</div>")
    return "".join(parts)


def grid_state(state: dict, preview: dict | None, seq: int, ack: int) -> dict:
    """The grid's state: every tile ``[id, final, person, oracle, pick]`` and every pooled anchor's stats.

    A tile's last field is 1 when the person skipped it (seen, no opinion: the oracle's verdict stands).
    ``seq`` orders the reads (a larger one was read later, so it is at least as new); ``ack`` is the
    latest click of this page (its ``nonce``) that the server had handled before this read, so every
    click up to it is in ``tiles`` and the page can stop showing those tiles as pending.
    """
    picks = {p["image_id"] for p in (preview or {}).get("picks", [])}
    tiles = [
        [
            im["id"],
            im["final_verdict"],
            im["person_verdict"],
            im["oracle_verdict"],
            int(im["id"] in picks),
            int(bool(im.get("person_seen")) and im["person_verdict"] is None),
        ]
        for a in state["anchors"]
        for im in a["images"]
    ]
    anchors = []
    for a in state["anchors"]:
        if a["in_pool"]:
            css, words = anchor_state(a)
            anchors.append(
                [
                    a["anchor_index"],
                    fmt(a.get("overfit_rate")),
                    fmt(a.get("uncertainty")),
                    css,
                    words,
                    a.get("uncertainty") if a.get("uncertainty") is not None else -1,
                    a.get("overfit_rate") if a.get("overfit_rate") is not None else -1,
                ]
            )
    return {
        "seq": seq,
        "ack": ack,
        "round": state["round"]["round_index"],
        "tiles": tiles,
        "anchors": anchors,
        "revision": state.get("revision", 0),
    }


def grid_patch(state: dict, preview: dict | None, seq: int, ack: int) -> str:
    """The grid's state as compact JSON, applied in the page without re-rendering the grid's HTML.

    A verdict changes one tile, its anchor's β/Ω and the ★ picks; re-sending 20 KB of HTML for that
    cost the page ~100 ms of rendering per click (measured), so verdict events send this instead.
    Every patch is the whole round's state, so a patch the page never sees (two answers that land
    together reach the page's ``watch`` as one change) loses nothing: the next one carries it all.
    """
    return json.dumps(grid_state(state, preview, seq, ack), separators=(",", ":"), ensure_ascii=False)


def tile_html(im: dict, pos: int, picked: bool, rank: int | None = None) -> str:
    oracle, person = im["oracle_verdict"], im["person_verdict"]
    seen = person is None and bool(im.get("person_seen"))
    final = person if person is not None else oracle
    if final is None:  # generated but not judged yet
        final_cls, badge = "", "… judging"
    else:
        final_cls, badge = f"v{final}", VERDICT_WORD[final]
    classes = ["gal-tile", final_cls]
    if person is not None:
        classes.append("person")
        who = "✎ you (override)" if person != oracle else "you"
        if person != oracle:
            classes.append("override")
    elif seen:
        classes.append("seen")
        who = "you: skip (oracle's)"
    else:
        who = "oracle"
    if picked:
        classes.append("pick")
    sims = f"{fmt(im.get('sim_anchor'))}/{fmt(im.get('sim_non_soi'))}"
    label = (
        f"anchor {im['anchor_index']} image {im['slot'] + 1}: "
        f"{badge[2:] if final is not None else 'not judged'}"
        f" ({'your verdict' if person is not None else ('you skipped: oracle' if seen else 'oracle')}),"
        f" similarities {sims}"
        f"{', commit would add it' if picked else ''}"
    )
    return (
        f'<button type="button" tabindex="-1" class="{" ".join(c for c in classes if c)}" '
        f'data-id="{im["id"]}" data-pos="{pos}" '
        f'data-anchor="{im["anchor_index"]}" data-slot="{im["slot"]}" '
        f'data-oracle="{"" if oracle is None else oracle}" '
        f'data-final="{"" if final is None else final}" '
        f'data-sim="{fmt(im.get("sim_anchor"), 3)}" '
        f'data-nonsoi="{fmt(im.get("sim_non_soi"), 3)}" aria-label="{esc(label)}" '
        f'data-disagree="{1 if im.get("disagree") else 0}" data-rank="{"" if rank is None else rank}" '
        f'title="seed {im.get("seed")}">'
        f'<img src="{esc(file_url(im["path"]))}" alt="" loading="lazy" draggable="false">'
        f'<span class="gal-pick">★ pick</span>'
        f'<span class="gal-badge">{badge}</span><span class="gal-sims">{sims}</span>'
        f'<span class="gal-who">{who}</span></button>'
    )


def counters_html(state: dict | None, mode: str | None = None) -> str:
    if state is None or state["round"]["state"] != "review":
        return '<div class="gal-counters gal-muted">Nothing to review right now.</div>'
    c = state["counters"]
    share = c["reviewed"] / c["total"] if c["total"] else 0.0
    mode_span = f"<span>Mode <b>{esc(mode)}</b></span>" if mode else ""
    skipped = f"<span>Skipped <b>{c.get('skipped', 0)}</b></span>" if c.get("skipped") else ""
    undo, redo = state.get("undo"), state.get("redo")
    history = (
        f'<span class="gal-undo" title="u undoes, U redoes">↶ {esc(undo) if undo else "nothing to undo"}'
        f"{' · ↷ ' + esc(redo) if redo else ''}</span>"
    )
    return (
        f'<div class="gal-counters" data-reviewed="{c["reviewed"]}" data-total="{c["total"]}" '
        f'data-undo="{esc(undo or "")}" data-redo="{esc(redo or "")}">'
        f"<span>Round <b>{state['round']['round_index']}</b></span>"
        f"<span>Reviewed <b>{c['reviewed']}/{c['total']}</b></span>"
        f'<span class="gal-bar" style="width:140px" title="{share:.0%} reviewed">'
        f'<span style="width:{share:.0%}"></span></span>'
        f"<span>Overrides <b>{c['overrides']}</b></span>{skipped}"
        f"<span>Anchors <b>{c['mixed']}</b> mixed · <b>{c['settled']}</b> settled</span>"
        f"{mode_span}{history}</div>"
    )
