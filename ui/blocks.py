"""The page: tabs Set up, Review, Progress, History, Runs, Export, wired to ``ui.handlers.Handlers``.

``build(studio)`` returns the ``gr.Blocks`` and never launches; ``app.py`` launches it with
``launch_kwargs()`` (Gradio 6 takes css/head/theme in ``launch()``; the files are in ``ui/static/``).
The only session state is the open run's id (``gr.State``), mirrored into the address as ``?run=ID``;
the rest is read from SQLite.
"""

from __future__ import annotations

import gradio as gr

from gal.engine import Studio
from ui import assets, render
from ui.handlers import (
    CONTROLS,
    DEFAULT_EXPORT,
    FORM_FIELDS,
    RUN_HEADERS,
    STRATEGY_CHOICES,
    TABLE_HEADERS,
    Handlers,
    default_form,
    export_choices,
)
from ui.worker import Worker

POLL_SECONDS = 1.0
REVIEW = {
    "concurrency_id": "review",
    "concurrency_limit": 1,
    "trigger_mode": "multiple",
    "show_progress": "hidden",
}


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


def _number(label: str, value, info: str, **kw) -> gr.Number:
    return gr.Number(value=value, label=label, info=info, min_width=140, **kw)


def build(studio: Studio, worker: Worker | None = None) -> gr.Blocks:
    handlers = Handlers(studio, worker)
    form0 = default_form(studio.default_model, studio.default_oracle)

    with gr.Blocks(title="GAL Studio") as demo:
        demo.gal_handlers = handlers  # for tests and the benchmark: the same worker the page uses
        run_state = gr.State(None)  # the open run's id: the only session state
        seen = gr.State("")  # what the page last rendered (the timer re-renders on a change)
        revision = gr.State(
            None
        )  # the round's latest decision id this page was sent (the poll patches on a change)
        run_box = gr.Textbox(visible="hidden", elem_id="gal-run-box", label="run id")
        header = gr.HTML(render.header_html(None), elem_id="gal-header")
        timer = gr.Timer(POLL_SECONDS)

        with gr.Tabs(selected="setup", elem_id="gal-tabs") as tabs:
            # ---------------------------------------------------------------- Set up
            with gr.Tab("Set up", id="setup", elem_id="gal-tab-setup"):
                with gr.Row():
                    demo_btn = gr.Button(
                        "Use the built-in demo",
                        elem_id="gal-demo",
                        variant="secondary",
                        scale=0,
                        min_width=240,
                    )
                    gr.Markdown(
                        "Fills every field with the offline toy-world scenario (a rainbow-striped star, "
                        "always photographed on stairs), ready to start."
                    )
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        files = gr.File(
                            label="Reference images — drop several at once",
                            file_count="multiple",
                            file_types=["image"],
                            type="filepath",
                            elem_id="gal-files",
                        )
                        table = gr.Dataframe(
                            headers=TABLE_HEADERS,
                            datatype=["str", "str", "str"],
                            column_count=3,
                            type="array",
                            static_columns=[0],
                            interactive=True,
                            label="Per image: its prompt, and the non-SoI caption — what the "
                            "model must NOT learn (e.g. 'a cat on the stairs'; "
                            "empty: the prompt without the token)",
                            elem_id="gal-ref-table",
                            wrap=True,
                        )
                    with gr.Column(scale=2):
                        gallery = gr.Gallery(
                            label="Preview",
                            columns=4,
                            height=260,
                            allow_preview=True,
                            object_fit="contain",
                            elem_id="gal-ref-preview",
                        )
                f: dict[str, gr.components.Component] = {}
                with gr.Row():
                    f["task"] = gr.Radio(
                        ["object", "style"],
                        value=form0["task"],
                        label="Task",
                        info="object: a subject (your cat); style: a look (watercolour)",
                    )
                    f["soi_token"] = gr.Textbox(
                        form0["soi_token"],
                        label="SoI token",
                        info="the new word bound to your subject, e.g. <sks>",
                    )
                    f["subject_phrase"] = gr.Textbox(
                        form0["subject_phrase"],
                        label="Subject phrase",
                        info="fills {} in the anchors, e.g. 'a <sks> cat'",
                    )
                    f["oracle_subject"] = gr.Textbox(
                        form0["oracle_subject"],
                        label="Oracle subject",
                        info="fills {} for CLIP; empty: the phrase without the token",
                    )
                with gr.Row():
                    with gr.Column():
                        f["anchors"] = gr.Textbox(
                            form0["anchors"],
                            lines=9,
                            max_lines=30,
                            label="Anchors — one per line",
                            info="prompt directions to explore; {} is the subject phrase "
                            "(the paper's 18 are loaded for the task)",
                        )
                        preset_btn = gr.Button("Reload the paper's 18 anchors for this task", size="sm")
                    with gr.Column():
                        f["eval_prompts"] = gr.Textbox(
                            form0["eval_prompts"],
                            lines=6,
                            max_lines=20,
                            label="Held-out evaluation prompts — one per line",
                            info="never anchors: TXT-ALN / IMG-ALN / OVF are measured on them",
                        )
                        with gr.Row():
                            f["model"] = gr.Textbox(
                                form0["model"],
                                label="Model",
                                info="tiny, toy, a hub id or a local diffusers folder "
                                "(SD 1.x/2.x, SDXL, FLUX.1)",
                            )
                            f["oracle"] = gr.Textbox(
                                form0["oracle"],
                                label="Oracle",
                                info="tiny, toy, ViT-B-32/openai or an open_clip folder",
                            )
                        # the detected family (SD 1.x/2.x, SDXL, FLUX.1) and the defaults it filled
                        model_family = gr.HTML("", elem_id="gal-model-family")
                f["strategy"] = gr.Radio(
                    STRATEGY_CHOICES,
                    value=form0["strategy"],
                    label="Strategy (Table 1)",
                    info="which images a round adds, and how much they weigh",
                )
                with gr.Row():
                    f["m"] = _number("m", form0["m"], "images drawn per anchor each round (paper: 10)")
                    f["k"] = _number("k", form0["k"], "anchors picked per round (paper: 3)")
                    f["lam"] = _number(
                        "λ", form0["lam"], "Eq. 9: added images weigh Δ = λ·mean Ω (paper: 0.005)"
                    )
                    f["images_per_anchor"] = _number(
                        "images per picked anchor",
                        form0["images_per_anchor"],
                        "+diversity only: at most this many of a picked anchor's images are added, "
                        "each only if it raises diversity (1)",
                    )
                    f["rounds"] = _number("rounds", form0["rounds"], "at most this many rounds (paper: 4)")
                with gr.Row():
                    f["train_steps"] = _number(
                        "training steps", form0["train_steps"], "LoRA optimiser steps per round"
                    )
                    f["resolution"] = _number(
                        "resolution", form0["resolution"], "training size in px; 0 = the model's own"
                    )
                    f["seed"] = _number("seed", form0["seed"], "fixes every draw: same seed, same images")
                    f["gen_steps"] = _number(
                        "sampling steps", form0["gen_steps"], "denoising steps per image (paper: 50)"
                    )
                with gr.Accordion("More settings", open=False):
                    with gr.Row():
                        f["learning_rate"] = _number(
                            "learning rate", form0["learning_rate"], "LoRA learning rate"
                        )
                        f["rank"] = _number("LoRA rank", form0["rank"], "adapter rank r (alpha = r)")
                        f["train_batch"] = _number("training batch", form0["train_batch"], "images per step")
                        f["guidance"] = _number(
                            "guidance scale", form0["guidance"], "classifier-free guidance (paper: 7.5)"
                        )
                    with gr.Row():
                        f["gen_batch"] = _number(
                            "generation batch", form0["gen_batch"], "images per UNet batch"
                        )
                        f["eval_per_prompt"] = _number(
                            "eval images / prompt", form0["eval_per_prompt"], "images per held-out prompt"
                        )
                        f["lr_schedule"] = gr.Radio(
                            [("constant", "constant"), ("cosine", "cosine")],
                            value=form0["lr_schedule"],
                            label="Learning-rate schedule",
                            info="cosine: 5 % warm-up, then decay to 0; keeps long high-lr rounds stable",
                        )
                        f["reference_sampling"] = gr.Radio(
                            [("pooled (official)", "pooled"), ("real refs at round-1 rate", "real-rate")],
                            value=form0["reference_sampling"],
                            label="Batches of added images",
                            info="pooled: added images take batch slots from your references; "
                            "real-rate: your references train as in round 1, added ones on top "
                            "(try it when you accept many images: docs/bench/table1.md)",
                        )
                        f["captions"] = gr.Radio(
                            [("prompts", "plain"), ("informative (SID)", "informative")],
                            value=form0["captions"],
                            label="Training captions",
                            info="informative: your references' captions also name their non-SoI content, "
                            "added images are captioned by what the oracle sees in them (the exported "
                            "dataset keeps the captions trained on)",
                        )
                        f["adaptive_stop"] = gr.Checkbox(
                            form0["adaptive_stop"],
                            label="Adaptive stop (Eq. 10)",
                            info="finish early when fewer than k anchors are mixed",
                        )
                        f["name"] = gr.Textbox(
                            form0["name"], label="Run name", info="optional; shown in the Runs list"
                        )
                validation = gr.HTML(
                    handlers.validate_setup(None, None, *(form0[n] for n in FORM_FIELDS)),
                    elem_id="gal-validation",
                )
                start_btn = gr.Button("Start run", variant="primary", elem_id="gal-start")
                with gr.Row(equal_height=True):
                    preset_name = gr.Textbox(
                        label="Preset name",
                        placeholder="e.g. my cat, 4 rounds",
                        scale=2,
                        elem_id="gal-preset-name",
                        info="saves every field, the images and their prompts",
                    )
                    preset_save = gr.Button("Save as preset", size="sm", scale=0, elem_id="gal-preset-save")
                    preset_dd = gr.Dropdown(
                        choices=[],
                        label="Saved presets",
                        scale=2,
                        elem_id="gal-preset-dd",
                        info="JSON files in <runs>/presets/",
                    )
                    preset_load = gr.Button("Load preset", size="sm", scale=0, elem_id="gal-preset-load")
                form = [f[n] for n in FORM_FIELDS]
                for name, component in f.items():  # stable handles for the browser tests
                    component.elem_id = f"gal-f-{name.replace('_', '-')}"

            # ---------------------------------------------------------------- Review
            with gr.Tab("Review", id="review", elem_id="gal-tab-review"):
                # the sticky bar: counters, mode, Commit and the verdict buttons stay in view during a pass
                with gr.Column(elem_id="gal-sticky"):
                    progress_mini = gr.HTML("", elem_id="gal-progress-mini")
                    with gr.Row(equal_height=True):
                        counters = gr.HTML(render.counters_html(None), elem_id="gal-counters")
                        mode = gr.Radio(
                            ["auto", "human"],
                            value=None,
                            show_label=False,
                            scale=0,
                            min_width=170,
                            elem_id="gal-mode",
                        )
                        commit_btn = gr.Button(
                            "Commit round ▶ train the next",
                            variant="primary",
                            size="sm",
                            elem_id="gal-commit",
                            scale=0,
                            min_width=230,
                            interactive=False,
                        )
                    with gr.Group(visible=False, elem_id="gal-confirm") as confirm_box:
                        confirm_text = gr.HTML("", elem_id="gal-confirm-text")
                        with gr.Row():
                            confirm_yes = gr.Button(
                                "Yes, commit and train",
                                variant="primary",
                                size="sm",
                                elem_id="gal-commit-yes",
                                scale=0,
                                min_width=200,
                            )
                            confirm_no = gr.Button(
                                "Keep reviewing", size="sm", elem_id="gal-commit-no", scale=0, min_width=160
                            )
                    with gr.Row(equal_height=True):
                        accept_btn = gr.Button(
                            "✓ Aligned (a)",
                            size="sm",
                            elem_id="gal-btn-accept",
                            min_width=90,
                            interactive=False,
                        )
                        reject_btn = gr.Button(
                            "✗ Overfit (x)",
                            size="sm",
                            elem_id="gal-btn-reject",
                            min_width=90,
                            interactive=False,
                        )
                        skip_btn = gr.Button(
                            "– Skip (s)", size="sm", elem_id="gal-btn-skip", min_width=90, interactive=False
                        )
                        zoom_btn = gr.Button("⤢ Zoom (z)", size="sm", elem_id="gal-btn-zoom", min_width=90)
                        undo_btn = gr.Button(
                            "↶ Undo (u)", size="sm", elem_id="gal-btn-undo", min_width=90, interactive=False
                        )
                        redo_btn = gr.Button(
                            "↷ Redo (U)", size="sm", elem_id="gal-btn-redo", min_width=90, interactive=False
                        )
                        help_btn = gr.Button("Keys (?)", size="sm", elem_id="gal-btn-help", min_width=90)
                    gr.HTML(assets.HELP_HTML, elem_id="gal-help")
                with gr.Row(equal_height=False, elem_id="gal-tools"):
                    with gr.Column(scale=1, min_width=300):
                        with gr.Accordion("Order, filters, tile size", open=False, elem_id="gal-view"):
                            with gr.Row(equal_height=True, elem_id="gal-view-row"):
                                order = gr.Dropdown(
                                    [
                                        ("most mixed first (Ω)", "omega"),
                                        ("anchor index", "index"),
                                        ("most overfit first (β)", "beta"),
                                    ],
                                    value="omega",
                                    label="Order anchors",
                                    elem_id="gal-order",
                                    scale=1,
                                    min_width=200,
                                )
                                filters = gr.CheckboxGroup(
                                    [
                                        ("unreviewed", "unreviewed"),
                                        ("your overrides", "overrides"),
                                        ("oracle: overfit", "oracle-overfit"),
                                        ("oracle: aligned", "oracle-aligned"),
                                        ("mixed anchors only", "mixed"),
                                    ],
                                    value=[],
                                    label="Show only",
                                    elem_id="gal-filters",
                                    scale=3,
                                )
                                tile_size = gr.Slider(
                                    64,
                                    320,
                                    value=128,
                                    step=16,
                                    label="Tile size (px)",
                                    elem_id="gal-tile-size",
                                    scale=1,
                                    min_width=160,
                                )
                    with gr.Column(scale=1, min_width=300):
                        with gr.Accordion(
                            "Bulk actions (each is one undo step)", open=False, elem_id="gal-bulk"
                        ):
                            with gr.Row(equal_height=False):
                                oracle_btn = gr.Button(
                                    "Accept the oracle's verdicts on every image you have not judged",
                                    size="sm",
                                    elem_id="gal-accept-oracle",
                                    min_width=200,
                                    scale=2,
                                    interactive=False,
                                )
                                threshold = gr.Slider(
                                    -1.0,
                                    1.0,
                                    value=0.2,
                                    step=0.01,
                                    label="similarity threshold",
                                    info="sim(image, anchor), the first number on each tile",
                                    elem_id="gal-threshold",
                                    scale=2,
                                    min_width=200,
                                )
                                below_btn = gr.Button(
                                    "Mark every image you have not judged under the threshold overfit",
                                    size="sm",
                                    elem_id="gal-mark-below",
                                    min_width=200,
                                    scale=2,
                                    interactive=False,
                                )
                                overwrite = gr.Checkbox(
                                    False,
                                    label="also overwrite my own verdicts",
                                    elem_id="gal-overwrite",
                                    info="off: bulk actions touch only images you have not judged",
                                    scale=1,
                                )
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4):
                        grid = gr.HTML(
                            render.grid_html(None),
                            js_on_load=assets.GRID_JS,
                            elem_id="gal-grid",
                            apply_default_css=False,
                        )
                    with gr.Column(scale=1, min_width=240):
                        preview = gr.HTML(render.preview_html(None, None), elem_id="gal-preview")
                # verdict events send the grid's new state here as JSON; the grid's script applies it
                patch = gr.HTML(
                    "",
                    visible="hidden",
                    elem_id="gal-patch",
                    apply_default_css=False,
                    js_on_load=assets.PATCH_JS,
                )
                # The scripted path for a verdict (gradio_client, tests): "<image_id> <verdict>".
                decide_box = gr.Textbox(visible="hidden", elem_id="gal-decide-box")
                decide_btn = gr.Button("decide", visible="hidden", elem_id="gal-decide-btn")

            # ---------------------------------------------------------------- Progress
            with gr.Tab("Progress", id="progress", elem_id="gal-tab-progress"):
                progress = gr.HTML(render.progress_html(None, None, None, None, None), elem_id="gal-progress")
                with gr.Row():
                    cancel_btn = gr.Button(
                        "Cancel the running job",
                        variant="stop",
                        elem_id="gal-cancel",
                        scale=0,
                        interactive=False,
                    )
                    resume_btn = gr.Button(
                        "Continue the run", elem_id="gal-resume", scale=0, interactive=False
                    )
                gr.Markdown(
                    "Training and generation run in one background worker (one model), so the page stays "
                    "usable; this page polls every second. Cancelling keeps everything saved: "
                    "**Continue** resumes from the last finished step."
                )

            # ---------------------------------------------------------------- History
            with gr.Tab("History", id="history", elem_id="gal-tab-history") as history_tab:
                with gr.Row():
                    # points, not lines: a single round shows as a dot (a line of one point draws nothing)
                    txt_plot = gr.ScatterPlot(
                        x="round",
                        y="value",
                        title="TXT-ALN ↑",
                        y_title="text alignment",
                        x_title="round",
                        height=220,
                        elem_id="gal-plot-txt",
                    )
                    img_plot = gr.ScatterPlot(
                        x="round",
                        y="value",
                        title="IMG-ALN ↑",
                        y_title="subject fidelity",
                        x_title="round",
                        height=220,
                        elem_id="gal-plot-img",
                    )
                    ovf_plot = gr.ScatterPlot(
                        x="round",
                        y="value",
                        title="OVF ↓",
                        y_title="overfit rate",
                        x_title="round",
                        height=220,
                        elem_id="gal-plot-ovf",
                    )
                    delta_plot = gr.ScatterPlot(
                        x="round",
                        y="value",
                        title="Δ (Eq. 9)",
                        y_title="openness",
                        x_title="round",
                        height=220,
                        elem_id="gal-plot-delta",
                    )
                gr.HTML(render.METRICS_HELP, elem_id="gal-metrics-help")
                metrics_table = gr.HTML(elem_id="gal-metrics")
                refs_gallery = gr.Gallery(
                    label="References: the real ones, then those each round added",
                    columns=8,
                    height=240,
                    allow_preview=True,
                    elem_id="gal-refs",
                )
                anchor_dd = gr.Dropdown(
                    choices=[],
                    label="Compare one anchor across rounds (same seed per slot)",
                    elem_id="gal-compare-anchor",
                )
                compare = gr.HTML(elem_id="gal-compare")
                history_btn = gr.Button("Refresh", size="sm", scale=0)

            # ---------------------------------------------------------------- Runs
            with gr.Tab("Runs", id="runs", elem_id="gal-tab-runs") as runs_tab:
                gr.Markdown(
                    "Every run in the database. Click a row to open it; **Continue** resumes a stopped run."
                )
                runs_table = gr.Dataframe(
                    headers=RUN_HEADERS, interactive=False, elem_id="gal-runs", wrap=True
                )
                with gr.Row():
                    run_dd = gr.Dropdown(
                        choices=[],
                        label="Run",
                        elem_id="gal-run-dd",
                        scale=3,
                        allow_custom_value=True,
                        info="pick a run, or paste its id",
                    )
                    open_btn = gr.Button("Open", elem_id="gal-open", scale=0)
                    continue_btn = gr.Button("Continue", elem_id="gal-continue", scale=0)
                    runs_refresh = gr.Button("Refresh", scale=0)

            # ---------------------------------------------------------------- Export
            with gr.Tab("Export", id="export", elem_id="gal-tab-export"):
                formats = gr.CheckboxGroup(
                    export_choices(), value=DEFAULT_EXPORT, label="Formats", elem_id="gal-formats"
                )
                replace = gr.Checkbox(
                    False,
                    label="Replace the previous export",
                    elem_id="gal-replace",
                    info="the export folder is <run folder>/export",
                )
                export_note = gr.HTML(handlers.export_note(None), elem_id="gal-export-note")
                export_btn = gr.Button("Export", variant="primary", elem_id="gal-export")
                export_summary = gr.HTML(elem_id="gal-export-summary")
                export_file = gr.File(label="Download", elem_id="gal-export-file", interactive=False)

        # ------------------------------------------------------------------------ wiring
        controls = {
            "commit": commit_btn,
            "accept": accept_btn,
            "reject": reject_btn,
            "skip": skip_btn,
            "undo": undo_btn,
            "redo": redo_btn,
            "oracle": oracle_btn,
            "below": below_btn,
            "resume": resume_btn,
            "cancel": cancel_btn,
        }
        control_outputs = [controls[name] for name in CONTROLS]
        open_outputs = [
            run_state,
            run_box,
            header,
            tabs,
            grid,
            counters,
            preview,
            patch,
            mode,
            progress,
            progress_mini,
            seen,
            *control_outputs,
            export_note,
            revision,
        ]
        review_outputs = [grid, counters, preview, patch]

        demo.load(handlers.load, None, open_outputs, show_progress="hidden").then(
            handlers.runs, None, [runs_table, run_dd], show_progress="hidden"
        )
        run_box.change(None, run_box, None, js="(r) => window.gal && window.gal.syncUrl(r)")
        timer.tick(
            handlers.tick,
            [run_state, seen, revision],
            [
                progress,
                progress_mini,
                header,
                seen,
                grid,
                counters,
                preview,
                patch,
                mode,
                *control_outputs,
                revision,
            ],
            show_progress="hidden",
            concurrency_id="poll",
            trigger_mode="always_last",
            api_visibility="private",
        )

        # set-up
        files.change(handlers.files_changed, [files, table], [gallery, table], show_progress="hidden")
        f["task"].input(
            handlers.task_changed,
            [f["task"], f["subject_phrase"]],
            [f["anchors"], f["eval_prompts"], f["subject_phrase"]],
        )
        preset_btn.click(handlers.preset_anchors, f["task"], f["anchors"])
        family_fields = [f[n] for n in ("resolution", "learning_rate", "rank", "gen_steps", "guidance")]
        gr.on(
            [f["model"].blur, f["model"].submit],
            handlers.model_changed,
            [f["model"], *family_fields],
            [model_family, *family_fields],
            show_progress="hidden",
            api_name="model_family",
        )
        gr.on(
            [c.change for c in (files, table, *form)],
            handlers.validate_setup,
            [files, table, *form],
            validation,
            show_progress="hidden",
            trigger_mode="always_last",
            api_visibility="private",
        )
        gr.on(
            [c.blur for c in form if hasattr(c, "blur")],
            handlers.check_field,
            form,
            None,
            show_progress="hidden",
            trigger_mode="always_last",
            api_visibility="private",
        )
        demo_btn.click(
            handlers.demo_fill, f["task"], [files, gallery, table, *form, validation], api_name="demo"
        )
        start_btn.click(handlers.start_run, [files, table, *form], open_outputs, api_name="start_run")
        preset_save.click(
            handlers.save_preset, [preset_name, files, table, *form], preset_dd, api_name="save_preset"
        )
        preset_load.click(
            handlers.load_preset,
            preset_dd,
            [files, gallery, table, *form, validation],
            api_name="load_preset",
        )
        demo.load(handlers.presets, None, preset_dd, show_progress="hidden")

        # review: every verdict event shares one queue so they apply in the order they were made
        grid.select(handlers.select_tile, run_state, review_outputs, **REVIEW)
        decide_btn.click(
            handlers.decide, [run_state, decide_box], review_outputs, api_name="decide", **REVIEW
        )
        undo_btn.click(handlers.undo, run_state, review_outputs, api_name="undo", **REVIEW)
        redo_btn.click(handlers.redo, run_state, review_outputs, api_name="redo", **REVIEW)
        oracle_btn.click(
            handlers.accept_oracle, [run_state, overwrite], review_outputs, api_name="accept_oracle", **REVIEW
        )
        below_btn.click(
            handlers.mark_below,
            [run_state, threshold, overwrite],
            review_outputs,
            api_name="mark_below",
            **REVIEW,
        )
        mode.input(handlers.set_mode, [run_state, mode], review_outputs, api_name="set_mode", **REVIEW)
        # Commit asks once (what it adds, how many are unreviewed); only "Yes" writes
        commit_btn.click(
            handlers.commit_ask, [run_state, mode], [confirm_box, confirm_text], show_progress="hidden"
        )
        confirm_yes.click(
            handlers.commit,
            [run_state, mode],
            open_outputs,
            api_name="commit",
            concurrency_id="review",
            concurrency_limit=1,
        ).then(lambda: gr.update(visible=False), None, confirm_box, show_progress="hidden")
        confirm_no.click(lambda: gr.update(visible=False), None, confirm_box, show_progress="hidden")
        for button, k in ((accept_btn, "a"), (reject_btn, "x"), (skip_btn, "s"), (zoom_btn, "z")):
            button.click(
                None, None, None, js=f"() => {{ window.gal && window.gal.key && window.gal.key('{k}'); }}"
            )
        help_btn.click(None, None, None, js="() => { window.gal && window.gal.toggleHelp(); }")
        order.change(
            None, [order, filters], None, js="(o, f) => { window.gal.arrange && window.gal.arrange(o, f); }"
        )
        filters.change(
            None, [order, filters], None, js="(o, f) => { window.gal.arrange && window.gal.arrange(o, f); }"
        )
        tile_size.change(
            None, tile_size, None, js="(v) => { window.gal.tileSize && window.gal.tileSize(v); }"
        )

        # progress
        cancel_btn.click(handlers.cancel, run_state, progress, api_name="cancel")
        resume_btn.click(handlers.resume, run_state, open_outputs, api_name="resume")

        # history
        history_outputs = [
            txt_plot,
            img_plot,
            ovf_plot,
            delta_plot,
            metrics_table,
            refs_gallery,
            anchor_dd,
            compare,
        ]
        history_tab.select(
            handlers.history_page, [run_state, anchor_dd], history_outputs, show_progress="hidden"
        )
        history_btn.click(handlers.history_page, [run_state, anchor_dd], history_outputs, api_name="history")
        anchor_dd.input(
            handlers.history_page, [run_state, anchor_dd], history_outputs, show_progress="hidden"
        )

        # runs
        runs_tab.select(handlers.runs, None, [runs_table, run_dd], show_progress="hidden")
        runs_refresh.click(handlers.runs, None, [runs_table, run_dd], api_name="runs")
        runs_table.select(handlers.run_selected, None, open_outputs)
        open_btn.click(handlers.open_run, run_dd, open_outputs, api_name="open_run")
        continue_btn.click(handlers.continue_run, run_dd, open_outputs, api_name="continue_run")

        # export
        export_btn.click(
            handlers.export, [run_state, formats, replace], [export_file, export_summary], api_name="export"
        )
    return demo
