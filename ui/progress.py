"""The Progress tab and the page's 1 s poll: the running job's stage, ETA, loss curve and log; Cancel and
Continue; the controls' ``interactive`` states; and the grid patch when another tab (or the CLI) judged.
"""

from __future__ import annotations

import time

import gradio as gr

from ui import charts, render
from ui.common import CONTROLS, error, info, wire
from ui.render import esc, file_url, message

POLL_SECONDS = 1.0
STAGE_NAMES = {
    "train": "Training the LoRA",
    "class images": "Drawing class images",
    "generate": "Generating anchor images",
    "judge": "Judging with the oracle",
    "evaluate": "Evaluating held-out prompts",
}
ROUND_STEPS = ("training", "generating", "judging", "evaluating", "review", "done")
# What the poll may change: everything that follows the run's state (``open`` sends these and more).
TICK_OUTPUTS = (
    "progress",
    "progress_mini",
    "header",
    "seen",
    "grid",
    "counters",
    "preview",
    "patch",
    "mode",
    *(f"{name}_btn" for name in CONTROLS),
    "export_note",
    "export_btn",
    "revision",
)


def layout(c: dict) -> None:
    c["progress"] = gr.HTML(progress_html(None, None, None, None, None), elem_id="gal-progress")
    with gr.Row():
        c["cancel_btn"] = gr.Button(
            "Cancel the running job", variant="stop", elem_id="gal-cancel", scale=0, interactive=False
        )
        c["resume_btn"] = gr.Button("Continue the run", elem_id="gal-resume", scale=0, interactive=False)
    gr.Markdown(
        "Training and generation run in one background worker (one model), so the page stays "
        "usable; this page polls every second. Cancelling keeps everything saved: "
        "**Continue** resumes from the last finished step."
    )


def connect(c: dict, h, open_names: tuple) -> None:
    wire(c["timer"].tick, h.tick, [c["run_id"], c["seen"], c["revision"]], TICK_OUTPUTS, c,
         show_progress="hidden", concurrency_id="poll", trigger_mode="always_last",
         api_visibility="private")  # fmt: skip
    wire(c["cancel_btn"].click, h.cancel, c["run_id"], ("progress",), c, api_name="cancel")
    wire(c["resume_btn"].click, h.resume, c["run_id"], open_names, c, api_name="resume")


class ProgressHandlers:
    """The poll, Cancel and Continue (mixed into ``ui.handlers.Handlers``)."""

    def _key(self, run: dict, rnd: dict | None) -> str:
        job = self.worker.state(run["run_id"])
        return (
            f"{run['run_id']}|{run['status']}|{run['current_round']}|"
            f"{rnd['state'] if rnd else ''}|{rnd['mode'] if rnd else ''}|{job or ''}"
        )

    def _progress(self, run: dict, rnd: dict | None) -> dict:
        run_id = run["run_id"]
        job_state = self.worker.state(run_id)
        err = self.worker.errors.get(run_id)
        job = self.studio.job(run_id) if job_state == "running" else None
        busy = self.worker.busy_with() if job_state == "queued" else None
        curves = self.studio.loss_curves(run_id)
        full = progress_html(run, rnd, job, job_state, err, busy_with=busy, curves=curves)
        if job is None:  # every round's loss curve and the last job's log stay after it ends
            full += charts.training_chart([], curves)
            full += log_html((self.studio.job(run_id) or {}).get("log") or [])
        mini = (
            progress_html(run, rnd, job, job_state, err, compact=True, busy_with=busy)
            if (job_state or err)
            else ""
        )
        return {"progress": full, "progress_mini": mini}

    def controls(self, run: dict | None, rnd: dict | None) -> dict:
        """``interactive`` of each control in CONTROLS: verdict buttons and Commit only while a round is in
        review, Continue only when the run stopped mid-round, Cancel only while a job runs or waits."""
        job = self.worker.state(run["run_id"]) if run else None
        in_review = bool(run and rnd and rnd["state"] == "review" and run["status"] == "awaiting_review")
        resumable = bool(run and run["status"] in ("active", "failed", "cancelled") and not job)
        on = dict.fromkeys(CONTROLS, in_review)
        on.update(resume=resumable, cancel=bool(job))
        return {f"{name}_btn": gr.update(interactive=on[name]) for name in CONTROLS}

    def tick(self, run_id: str | None, seen: str, revision=None, request: gr.Request | None = None) -> dict:
        """The 1 s poll: progress while a job runs; the whole page when the run's state changed; and a grid
        patch when the round's verdicts changed (``revision``: the latest decision id this page was sent),
        so a verdict given in another tab (or by ``gal decide``) shows here within the next poll."""
        if not run_id:
            return {}
        try:
            run, rnd = self.studio.snapshot(run_id)
            rev = self.studio.revision(run_id, rnd["round_index"]) if rnd else 0
        except ValueError:
            return {}
        key = self._key(run, rnd)
        running = self.worker.state(run_id) is not None
        if key == seen:
            out = self._progress(run, rnd) if running else {}
            if rnd and rnd["state"] == "review" and revision is not None and rev != revision:
                session = getattr(request, "session_hash", None)
                with self._read_lock:
                    own = session is not None and self._sent.get(session) == rev
                if not own:  # another tab's (or the CLI's) verdicts: send them
                    view = self.review(run_id, patch=True, request=request)
                    out.update(
                        {k: view[k] for k in ("counters", "preview", "patch", "commit_btn") if k in view}
                    )
                out["revision"] = rev
            return out
        view, controls = self.review(run_id, request=request), self.controls(run, rnd)
        if "commit_btn" in view:  # the label (finish or train the next) with the control's interactive
            controls["commit_btn"] = {**controls["commit_btn"], "value": view.pop("commit_btn")["value"]}
        export = self.export_view(run_id)
        return {
            **self._progress(run, rnd),
            "header": render.header_html(run, rnd, self.worker.state(run_id)),
            "seen": key,
            **view,
            **({"mode": rnd["mode"]} if rnd else {}),
            **controls,
            "export_note": export["export_note"],
            "export_btn": export["export_btn"],
            "revision": rev,
        }

    def cancel(self, run_id: str | None) -> dict:
        run_id = self._require(run_id)
        what = self.worker.cancel(run_id)
        if what == "idle":
            info("no job is running for this run")
        else:
            info("cancelling: the job stops at its next step; what was saved is kept")
        run, rnd = self.studio.snapshot(run_id)
        return {"progress": self._progress(run, rnd)["progress"]}

    def resume(self, run_id: str | None) -> dict:
        run_id = self._require(run_id)
        run, _ = self.studio.snapshot(run_id)
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


# -- the HTML ----------------------------------------------------------------------------------


def eta_text(seconds) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"~{seconds} s left"
    return f"~{seconds // 60} min {seconds % 60:02d} s left"


def progress_html(
    run: dict | None,
    round_row: dict | None,
    job: dict | None,
    job_state: str | None,
    error: str | None,
    compact: bool = False,
    busy_with: str | None = None,
    curves: dict[int, list[float]] | None = None,
) -> str:
    """The progress line (``compact``: the one on the Review tab); the full one draws the training view
    (``curves``: finished rounds' losses, ``Studio.loss_curves``) beside the live job."""
    if run is None:
        return '<div class="gal-progress gal-muted">No run open.</div>'
    status, r = run["status"], run["current_round"]
    state = round_row["state"] if round_row else "?"
    steps = "".join(
        '<span class="'
        f"{'now' if s == state else ('done' if ROUND_STEPS.index(s) < ROUND_STEPS.index(state) else '')}"
        f'">{s}</span>'
        for s in ROUND_STEPS
        if state in ROUND_STEPS
    )
    stages = "" if compact else f'<div class="gal-stages" aria-label="round steps">{steps}</div>'
    if job_state == "running" and job and job.get("total"):
        done, total = job.get("done", 0), job.get("total", 0)
        share = done / total if total else 0.0
        info = job.get("info") or {}
        loss = f" · loss {info['loss']:.3g}" if isinstance(info.get("loss"), (int, float)) else ""
        stage = STAGE_NAMES.get(job.get("stage"), job.get("stage", "working"))
        fresh = time.time() - job.get("updated", time.time())
        stale = f" · last update {fresh:.0f} s ago" if fresh > 10 else ""
        extra = (
            ""
            if compact
            else (
                charts.training_chart(job.get("losses") or [], curves, r)
                + previews_html(job.get("previews") or [])
                + log_html(job.get("log") or [])
            )
        )
        return (
            f'<div class="gal-progress" data-stage="{esc(job.get("stage"))}" '
            f'data-done="{done}" data-total="{total}">'
            f'<div><span class="stage">Round {r}: {esc(stage)}</span> — {done}/{total} ({share:.0%}) · '
            f"{esc(eta_text(job.get('eta')))}{loss}{stale}</div>"
            f'<div class="gal-bar" role="progressbar" aria-valuenow="{done}" aria-valuemax="{total}">'
            f'<span style="width:{share:.1%}"></span></div>{stages}{extra}</div>'
        )
    if job_state == "running":
        return (
            f'<div class="gal-progress"><span class="stage">Round {r}: {esc(state)}…</span> '
            f"starting{stages}</div>"
        )
    if job_state == "queued":
        return (
            f'<div class="gal-progress" data-waiting="1">Round {r} waits: the model worker finishes '
            f"{'run ' + esc(busy_with) if busy_with and busy_with != run['run_id'] else 'another run'} "
            f"first, then trains this one.{stages}</div>"
        )
    if error:
        said = (
            esc(error)
            if error.split(" ", 1)[0].rstrip(":") == status
            else f"<b>{esc(status)}</b>: {esc(error)}"
        )
        text = (
            f"{said}. What was saved is kept — press <b>Continue</b> to resume from the last saved step "
            "(training resumes at its last saved step, train.checkpoint_every)."
        )
        return f'<div class="gal-progress">{message(text, "error")}{stages}</div>'
    texts = {
        "awaiting_review": f"Round {r} awaits your review on the Review tab.",
        "finished": "The run is finished. See History, and Export the result.",
        "cancelled": f"Round {r} was cancelled at the {state} step. Continue resumes from there.",
        "failed": f"Round {r} failed at the {state} step"
        f"{': ' + esc(round_row.get('error')) if round_row and round_row.get('error') else ''}. "
        "Continue retries it.",
        "active": f"Round {r} is at the {state} step and no job is running (the app was restarted?). "
        "Continue resumes it.",
    }
    kind = (
        "error"
        if status in ("failed", "cancelled")
        else ("ok" if status in ("finished", "awaiting_review") else "")
    )
    return (
        f'<div class="gal-progress" data-status="{esc(status)}">'
        f"{message(esc(texts.get(status, status)), kind)}{stages}</div>"
    )


def previews_html(paths: list[str]) -> str:
    """The latest preview images drawn during training (train.preview_every)."""
    if not paths:
        return ""
    images = "".join(
        f'<img src="{esc(file_url(p))}" alt="preview {i + 1}" width="96" height="96">'
        for i, p in enumerate(paths)
    )
    return f'<div class="gal-previews" aria-label="training previews">{images}</div>'


def log_html(lines: list[str]) -> str:
    """The job's log, newest last, in a scrolling pane."""
    if not lines:
        return ""
    return f'<pre class="gal-log" aria-label="job log">{esc(chr(10).join(lines[-40:]))}</pre>'
