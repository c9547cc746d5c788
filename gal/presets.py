"""Named set-ups saved as JSON under ``<runs>/presets``: every form field, the images, their prompts.

``<name>.json`` holds ``{"version": 1, "form": {...}, "images": [relative paths], "table": [[...]]}``;
``<name>/images/NNN/<file name>`` holds the copies (the table's rows are keyed by the file names). Every
name goes through :func:`gal.runfolder.safe_name`, so no preset reads or writes outside the folder.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from gal.runfolder import safe_join, safe_name

PRESET_NAME = re.compile(r"^[\w .-]{1,60}$")
MARKER = ".gal-preset"  # in a preset's image folder: written by us, so saving again may replace it


def check_name(name) -> str:
    if not isinstance(name, str):
        raise ValueError(f"the preset name must be text, got {type(name).__name__} {name!r}")
    name = name.strip()
    if not PRESET_NAME.match(name):
        raise ValueError(
            f"name the preset with letters, digits, spaces, '.', '-' or '_' (at most 60), got {name!r}"
        )
    return name


class Presets:
    """The presets of one runs folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json") if p.is_file() and not p.is_symlink())

    def _paths(self, name: str) -> tuple[Path, Path]:
        """The JSON file and the image folder of ``name``, both guarded."""
        name = check_name(name)
        return safe_name(self.folder, f"{name}.json", "preset name"), safe_name(
            self.folder, name, "preset name"
        )

    def save(self, name: str, form: dict, images: list[str], table: list[list]) -> int:
        """Save preset ``name`` (replacing one of that name); returns how many images it holds."""
        file, folder = self._paths(name)
        images_dir = folder / "images"
        if folder.is_dir() and {p.name for p in folder.iterdir()} - {"images", MARKER}:
            raise ValueError(f"{folder} holds files that are not a preset's: choose another name")
        if images_dir.is_symlink():
            raise ValueError(f"{images_dir} is a symbolic link: refusing to replace it")
        if images_dir.exists():
            shutil.rmtree(images_dir)
        images_dir.mkdir(parents=True)
        (folder / MARKER).write_text("written by GAL Studio's presets\n")
        saved = []
        for i, path in enumerate(images):
            target = images_dir / f"{i:03d}" / Path(path).name  # the name the table's rows are keyed by
            target.parent.mkdir()
            shutil.copyfile(path, target)
            saved.append(str(target.relative_to(folder)))
        data = {"version": 1, "form": form, "images": saved, "table": table}
        file.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str))
        return len(saved)

    def load(self, name: str) -> dict:
        """``{"form", "images" (absolute paths that exist), "table"}`` of preset ``name``."""
        if not name:
            raise ValueError("choose a preset to load (save one first with 'Save as preset')")
        try:
            file, folder = self._paths(name)
        except ValueError:
            raise ValueError(f"no preset {name!r} in {self.folder}: pick one from the list") from None
        if not file.is_file():
            raise ValueError(f"no preset {name!r} in {self.folder}: pick one from the list")
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"preset {file} is not valid JSON ({err}): save it again") from None
        if not isinstance(data, dict):
            raise ValueError(f"preset {file} must hold a JSON object: save it again")
        paths = [str(safe_join(folder, rel)) for rel in data.get("images") or [] if isinstance(rel, str)]
        form = data.get("form") if isinstance(data.get("form"), dict) else {}
        table = data.get("table") if isinstance(data.get("table"), list) else []
        return {"form": form, "images": [p for p in paths if Path(p).is_file()], "table": table}
