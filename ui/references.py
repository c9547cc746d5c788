"""The reference images and their prompts table on the Set up tab: what the page, a script (gradio_client) or
a preset sends, read into ``ReferenceInput`` rows (each prompt must hold the SoI token)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gradio as gr
from gradio.components.dataframe import DataframeData
from pydantic import ValidationError, model_validator

from gal.engine import ReferenceInput, pair_masks
from ui import render
from ui.common import error

TABLE_HEADERS = ["image", "prompt (with the SoI token)", "non-SoI caption (what the model must NOT learn)"]


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


def single_reference_hint(refs) -> str:
    """One reference passes, but it is the hardest case: say what to expect and what helps."""
    if len(refs) != 1:
        return ""
    text = (
        "Only one reference image: the model sees the subject in one setting, so it tends to copy that "
        "photo's background and pose (overfit) and GAL has little to separate the subject from. 3-5 photos "
        "in different places work better; with one, describe its background in the non-SoI caption."
    )
    return render.message(render.esc(text), "warn")


def demo_hashes(studio) -> set[str]:
    """The built-in demo's reference images by content (an upload is a copy under another name)."""
    found = set()
    for task in ("object", "style"):
        try:
            found |= {_sha256(r.path) for r in studio.demo(task)[1]}
        except (OSError, ValueError):
            pass
    return found


def builtin_model_warning(studio, config, refs, demo: set[str]) -> str:
    """Issue 26.3: a person's own photos on a built-in tiny/toy model give meaningless grids (it draws
    32-px shapes from random weights): say so and name the fix. '' for the demo's images (``demo``: their
    hashes) or a real model."""
    spec = str(config.model or "").strip()
    try:
        _, defaults = studio.model_defaults(spec)
    except ValueError:
        return ""
    if defaults is not None:  # a real model: its family's defaults exist
        return ""
    try:
        own = [r for r in refs if _sha256(r.path) not in demo]
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
