"""The Export tab: the formats, which round's LoRA is written (said before exporting), and a zip."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr

from ui import render
from ui.common import error, user_errors, wire

EXPORT_CHOICES = [
    ("diffusers LoRA (load_lora_weights)", "diffusers"),
    ("kohya / A1111 / ComfyUI LoRA", "kohya"),
    ("fused pipeline (LoRA merged into the base model)", "fused"),
    ("single-file checkpoint (.safetensors with the LoRA merged: A1111, ComfyUI)", "checkpoint"),
    ("dataset (references + captions + weights)", "dataset"),
    ("model card (README.md)", "card"),
]


EXPORT_VIEW = ("export_note", "export_btn", "export_file", "export_summary")


def export_choices() -> list[tuple[str, str]]:
    return list(EXPORT_CHOICES)


def layout(c: dict, h) -> None:
    c["formats"] = gr.CheckboxGroup(
        export_choices(), value=list(h.studio.export_formats()), label="Formats", elem_id="gal-formats"
    )
    c["replace"] = gr.Checkbox(
        False,
        label="Replace the previous export",
        elem_id="gal-replace",
        info="the export folder is <run folder>/export",
    )
    c["export_note"] = gr.HTML(h.export_note(None), elem_id="gal-export-note")
    c["export_btn"] = gr.Button("Export", variant="primary", elem_id="gal-export")
    c["export_summary"] = gr.HTML(elem_id="gal-export-summary")
    c["export_file"] = gr.File(label="Download", elem_id="gal-export-file", interactive=False)


def connect(c: dict, h) -> None:
    # revisiting the tab: the worker's state now (Export off while it is busy) and the last export's zip
    wire(c["export_tab"].select, h.export_view, c["run_id"], EXPORT_VIEW, c, show_progress="hidden")
    wire(c["export_btn"].click, h.export, [c["run_id"], c["formats"], c["replace"]],
         ("export_file", "export_summary"), c, api_name="export")  # fmt: skip


class ExportHandlers:
    """The Export tab's events (mixed into ``ui.handlers.Handlers``)."""

    def _archive(self, run_id: str) -> Path:
        return self.studio.run_dir(run_id) / f"{run_id}-export.zip"

    def export_busy(self) -> str | None:
        """Why Export cannot run now (the model worker is busy: the fused export needs the model), or None."""
        busy = self.worker.busy_with()
        if not busy:
            return None
        return f"the model worker is busy with run {busy}: export when its round is in review or finished"

    def export_view(self, run_id: str | None) -> dict:
        """The Export tab as it stands: the note (with the reason Export is off, if it is), the button, and
        the last export's zip (kept in the run folder, so it is there after a reload or a revisit)."""
        busy = self.export_busy() if run_id else None
        note = self.export_note(run_id)
        if busy:
            note += render.message(f"Export is off now: {render.esc(busy)}.", "warn")
        archive = self._archive(run_id) if run_id else None
        last = archive if archive is not None and archive.is_file() else None
        summary = (
            render.message(
                f"The last export is below ({last.stat().st_size / 1e6:.1f} MB). To export again, tick "
                "'Replace the previous export'.",
                "ok",
            )
            if last
            else ""
        )
        return {
            "export_note": note,
            "export_btn": gr.update(interactive=bool(run_id) and not busy),
            "export_file": str(last) if last else None,
            "export_summary": summary,
        }

    def export_note(self, run_id: str | None) -> str:
        """Which round's LoRA Export writes (the latest trained one), said before the person exports."""
        if not run_id:
            return render.message("No run open: open one from the Runs tab to export it.")
        rounds = self.studio.history(run_id)["rounds"]
        trained = [r for r in rounds if r.get("adapter_path")]
        if not trained:
            return render.message(
                "No round is trained yet: Export becomes possible once round 1 has trained.", "warn"
            )
        last = trained[-1]["round_index"]
        latest = rounds[-1]
        tail = (
            "" if latest["round_index"] == last else f" (round {latest['round_index']} is {latest['state']})"
        )
        return render.message(
            f"Exports <b>round {last}</b>'s LoRA — the latest trained round of "
            f"{len(rounds)}{render.esc(tail)} — "
            f"with the references and weights it trained on.",
            "ok",
        )

    @user_errors
    def export(self, run_id: str | None, formats: list[str] | None, replace) -> dict:
        run_id = self._require(run_id)
        if formats is not None and (
            not isinstance(formats, (list, tuple)) or not all(isinstance(f, str) for f in formats)
        ):
            raise ValueError(f"formats must be a list of format names, got {formats!r}")
        formats = list(formats or [])
        if not formats:
            raise error("choose at least one format to export")
        if replace is not None and not isinstance(replace, bool):
            raise ValueError(f"replace must be true or false, got {type(replace).__name__} {replace!r}")
        busy = self.export_busy()
        if busy:
            raise error(busy)
        run_dir = self.studio.run_dir(run_id)
        out = run_dir / "export"
        try:
            written = self.studio.export(run_id, out, tuple(formats), force=bool(replace))
        except ValueError as err:
            message = str(err).replace("pass --force to replace it", "tick 'Replace the previous export'")
            raise error(message) from err
        archive = shutil.make_archive(str(run_dir / f"{run_id}-export"), "zip", root_dir=out)
        lines = "".join(
            f"<li><b>{render.esc(k)}</b>: "
            f"{render.esc(Path(v).relative_to(run_dir) if Path(v).is_relative_to(run_dir) else v)}</li>"
            for k, v in written.items()
        )
        trained = [r for r in self.studio.history(run_id)["rounds"] if r.get("adapter_path")]
        which = f"round {trained[-1]['round_index']}'s LoRA" if trained else "the run"
        summary = render.message(
            f"Exported {which} to <code>{render.esc(out)}</code>:<ul>{lines}</ul>"
            f"Download the zip below ({Path(archive).stat().st_size / 1e6:.1f} MB).",
            "ok",
        )
        return {"export_file": archive, "export_summary": summary}
