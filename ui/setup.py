"""The Set up tab: reference images and their prompts, the settings (built from ``gal.fields``), presets.

``widget(field, value)`` is the only place a field row becomes a component; ``layout`` places each group of
rows where the page shows it, so a new row in ``gal.fields.FIELDS`` appears, parses and saves by itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gradio as gr
from gradio.components.dataframe import DataframeData
from pydantic import ValidationError, model_validator

from gal.engine import ReferenceInput, is_mask, pair_masks
from gal.fields import (
    DEFAULT_SUBJECT,
    config_from_form,
    default_form,
    field_names,
    fields,
    form_from_config,
    paper_presets,
)
from ui import render
from ui.common import error, info, user_errors, warn, wire

TABLE_HEADERS = ["image", "prompt (with the SoI token)", "non-SoI caption (what the model must NOT learn)"]
# What a model's family fills when the Model field is left (the family's defaults).
FAMILY_FIELDS = ("resolution", "learning_rate", "rank", "gen_steps", "guidance")
SETUP_OUTPUTS = ("files", "gallery", "table")  # what loading a set-up fills besides the form


class _TableData(DataframeData):
    """The table as a script may send it: a value that is no table is kept aside (``metadata.invalid``)
    so the handler refuses it naming the field, instead of failing inside Gradio's validation."""

    @model_validator(mode="before")
    @classmethod
    def _keep_invalid(cls, value):
        try:
            DataframeData.model_validate(value)
        except ValidationError:
            return {"headers": [], "data": [], "metadata": {"invalid": [repr(value)[:80]]}}
        return value


def reference_table(**kwargs) -> gr.Dataframe:
    """The per-image prompts table: Gradio's Dataframe that takes ``None`` from a script as no rows and
    refuses a value that is no table naming the field. (Set on the instance: a subclass of a Gradio
    component makes Gradio write a ``.pyi`` stub beside this file on import.)"""
    table = gr.Dataframe(**kwargs)
    table.data_model = _TableData
    preprocess = table.preprocess

    def checked(payload):
        if payload is None:
            return []
        try:
            _rows(payload.model_dump())  # a value kept aside as no table: the error names the field
        except ValueError as err:
            raise error(err) from err
        return preprocess(payload)

    table.preprocess = checked
    return table


def _rows(table) -> list[list]:
    """The table's non-empty rows, from the page (rows), a script (``{"headers", "data"}``) or pandas."""
    if table is None:
        return []
    if hasattr(table, "values") and not isinstance(table, dict):  # a pandas DataFrame
        table = table.values.tolist()
    if isinstance(table, dict):
        invalid = (table.get("metadata") or {}).get("invalid")
        table = invalid[0] if invalid else (table.get("data") or [])
    if not isinstance(table, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in table):
        raise ValueError(
            f"the reference table must be rows of [image, prompt, non-SoI caption], got {str(table):.80}"
        )
    return [list(r) for r in table if any(str(c or "").strip() for c in r)]


def _paths(files) -> list[str]:
    """The files' paths, from the page (paths), a script (FileData dicts) or file objects."""
    if not files:
        return []
    if isinstance(files, (str, Path, dict)):
        files = [files]
    if not isinstance(files, (list, tuple)):
        raise ValueError(f"the reference images must be a list of files, got {type(files).__name__}")
    paths = []
    for f in files:
        path = (
            f.get("path")
            if isinstance(f, dict)
            else getattr(f, "name", None) or getattr(f, "path", None) or f
        )
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"the reference images must be image files, got {str(f):.80}")
        paths.append(str(path))
    return paths


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def references_from(files, table, soi_token: str | None = None) -> list[ReferenceInput]:
    """Pair the uploaded images with the table's rows (one row per image, in order); with ``soi_token``,
    every prompt must contain it (the token is what the model learns to bind to the subject)."""
    pairs, rows = pair_masks(_paths(files)), _rows(table)  # NAME.mask.png: NAME.png's loss mask, no row
    paths, masks = [str(p) for p, _ in pairs], [m for _, m in pairs]
    if not paths:
        raise ValueError("no reference images: drop at least one image of the subject or style above")
    if len(rows) != len(paths):
        raise ValueError(f"the table has {len(rows)} rows for {len(paths)} images: give each image one row")
    refs = []
    for i, (path, row) in enumerate(zip(paths, rows, strict=True), 1):
        prompt = str(row[1] if len(row) > 1 and row[1] is not None else "").strip()
        non_soi = str(row[2] if len(row) > 2 and row[2] is not None else "").strip() or None
        if not prompt:
            raise ValueError(
                f"image {i} ({Path(path).name}) has no prompt: describe it, e.g. 'a <sks> cat on the stairs'"
            )
        if soi_token and soi_token not in prompt:
            raise ValueError(
                f"image {i} ({Path(path).name})'s prompt {prompt!r} lacks the SoI token {soi_token}: "
                f"write it where the subject is, e.g. 'a {soi_token} cat on the stairs'"
            )
        refs.append(ReferenceInput(path, prompt, non_soi, masks[i - 1]))
    return refs


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
    wire(c["demo_btn"].click, h.demo_fill, c["task"], filled, c, api_name="demo")
    # Start and Save take the form raw (preprocess=False): the field table's parsers check every value's
    # type and name the field ("m must be a number, got 'abc'"), where Gradio's own checks fail unnamed
    wire(c["start_btn"].click, h.start_run, [c["files"], c["table"], *form], open_names, c,
         api_name="start_run", preprocess=False)  # fmt: skip
    wire(c["preset_save"].click, h.save_preset, [c["preset_name"], c["files"], c["table"], *form],
         ("preset_dd",), c, api_name="save_preset", preprocess=False)  # fmt: skip
    wire(c["preset_load"].click, h.load_preset, c["preset_dd"], filled, c, api_name="load_preset")
    wire(demo.load, h.presets, None, ("preset_dd",), c, show_progress="hidden")


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
        return ready + self.builtin_model_warning(config, refs)

    def _demo_hashes(self) -> set[str]:
        """The built-in demo's reference images by content (an upload is a copy under another name)."""
        if getattr(self, "_demo_sha", None) is None:
            found = set()
            for task in ("object", "style"):
                try:
                    found |= {_sha256(r.path) for r in self.studio.demo(task)[1]}
                except (OSError, ValueError):
                    pass
            self._demo_sha = found
        return self._demo_sha

    def builtin_model_warning(self, config, refs) -> str:
        """Issue 26.3: a person's own photos on a built-in tiny/toy model give meaningless grids (it draws
        32-px shapes from random weights): say so and name the fix. '' for the demo's images or a real
        model."""
        spec = str(config.model or "").strip()
        try:
            _, defaults = self.studio.model_defaults(spec)
        except ValueError:
            return ""
        if defaults is not None:  # a real model: its family's defaults exist
            return ""
        try:
            own = [r for r in refs if _sha256(r.path) not in self._demo_hashes()]
        except OSError:
            return ""
        if not own:
            return ""
        text = (
            f"⚠ Your own photos meet the built-in '{spec}' model: it is a tiny random-weight model for tests "
            "and the demo, drawing small shapes, so its images and verdicts will say nothing about your "
            "subject. Use a real model: enter a hub id or a local diffusers folder in Model (More settings), "
            "or start the app with --model, e.g. "
            "`./run.sh app --model stable-diffusion-v1-5/stable-diffusion-v1-5`."
        )
        return render.message(render.esc(text), "warn")

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
