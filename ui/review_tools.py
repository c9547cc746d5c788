"""The Review tab's tools beside the grid: order, filters and tile size; the bulk actions and the checks of
their scripted inputs (a threshold of "abc", an overwrite of "yes" are refused naming the field)."""

from __future__ import annotations

import math

import gradio as gr


def layout(c: dict) -> None:
    """The two accordions between the sticky bar and the grid (``ui.review.connect`` wires them)."""
    with gr.Row(equal_height=False, elem_id="gal-tools"):
        with gr.Column(scale=1, min_width=300):
            with gr.Accordion("Order, filters, tile size", open=False, elem_id="gal-view"):
                with gr.Row(equal_height=True, elem_id="gal-view-row"):
                    c["order"] = gr.Dropdown(
                        [
                            ("most mixed first (Ω)", "omega"),
                            ("anchor index", "index"),
                            ("most overfit first (β)", "beta"),
                            ("judges disagree / least sure first", "disagreement"),
                        ],
                        value="omega",
                        label="Order anchors",
                        elem_id="gal-order",
                        scale=2,
                        min_width=250,
                    )
                    c["filters"] = gr.CheckboxGroup(
                        [
                            ("unreviewed", "unreviewed"),
                            ("your overrides", "overrides"),
                            ("oracle: overfit", "oracle-overfit"),
                            ("oracle: aligned", "oracle-aligned"),
                            ("mixed anchors only", "mixed"),
                            ("judges disagree", "disagree"),
                        ],
                        value=[],
                        label="Show only",
                        elem_id="gal-filters",
                        scale=3,
                    )
                    c["tile_size"] = gr.Slider(
                        64,
                        320,
                        value=128,
                        step=16,
                        label="Tile size (px)",
                        elem_id="gal-tile-size",
                        scale=2,
                        min_width=210,
                    )
        with gr.Column(scale=1, min_width=300):
            with gr.Accordion("Bulk actions (each is one undo step)", open=False, elem_id="gal-bulk"):
                with gr.Row(equal_height=True):
                    c["oracle_btn"] = gr.Button(
                        "Accept the oracle's verdicts on every image you have not judged",
                        size="sm",
                        elem_id="gal-accept-oracle",
                        min_width=220,
                        scale=3,
                        interactive=False,
                    )
                    c["overwrite"] = gr.Checkbox(
                        False,
                        label="also overwrite my own verdicts",
                        elem_id="gal-overwrite",
                        info="off: bulk actions touch only images you have not judged",
                        scale=2,
                        min_width=180,
                    )
                with gr.Row(equal_height=True):
                    c["threshold"] = gr.Slider(
                        -1.0,
                        1.0,
                        value=0.2,
                        step=0.01,
                        label="similarity threshold",
                        info="sim(image, anchor), the first number on each tile",
                        elem_id="gal-threshold",
                        scale=3,
                        min_width=220,
                    )
                    c["below_btn"] = gr.Button(
                        "Mark every image you have not judged under the threshold overfit",
                        size="sm",
                        elem_id="gal-mark-below",
                        min_width=180,
                        scale=2,
                        interactive=False,
                    )


def flag(value, name: str) -> bool:
    """A yes/no from a script: a real boolean (or nothing, meaning no); "yes" or 1 is refused."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {type(value).__name__} {value!r}")
    return value


def threshold(value) -> float:
    if value is None or value == "":
        raise ValueError("enter a similarity threshold first, e.g. 0.25")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"the similarity threshold must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"the similarity threshold must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"the similarity threshold must be a finite number, e.g. 0.25, got {value!r}")
    return number
