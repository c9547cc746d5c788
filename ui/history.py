"""The History tab: TXT-ALN / IMG-ALN / OVF / Δ per round, the references each round added, and one anchor
compared across rounds (which anchor by default: ``gal.advice.compare_anchor``)."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from gal.engine import compare_anchor
from ui.common import wire
from ui.render import VERDICT_WORD, esc, file_url, fmt, is_pixel_art

HISTORY_OUTPUTS = ("txt_plot", "img_plot", "ovf_plot", "delta_plot", "metrics", "agreement", "references",
                   "anchor", "compare")  # fmt: skip
PLOTS = (
    ("txt_plot", "TXT-ALN ↑", "text alignment", "txt"),
    ("img_plot", "IMG-ALN ↑", "subject fidelity", "img"),
    ("ovf_plot", "OVF ↓", "overfit rate", "ovf"),
    ("delta_plot", "Δ (Eq. 9)", "openness", "delta"),
)


def layout(c: dict) -> None:
    with gr.Row():
        # points, not lines: a single round shows as a dot (a line of one point draws nothing)
        for key, title, y_title, elem in PLOTS:
            c[key] = gr.ScatterPlot(
                x="round",
                y="value",
                title=title,
                y_title=y_title,
                x_title="round",
                height=220,
                elem_id=f"gal-plot-{elem}",
            )
    gr.HTML(METRICS_HELP, elem_id="gal-metrics-help")
    c["metrics"] = gr.HTML(elem_id="gal-metrics")
    c["agreement"] = gr.HTML(agreement_html([]), elem_id="gal-agreement")
    c["references"] = gr.Gallery(
        label="References: the real ones, then those each round added",
        columns=8,
        height="auto",  # whole images: a fixed 240 px cut the references at 1280 px
        object_fit="contain",
        allow_preview=True,
        elem_id="gal-refs",
    )
    c["anchor"] = gr.Dropdown(
        choices=[],
        label="Compare one anchor across rounds (same seed per slot)",
        elem_id="gal-compare-anchor",
    )
    c["compare"] = gr.HTML(elem_id="gal-compare")
    c["history_btn"] = gr.Button("Refresh", size="sm", scale=0)


def connect(c: dict, h) -> None:
    inputs = [c["run_id"], c["anchor"]]
    wire(c["history_tab"].select, h.history_page, inputs, HISTORY_OUTPUTS, c, show_progress="hidden")
    wire(c["history_btn"].click, h.history_page, inputs, HISTORY_OUTPUTS, c, api_name="history")
    wire(c["anchor"].input, h.history_page, inputs, HISTORY_OUTPUTS, c, show_progress="hidden")


def padded_range(df: pd.DataFrame) -> list[float] | None:
    """A y range around the values with room on both sides (a single value gets ±10 % of itself), never
    below 0 for a metric that is never negative."""
    if df is None or not len(df):
        return None
    lo, hi = float(df["value"].min()), float(df["value"].max())
    pad = max((hi - lo) * 0.15, abs(hi) * 0.1, 1e-6)
    low = lo - pad if lo < 0 else max(0.0, lo - pad)
    return [round(low, 6), round(hi + pad, 6)]


class HistoryHandlers:
    """The History tab's events (mixed into ``ui.handlers.Handlers``)."""

    def history(self, run_id: str | None, anchor: int | None = None) -> dict:
        """The tab's values: ``txt_plot`` ... ``delta_plot`` as DataFrames of (round, value)."""
        empty = pd.DataFrame({"round": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
        if not run_id:
            return {
                **{key: empty for key, *_ in PLOTS},
                "metrics": metrics_table_html([]),
                "agreement": agreement_html([]),
                "references": [],
                "anchor": gr.Dropdown(choices=[], value=None),
                "compare": compare_html("", {}, []),
            }
        history = self.studio.history(run_id)
        rounds = history["rounds"]

        def series(get) -> pd.DataFrame:
            # rounds as labels, not numbers: an axis of 1, 2, 3, never 1.2
            points = [(r["round_index"], get(r)) for r in rounds]
            points = [(str(i), float(v)) for i, v in points if isinstance(v, (int, float))]
            return pd.DataFrame(points, columns=["round", "value"]) if points else empty

        folder = self.studio.folder(run_id)
        references = [
            (
                str(folder.path(ref["file"])),
                "real reference · weight 1"
                if ref["source"] == "real"
                else f"round {ref['round_added']} · weight {ref['weight']:.4g} · {ref['prompt']}",
            )
            for ref in history["references"]
        ]
        states = {r["round_index"]: self.studio.review_state(run_id, r["round_index"]) for r in rounds}
        anchors = states[max(states)]["anchors"] if states else []
        choices = [(f"#{a['anchor_index']} {a['prompt']}", a["anchor_index"]) for a in anchors]
        anchor = compare_anchor(states, self.studio.selections(run_id), anchor)
        per_round = {
            r: [im for a in s["anchors"] if a["anchor_index"] == anchor for im in a["images"]]
            for r, s in states.items()
        }
        prompt = next((a["prompt"] for a in anchors if a["anchor_index"] == anchor), "")
        metric = lambda name: series(lambda r: (r.get("metrics") or {}).get(name))  # noqa: E731
        return {
            "txt_plot": metric("txt_aln"),
            "img_plot": metric("img_aln"),
            "ovf_plot": metric("ovf"),
            "delta_plot": series(lambda r: r.get("openness")),
            "metrics": metrics_table_html(rounds),
            "agreement": agreement_html(self.studio.judge_agreement(run_id)),
            "references": references,
            "anchor": gr.Dropdown(choices=choices, value=anchor),
            "compare": compare_html(prompt, per_round, sorted(states)),
        }

    def history_page(self, run_id: str | None, anchor: int | None = None) -> dict:
        """``history`` for the page: each plot as points with a padded y range, so one round reads as a
        dot with round ticks (a degenerate range showed an empty box ticked 1.409577)."""
        view = self.history(run_id, anchor)
        for key, *_ in PLOTS:
            view[key] = gr.ScatterPlot(value=view[key], y_lim=padded_range(view[key]))
        return view


# -- the HTML -----------------------------------------------------------------------------------


def agreement_html(rows: list[dict]) -> str:
    """Per judge, how often you agreed with it on the images you gave a verdict (issue 27): the data to
    choose a judge by."""
    if not rows:
        return (
            '<div class="gal-muted" data-judges="0">Judge agreement: none yet — it counts the images you '
            "gave a verdict (a or x) against each judge's verdict.</div>"
        )
    body = "".join(
        f'<tr data-judge="{esc(r["judge"])}"><td>{esc(r["judge"])}</td><td>{r["judged"]}</td>'
        f"<td>{r['agreed']}</td><td>{r['overruled']}</td><td><b>{r['rate']:.0%}</b></td></tr>"
        for r in rows
    )
    return (
        f'<table class="gal-agreement" data-judges="{len(rows)}"><caption>How often you agreed with each '
        "judge (your latest verdict per image)</caption><tr><th>judge</th><th>images you judged</th>"
        f"<th>agreed</th><th>you overruled</th><th>agreement</th></tr>{body}</table>"
    )


METRICS_HELP = (
    '<ul class="gal-metrics-help">'
    "<li><b>TXT-ALN</b> ↑ (0–2.5): CLIPScore, 2.5 × the CLIP cosine "
    "of each held-out image to its own prompt — "
    "does the model still follow the text?</li>"
    "<li><b>IMG-ALN</b> ↑ (−1–1, in practice 0–1): CLIP image–image cosine "
    "of the held-out images to your real "
    "references — does it still look like your subject?</li>"
    "<li><b>OVF</b> ↓ (0–1): the share of held-out images judged overfit by Eq. 8 "
    "— closer to the non-SoI caption "
    "(your references' scene) than to the prompt.</li>"
    "<li><b>Δ</b> (Eq. 9): openness, λ × mean Ω of the round "
    "— the loss weight of each image that round adds.</li>"
    "</ul>"
)


def metrics_table_html(rounds: list[dict]) -> str:
    if not rounds:
        return '<div class="gal-muted">No round yet.</div>'
    rows = []
    for r in rounds:
        m = r.get("metrics") or {}
        rows.append(
            f"<tr><td>{r['round_index']}</td><td>{esc(r['mode'])}</td><td>{esc(r['state'])}</td>"
            f"<td>{fmt(m.get('txt_aln'), 3)}</td><td>{fmt(m.get('img_aln'), 3)}</td>"
            f"<td>{fmt(m.get('ovf'), 3)}</td>"
            f"<td>{fmt(r.get('openness'), 5)}</td><td>{esc(m.get('strategy', ''))}</td></tr>"
        )
    return (
        '<table class="gal-table"><thead><tr><th>round</th><th>mode</th><th>state</th><th>TXT-ALN</th>'
        "<th>IMG-ALN</th><th>OVF</th><th>Δ</th><th>strategy</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def compare_html(anchor_prompt: str, per_round: dict[int, list[dict]], rounds: list[int]) -> str:
    """One anchor's images across rounds: a row per slot (same seed in every round), a column per round."""
    if not rounds:
        return '<div class="gal-muted">No images yet.</div>'
    slots = sorted({im["slot"] for ims in per_round.values() for im in ims})
    if not slots:
        return f'<div class="gal-muted">Anchor “{esc(anchor_prompt)}” has no images yet.</div>'
    first = next((im for ims in per_round.values() for im in ims), None)
    pixel = is_pixel_art(first["path"]) if first else False
    head = "".join(f"<th>round {r}</th>" for r in rounds)
    body = []
    for s in slots:
        cells = []
        seed = None
        for r in rounds:
            im = next((x for x in per_round.get(r, []) if x["slot"] == s), None)
            if im is None:
                cells.append('<td class="gal-muted">—<br>(out of the pool)</td>')
                continue
            seed = im.get("seed")
            v = im["final_verdict"]
            word = VERDICT_WORD.get(v, "not judged")
            cells.append(
                f'<td class="v{v}"><img src="{esc(file_url(im["path"]))}" alt="round {r}: {esc(word)}">'
                f"{word}<br>{fmt(im.get('sim_anchor'))}/{fmt(im.get('sim_non_soi'))}</td>"
            )
        body.append(
            f"<tr><th>slot {s + 1}<br><span class='gal-muted'>seed {seed}</span></th>{''.join(cells)}</tr>"
        )
    return (
        f'<div class="gal-muted">“{esc(anchor_prompt)}”: the same seed in every round, '
        "so a change is the model's.</div>"
        f'<table class="gal-table gal-compare{" pixel" if pixel else ""}">'
        f"<thead><tr><th></th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )
