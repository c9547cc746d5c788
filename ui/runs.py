"""The Runs tab: every run in the database; a click or Open opens one, Continue resumes a stopped one."""

from __future__ import annotations

import gradio as gr

from ui import render
from ui.common import info, user_errors, wire

RUN_HEADERS = ["run id", "name", "task", "status", "round", "mode", "strategy", "created"]
RUNS_OUTPUTS = ("runs_table", "run_dd")


def layout(c: dict) -> None:
    gr.Markdown("Every run in the database. Click a row to open it; **Continue** resumes a stopped run.")
    c["runs_table"] = gr.Dataframe(headers=RUN_HEADERS, interactive=False, elem_id="gal-runs", wrap=True)
    with gr.Row():
        c["run_dd"] = gr.Dropdown(
            choices=[],
            label="Run",
            elem_id="gal-run-dd",
            scale=3,
            allow_custom_value=True,
            info="pick a run, or paste its id",
        )
        c["open_btn"] = gr.Button("Open", elem_id="gal-open", scale=0)
        c["continue_btn"] = gr.Button("Continue", elem_id="gal-continue", scale=0)
        c["runs_refresh"] = gr.Button("Refresh", scale=0)


def connect(c: dict, h, open_names: tuple) -> None:
    wire(c["runs_tab"].select, h.runs, None, RUNS_OUTPUTS, c, show_progress="hidden")
    wire(c["runs_refresh"].click, h.runs, None, RUNS_OUTPUTS, c, api_name="runs")
    wire(c["runs_table"].select, h.run_selected, None, open_names, c)
    wire(c["open_btn"].click, h.open_run, c["run_dd"], open_names, c, api_name="open_run")
    wire(c["continue_btn"].click, h.continue_run, c["run_dd"], open_names, c, api_name="continue_run")


class RunsHandlers:
    """The Runs tab's events (mixed into ``ui.handlers.Handlers``)."""

    def runs(self) -> dict:
        rows = []
        for run in self.studio.list_runs():
            config = run.get("config") or {}
            _, rnd = self.studio.snapshot(run["run_id"])
            mode = rnd["mode"] if rnd else ""  # the mode its current round is reviewed in (issue 26.8)
            rows.append(
                [
                    run["run_id"],
                    run["name"],
                    config.get("task", ""),
                    run["status"],
                    run["current_round"],
                    mode,
                    render.strategy_in_mode(config, mode),
                    run["created_at"][:19].replace("T", " "),
                ]
            )
        return {
            "runs_table": rows,
            "run_dd": gr.Dropdown(choices=[r[0] for r in rows], value=rows[0][0] if rows else None),
        }

    def _tab_for(self, run_id: str) -> str:
        run, _ = self.studio.snapshot(run_id)
        if run["status"] in ("failed", "cancelled") or (
            run["status"] == "active" and not self.worker.state(run_id)
        ):
            return "progress"
        return "review"

    @user_errors
    def open_run(self, run_id: str | None) -> dict:
        if not run_id:
            raise ValueError("choose a run first")
        if not isinstance(run_id, str):
            raise ValueError(f"the run must be a run id (text), got {type(run_id).__name__} {run_id!r}")
        return self.open(run_id, tab=self._tab_for(run_id))

    def run_selected(self, evt: gr.SelectData) -> dict:
        """A click on a row of the runs table opens that run."""
        row = evt.row_value or []
        run_id = row[0] if row else (evt.value if isinstance(evt.value, str) else None)
        return self.open_run(run_id)

    def continue_run(self, run_id: str | None) -> dict:
        """Runs tab 'Continue': open the run, and resume its job when it stopped mid-round."""
        view = self.open_run(run_id)
        if self.worker.state(run_id):
            info(
                f"run {run_id}'s job is already {self.worker.state(run_id)}: "
                "its progress is on the Progress tab"
            )
        run, _ = self.studio.snapshot(run_id)
        if run["status"] in ("active", "failed", "cancelled") and not self.worker.state(run_id):
            self.worker.submit(run_id)
            return self.open(run_id, tab="progress")
        return view
