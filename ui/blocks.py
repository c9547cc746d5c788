"""The page: tabs Set up, Review, Progress, History, Runs, Export, each laid out and wired by its module.

``build(studio)`` returns the ``gr.Blocks`` and never launches; ``app.py`` launches it with
``launch_kwargs()`` (Gradio 6 takes css/head/theme in ``launch()``; the files are in ``ui/static/``).
The only session state is the open run's id (``gr.State``), mirrored into the address as ``?run=ID``;
the rest is read from SQLite. Components live in one registry ``c`` (name -> component); handlers return
``{name: value}`` and ``ui.common.wire`` maps the names onto each event's outputs.
"""

from __future__ import annotations

import gradio as gr

from gal.engine import Studio
from gal.fields import default_form
from ui import assets, export, history, progress, render, review, runs, setup
from ui.common import bind, wire
from ui.handlers import OPEN_OUTPUTS, Handlers
from ui.worker import Worker


def launch_kwargs() -> dict:
    """What ``Blocks.launch`` needs besides host/port/auth: the page's CSS, head script and theme.

    ``run_history=False``: Gradio 6 otherwise records every call in the browser, and a review session
    is hundreds of calls — the page slowed from ~200 to ~500 ms per click within 200 clicks (measured);
    the truth is in SQLite anyway.
    """
    return {
        "css_paths": [assets.CSS_FILE],
        "head_paths": [assets.HEAD_FILE],
        "theme": gr.themes.Soft(primary_hue="indigo"),
        "run_history": False,
    }


class Registry(dict):
    """The page's components by name; a name given twice is an error (two tabs would fight over it)."""

    def __setitem__(self, name: str, component) -> None:
        if name in self:
            raise KeyError(f"component {name!r} is registered twice")
        super().__setitem__(name, component)


def build(studio: Studio, worker: Worker | None = None) -> gr.Blocks:
    handlers = Handlers(studio, worker)
    form0 = default_form(studio.default_model, studio.default_oracle)
    c = Registry()

    with gr.Blocks(title="GAL Studio") as demo:
        demo.gal_handlers = handlers  # for tests and the benchmark: the same worker the page uses
        demo.gal_components = c
        c["run_id"] = gr.State(None)  # the open run's id: the only session state
        c["seen"] = gr.State("")  # what the page last rendered (the timer re-renders on a change)
        c["revision"] = gr.State(None)  # the round's latest decision id this page was sent
        c["run_box"] = gr.Textbox(visible="hidden", elem_id="gal-run-box", label="run id")
        c["header"] = gr.HTML(render.header_html(None), elem_id="gal-header")
        c["timer"] = gr.Timer(progress.POLL_SECONDS)

        with gr.Tabs(selected="setup", elem_id="gal-tabs") as c["tabs"]:
            with gr.Tab("Set up", id="setup", elem_id="gal-tab-setup"):
                setup.layout(c, handlers, form0)
            with gr.Tab("Review", id="review", elem_id="gal-tab-review"):
                review.layout(c)
            with gr.Tab("Progress", id="progress", elem_id="gal-tab-progress"):
                progress.layout(c)
            with gr.Tab("History", id="history", elem_id="gal-tab-history") as c["history_tab"]:
                history.layout(c)
            with gr.Tab("Runs", id="runs", elem_id="gal-tab-runs") as c["runs_tab"]:
                runs.layout(c)
            with gr.Tab("Export", id="export", elem_id="gal-tab-export") as c["export_tab"]:
                export.layout(c, handlers)

        # ------------------------------------------------------------------------ wiring
        wire(demo.load, handlers.load, None, OPEN_OUTPUTS, c, show_progress="hidden").then(
            bind(handlers.runs, runs.RUNS_OUTPUTS),
            None,
            [c[n] for n in runs.RUNS_OUTPUTS],
            show_progress="hidden",
        )
        c["run_box"].change(None, c["run_box"], None, js="(r) => window.gal && window.gal.syncUrl(r)")
        progress.connect(c, handlers, OPEN_OUTPUTS)
        setup.connect(demo, c, handlers, OPEN_OUTPUTS)
        review.connect(c, handlers, OPEN_OUTPUTS)
        history.connect(c, handlers)
        runs.connect(c, handlers, OPEN_OUTPUTS)
        export.connect(c, handlers)
    return demo
