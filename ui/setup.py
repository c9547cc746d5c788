"""The Set up tab: reference images and their prompts, the settings (built from ``gal.fields``), presets.

``widget(field, value)`` is the only place a field row becomes a component; ``layout`` places each group of
rows where the page shows it, so a new row in ``gal.fields.FIELDS`` appears, parses and saves by itself.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from gal.engine import is_mask
from gal.fields import (
    DEFAULT_SUBJECT,
    config_from_form,
    default_form,
    field_names,
    fields,
    form_from_config,
    form_from_saved,
    paper_presets,
)
from ui import render
from ui.common import info, user_errors, warn, wire
from ui.references import (
    TABLE_HEADERS,
    _paths,
    _rows,
    builtin_model_warning,
    demo_hashes,
    reference_table,
    references_from,
    single_reference_hint,
)

# What a model's family fills when the Model field is left (the family's defaults).
FAMILY_FIELDS = ("resolution", "learning_rate", "rank", "gen_steps", "guidance")
SETUP_OUTPUTS = ("files", "gallery", "table")  # what loading a set-up fills besides the form


def _form(values) -> dict:
    return dict(zip(field_names(), values, strict=True))


def widget(f, value) -> gr.components.Component:
    """One field row as its component (elem_id ``gal-f-<name>``: stable handles for the browser tests)."""
    common = {"label": f.label, "info": f.help, "elem_id": f"gal-f-{f.name.replace('_', '-')}"}
    if f.widget == "number":
        return gr.Number(value=value, min_width=140, **common)
    if f.widget == "radio":
        return gr.Radio(list(f.choices), value=value, **common)
    if f.widget == "checkbox":
        return gr.Checkbox(value, **common)
    if f.widget == "lines":
        return gr.Textbox(value, lines=f.lines or 4, max_lines=f.max_lines or 20, **common)
    if f.widget == "text":
        return gr.Textbox(value, **common)
    raise ValueError(f"field {f.name}: unknown widget {f.widget!r} (text, lines, number, radio, checkbox)")


def _group(c: dict, form0: dict, group: str, judges: list[str] | None = None) -> None:
    for f in fields():
        if f.group == group:
            if f.name != "oracle" or not judges:
                c[f.name] = widget(f, form0[f.name])
            else:  # the judges on offer (issue 27); any spec may still be typed
                value = form0[f.name]
                c[f.name] = gr.Dropdown(
                    list(dict.fromkeys([value, *judges])) if value else judges,
                    value=value,
                    allow_custom_value=True,
                    filterable=True,
                    label=f.label,
                    info=f.help,
                    elem_id="gal-f-oracle",
                )


GROUPS = ("subject", "anchors", "eval", "models", "strategy", "gal", "run", "more", "more2")


def layout(c: dict, h, form0: dict) -> None:
    """The Set up tab's components into the registry ``c`` (field rows under their names)."""
    unplaced = {f.group for f in fields()} - set(GROUPS)
    if unplaced:
        raise ValueError(f"field groups {sorted(unplaced)} have no place on the page: one of {GROUPS}")
    with gr.Row(equal_height=True, elem_id="gal-setup-run-row"):
        c["setup_run"] = gr.HTML(setup_run_html(None), elem_id="gal-setup-run")
        c["setup_use_btn"] = gr.Button(
            "Use the open run's settings",
            size="sm",
            scale=0,
            min_width=220,
            elem_id="gal-setup-use",
            visible=False,
        )
    with gr.Row():
        c["demo_btn"] = gr.Button(
            "Use the built-in demo", elem_id="gal-demo", variant="secondary", scale=0, min_width=240
        )
        gr.Markdown(
            "Fills every field with the offline toy-world scenario (a rainbow-striped star, "
            "always photographed on stairs), ready to start."
        )
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            c["files"] = gr.File(
                label="Reference images — drop several at once",
                file_count="multiple",
                file_types=["image"],
                type="filepath",
                elem_id="gal-files",
            )
            c["table"] = reference_table(
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
                column_widths=["22%", "39%", "39%"],  # "image" broke as "imag e" at 1280 px
            )
        with gr.Column(scale=2):
            c["gallery"] = gr.Gallery(
                label="Preview",
                columns=4,
                height=260,
                allow_preview=True,
                object_fit="contain",
                elem_id="gal-ref-preview",
            )
    with gr.Row():
        _group(c, form0, "subject")
    with gr.Row():
        with gr.Column():
            _group(c, form0, "anchors")
            c["preset_btn"] = gr.Button("Reload the paper's 18 anchors for this task", size="sm")
        with gr.Column():
            _group(c, form0, "eval")
            with gr.Row():
                _group(c, form0, "models", h.studio.judges())
            # the detected family (SD 1.x/2.x, SDXL, FLUX.1) and the defaults it filled
            c["model_family"] = gr.HTML("", elem_id="gal-model-family")
    _group(c, form0, "strategy")
    with gr.Row():
        _group(c, form0, "gal")
    with gr.Row():
        _group(c, form0, "run")
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            _group(c, form0, "more")
        with gr.Row():
            _group(c, form0, "more2")
    # the Start bar sticks to the bottom of the window: at 1280×800 Start sat ~1,900 px down the form
    with gr.Column(elem_id="gal-start-bar"):
        c["validation"] = gr.HTML(
            h.validate_setup(None, None, *(form0[n] for n in field_names())), elem_id="gal-validation"
        )
        c["start_btn"] = gr.Button("Start run", variant="primary", elem_id="gal-start")
    with gr.Row(equal_height=True):
        c["preset_name"] = gr.Textbox(
            label="Preset name",
            placeholder="e.g. my cat, 4 rounds",
            scale=2,
            elem_id="gal-preset-name",
            info="saves every field, the images and their prompts",
        )
        c["preset_save"] = gr.Button("Save as preset", size="sm", scale=0, elem_id="gal-preset-save")
        c["preset_dd"] = gr.Dropdown(
            choices=[],
            label="Saved presets",
            scale=2,
            elem_id="gal-preset-dd",
            info="JSON files in <runs>/presets/",
        )
        c["preset_load"] = gr.Button("Load preset", size="sm", scale=0, elem_id="gal-preset-load")


def connect(demo: gr.Blocks, c: dict, h, open_names: tuple) -> None:
    form = [c[n] for n in field_names()]
    filled = (*SETUP_OUTPUTS, *field_names(), "validation")
    wire(c["files"].change, h.files_changed, [c["files"], c["table"]], ("gallery", "table"), c,
         show_progress="hidden")  # fmt: skip
    wire(c["task"].input, h.task_changed, [c["task"], c["subject_phrase"]],
         ("anchors", "eval_prompts", "subject_phrase"), c)  # fmt: skip
    wire(c["preset_btn"].click, h.preset_anchors, c["task"], ("anchors",), c)

    def on_model(fn, inputs, outputs, **kw):
        return gr.on([c["model"].blur, c["model"].submit], fn, inputs, outputs, **kw)

    wire(
        on_model,
        h.model_changed,
        [c["model"], *(c[n] for n in FAMILY_FIELDS)],
        ("model_family", *FAMILY_FIELDS),
        c,
        show_progress="hidden",
        api_name="model_family",
    )
    gr.on(
        [x.change for x in (c["files"], c["table"], *form)],
        h.validate_setup,
        [c["files"], c["table"], *form],
        c["validation"],
        show_progress="hidden",
        trigger_mode="always_last",
        api_visibility="private",
    )
    gr.on(
        [x.blur for x in form if hasattr(x, "blur")],
        h.check_field,
        form,
        None,
        show_progress="hidden",
        trigger_mode="always_last",
        api_visibility="private",
    )
    wire(c["setup_use_btn"].click, h.use_run_settings, [c["run_id"], c["files"], c["table"]],
         (*field_names(), "validation"), c, api_name="use_run_settings")  # fmt: skip
    wire(c["demo_btn"].click, h.demo_fill, c["task"], filled, c, api_name="demo")
    # Start and Save take the form raw (preprocess=False): the field table's parsers check every value's
    # type and name the field ("m must be a number, got 'abc'"), where Gradio's own checks fail unnamed
    wire(c["start_btn"].click, h.start_run, [c["files"], c["table"], *form], open_names, c,
         api_name="start_run", preprocess=False)  # fmt: skip
    wire(c["preset_save"].click, h.save_preset, [c["preset_name"], c["files"], c["table"], *form],
         ("preset_dd",), c, api_name="save_preset", preprocess=False)  # fmt: skip
    wire(c["preset_load"].click, h.load_preset, c["preset_dd"], filled, c, api_name="load_preset")
    wire(demo.load, h.presets, None, ("preset_dd",), c, show_progress="hidden")


def setup_run_html(run: dict | None, round_row: dict | None = None) -> str:
    """What the Set up tab says about the open run: which one it is and that Start makes a new run."""
    if run is None:
        return render.message("No run is open: the settings below start a new one.")
    config = run.get("config") or {}
    rounds = (config.get("gal") or {}).get("max_rounds", "?")
    where = f"round {run['current_round']}/{rounds}" + (f" · {round_row['state']}" if round_row else "")
    text = (
        f"Open: run {render.run_title(run)} ({render.esc(config.get('task', ''))}, "
        f"{render.esc(config.get('model', ''))}, {render.esc(run['status'].replace('_', ' '))}, "
        f"{render.esc(where)}). Start below makes a <b>new</b> run; the open run's settings can fill the "
        "form."
    )
    return f'<div data-run="{render.esc(run["run_id"])}">{render.message(text, "ok")}</div>'


class SetupHandlers:
    """The Set up tab's events (mixed into ``ui.handlers.Handlers``)."""

    def validate_form(self, *values) -> str:
        """The settings alone (no images): ✓ or the first problem with its fix."""
        try:
            config_from_form(_form(values))
        except ValueError as err:
            return render.message(f"✗ {render.esc(err)}", "error")
        return render.message("✓ Ready: these settings are valid.", "ok")

    def validate_setup(self, files, table, *values) -> str:
        """What Start would say, as the person types: the settings, then the reference images and their
        prompts (each must hold the SoI token). "✓ Ready" only when Start would start."""
        form = _form(values)
        problems = []
        try:
            config = config_from_form(form)
        except ValueError as err:
            problems.append(str(err))
            config = None
        token = config.soi_token if config else str(form.get("soi_token") or "").strip()
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
        ready = render.message(
            f"✓ Ready: {len(refs)} reference image{'s' if len(refs) != 1 else ''} with prompts, "
            f"{len(config.anchors)} anchors, settings valid.",
            "ok",
        )
        return ready + single_reference_hint(refs) + self.builtin_model_warning(config, refs)

    def builtin_model_warning(self, config, refs) -> str:
        """Issue 26.3: own photos on a built-in tiny/toy model (``ui.references.builtin_model_warning``)."""
        if getattr(self, "_demo_sha", None) is None:
            self._demo_sha = demo_hashes(self.studio)
        return builtin_model_warning(self.studio, config, refs, self._demo_sha)

    def setup_view(self, run_id: str | None) -> dict:
        """The Set up tab's line about the open run (and its 'Use the open run's settings' button)."""
        if not run_id:
            return {"setup_run": setup_run_html(None), "setup_use_btn": gr.update(visible=False)}
        run, rnd = self.studio.snapshot(run_id)
        return {"setup_run": setup_run_html(run, rnd), "setup_use_btn": gr.update(visible=True)}

    @user_errors
    def use_run_settings(self, run_id: str | None, files=None, table=None) -> dict:
        """Fill every field from the open run's settings (the images and prompts stay as they are)."""
        if not run_id:
            raise ValueError("no run is open: open one from the Runs tab first")
        run, _ = self.studio.snapshot(run_id)
        form = form_from_saved(run["config"])
        values = [form[n] for n in field_names()]
        return {**form, "validation": self.validate_setup(files, table, *values)}

    def check_field(self, *values) -> None:
        """Leaving a field with an invalid form: say why at once (a toast), besides the panel above Start."""
        try:
            config_from_form(_form(values))
        except ValueError as err:
            warn(str(err), duration=6)

    # -- presets: a named set-up saved as JSON under <runs>/presets (gal.presets) -----------------
    def presets(self) -> dict:
        names = self.studio.presets.names()
        return {"preset_dd": gr.Dropdown(choices=names, value=names[-1] if names else None)}

    @user_errors
    def save_preset(self, name: str, files, table, *values) -> dict:
        """Save the set-up (every field, the reference images and their prompts) as preset ``name``."""
        store = self.studio.presets
        n = store.save(name, _form(values), _paths(files), _rows(table))
        name = name.strip()
        info(f"saved preset {name!r} ({n} images) in {store.folder}")
        return {"preset_dd": gr.Dropdown(choices=store.names(), value=name)}

    @user_errors
    def load_preset(self, name: str | None) -> dict:
        """Fill the form, the images and their prompts from preset ``name``."""
        data = self.studio.presets.load(name)
        form = {**default_form(self.studio.default_model, self.studio.default_oracle), **data["form"]}
        return self._fill(data["images"], data["table"], form)

    def _fill(self, paths: list[str], table: list[list], form: dict) -> dict:
        values = [form[n] for n in field_names()]
        return {
            "files": paths,
            "gallery": paths,
            "table": table,
            **{n: form[n] for n in field_names()},
            "validation": self.validate_setup(paths, table, *values),
        }

    @user_errors
    def files_changed(self, files, table) -> dict:
        """New uploads: a preview, and one table row per image (kept rows keep what was typed)."""
        paths = _paths(files)
        typed = {str(r[0]): r for r in _rows(table) if r}
        rows = []
        for p in (p for p in paths if not is_mask(p)):  # a mask upload gets no row: it goes with its image
            name = Path(p).name
            old = typed.get(name)
            rows.append(
                [name, old[1] if old and len(old) > 1 else "", old[2] if old and len(old) > 2 else ""]
            )
        return {"gallery": paths, "table": rows}

    def task_changed(self, task: str, subject_phrase: str) -> dict:
        """Switching object/style loads that task's paper presets (18 anchors, held-out prompts)."""
        presets = paper_presets()
        subject = subject_phrase
        if not (subject_phrase or "").strip() or subject_phrase in DEFAULT_SUBJECT.values():
            subject = DEFAULT_SUBJECT[task]
        return {
            "anchors": "\n".join(presets[task]),
            "eval_prompts": "\n".join(presets["eval"][task]),
            "subject_phrase": subject,
        }

    def model_changed(self, model: str, *current) -> dict:
        """Leaving the Model field: name the model family it is and fill that family's defaults
        (resolution, learning rate, rank, sampling steps, guidance) — for full-size models; the built-in
        tiny and toy models keep the settings they were made for. ``current``: the fields' values now."""
        spec = (model or "").strip()
        if not spec:
            return {
                "model_family": render.message(
                    "Model: enter tiny, toy, a hub id or a local diffusers folder", "warn"
                )
            }
        try:
            label, d = self.studio.model_defaults(spec)
        except ValueError as err:
            return {"model_family": render.message(f"✗ Model: {render.esc(err)}", "error")}
        if d is None:
            note = f"{label}: the built-in {render.esc(spec)} model keeps its settings"
            return {"model_family": render.message(note, "ok")}
        filled = (d.resolution, d.learning_rate, d.rank, d.steps, d.guidance_scale)
        note = (
            f"{label}: filled its defaults — {d.resolution} px, lr {d.learning_rate:g}, "
            f"rank {d.rank}, "
            f"{d.steps} sampling steps, guidance {d.guidance_scale:g}, sampler {render.esc(d.scheduler)}. "
            f"24 GB: {render.esc(self.studio.model_recipe(spec))} — applied on CUDA unless you set them"
        )
        return {"model_family": render.message(note, "ok"), **dict(zip(FAMILY_FIELDS, filled, strict=True))}

    def preset_anchors(self, task: str) -> dict:
        return {"anchors": "\n".join(paper_presets()[task])}

    def demo_fill(self, task: str | None = "object") -> dict:
        """'Use the built-in demo': the toy-world scenario's images, prompts and settings in the form."""
        task = task if task in ("object", "style") else "object"
        config, refs = self.studio.demo(task)
        paths = [str(r.path) for r in refs]
        table = [[Path(r.path).name, r.prompt, r.non_soi_text or ""] for r in refs]
        return self._fill(paths, table, form_from_config(config))

    @user_errors
    def start_run(self, files, table, *values) -> dict:
        config = config_from_form(_form(values))
        run_id = self.studio.create_run(config, references_from(files, table, config.soi_token))
        self.worker.submit(run_id)
        if self.worker.state(run_id) != "queued":  # a wait is said once, on the progress line (issue 26.7)
            info(
                f"Run {run_id} started: round 1 trains now; its images appear on the Review tab.", duration=5
            )
        return self.open(run_id, tab="review")
