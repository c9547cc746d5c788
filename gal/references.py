"""A real reference as a person gives it (the engine, the demo, the CLI and the UI share this one type)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ReferenceInput:
    """A real reference image with its prompt and the non-subject caption the model must not learn."""

    path: str | Path
    prompt: str
    non_soi_text: str | None = None  # object: prompt without the token; style: the prompt itself
