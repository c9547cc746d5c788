"""Where an export may go, and how it gets there without ever leaving a half export or deleting
what it did not write.

- the target may not be the runs folder, a run's folder, inside one, or a folder that contains one;
- a non-empty target must be a previous export of the same run (marker file ``.gal-export.json``)
  holding nothing but the files that export wrote; ``force`` replaces only that;
- the new export is written into a staging sibling ``.<name>.gal-staging-<pid>-<token>`` and swapped in
  (``renameat2(RENAME_EXCHANGE)`` where the kernel has it, else rename old aside / new in, with the
  aside copy restored on the next export if a kill came in between), so at every moment the target is
  the old complete export or the new one; stale staging folders of dead processes are removed next time;
- a full disk or another OS error becomes a ValueError naming the fix, and leaves nothing behind.

Names: every file is named from the run (``<stem>.safetensors``, ``<stem>`` the run's sanitised name, unique
per run), so the LoRA files of several runs can sit in one ``models/Lora`` folder side by side.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import storage
from gal.config import RunConfig
from gal.loaded import LoadedModels
from gal.runfolder import RunFolder
from gal.training import LORA_FILE

MARKER = ".gal-export.json"
APP_EXPORT = "export"  # <run folder>/export: the one place inside a run folder an export may go (the app's)
LEGACY_ENTRIES = {
    "gal_config.json",
    LORA_FILE,
    "gal_lora_kohya.safetensors",
    "pipeline",
    "dataset",
    "README.md",
}


def export_stem(run: dict) -> str:
    """The file-name stem of a run's exported files: its sanitised name, unique per run.

    A run id is ``<name-slug>-<utc stamp>-<random>``; a name that the run id does not already start
    with (renamed, or with non-ASCII letters) is kept, sanitised, and given the id's unique tail.
    """
    run_id = run["run_id"]
    name = _sanitise(run.get("name") or "")
    rid = _sanitise(run_id) or "run"
    if not name or rid.lower().startswith(name.lower()) or name == rid:
        return rid
    tail = "-".join(run_id.split("-")[-3:])
    return f"{name[:64]}-{_sanitise(tail)}"


def _sanitise(name: str) -> str:
    # Letters (any script), digits, '.', '_' and '-'; nothing Windows or a shell trips over.
    text = re.sub(r"[^\w.-]+", "-", name, flags=re.UNICODE).strip("-._ ")
    text = re.sub(r"-{2,}", "-", text)
    if text.upper().split(".")[0] in {
        "CON",
        "PRN",
        "AUX",
        "NUL",
        *(f"COM{i}" for i in range(10)),
        *(f"LPT{i}" for i in range(10)),
    }:
        text = f"_{text}"
    return text[:100]


# -- the target folder --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSource:
    """What an export reads, and no more: the database, the runs folder (it and every run folder are refused
    as targets) and the loaded models (the fused formats merge the round's adapter into the base)."""

    db: Callable[[], object]  # opens a connection
    runs_root: Path
    models: LoadedModels

    def run_dir(self, run_id: str) -> Path:
        return RunFolder(self.runs_root, run_id).root

    def pipeline(self, spec: str):
        return self.models.pipeline(spec)


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_target(src: ExportSource, run_id: str, out_dir: Path, force: bool) -> dict | None:
    """Refuse what an export must not replace; returns the previous export's marker (or None)."""
    root = Path(src.runs_root).resolve()
    with src.db() as db:
        run_dirs = [Path(r["run_dir"]).resolve() for r in storage.list_runs(db)]
    protected = [(root, "the runs folder")] + [(d, f"run folder {d.name}") for d in run_dirs]
    if out_dir == src.run_dir(run_id).resolve() / APP_EXPORT:
        protected = []  # the app's export folder of this very run (<run folder>/export) is allowed
    for folder, what in protected:
        if _is_within(out_dir, folder) or _is_within(folder, out_dir):
            raise ValueError(
                f"{out_dir} is, holds or lies inside {what} ({folder}): export outside the runs folder, "
                f"e.g. gal export {run_id} ./exports/{run_id}"
            )
    if not out_dir.exists():
        if out_dir.is_symlink():
            raise ValueError(f"{out_dir} is a dangling link: remove it or choose another folder")
        return None
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder: choose another path")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return None
    marker = _read_marker(out_dir) or _legacy_marker(out_dir, entries, run_id, src)
    if marker is None:
        raise ValueError(
            f"{out_dir} is not empty and is not a GAL Studio export ({', '.join(entries[:5])}"
            f"{', …' if len(entries) > 5 else ''}): export into a new or empty folder, e.g. "
            f"{out_dir / export_stem(_run_row(src, run_id))} (A1111, Forge and ComfyUI also find LoRAs in "
            "subfolders of models/Lora); nothing was changed"
        )
    if marker.get("run_id") != run_id:
        raise ValueError(
            f"{out_dir} holds the export of run {marker.get('run_id')}: export each run into its own folder "
            f"(the files carry the run's name, so their LoRA files can later share one folder); "
            "nothing was changed"
        )
    foreign = sorted(set(entries) - set(marker.get("entries", [])) - {MARKER})
    if foreign:
        raise ValueError(
            f"{out_dir} holds files the earlier export did not write ({', '.join(foreign[:5])}): "
            "move them out "
            "or export into another folder; nothing was changed"
        )
    if not force:
        raise ValueError(f"{out_dir} already holds an export of run {run_id}: pass --force to replace it")
    return marker


def _legacy_marker(out_dir: Path, entries: list[str], run_id: str, src) -> dict | None:
    """An export written before markers existed: only the old file names, and its gal_config.json is
    this run's config. Treated as this run's previous export."""
    if not set(entries) <= LEGACY_ENTRIES or "gal_config.json" not in entries:
        return None
    try:
        old = RunConfig.from_dict(json.loads((out_dir / "gal_config.json").read_text()))
        with src.db() as db:
            current = RunConfig.from_dict(storage.get_run(db, run_id)["config"])
    except (OSError, ValueError, TypeError):
        return None
    if old.config_hash() != current.config_hash():
        return None
    return {"tool": "gal-studio", "run_id": run_id, "entries": entries, "legacy": True}


def _run_row(src, run_id: str) -> dict:
    with src.db() as db:
        return storage.get_run(db, run_id)


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "gal-studio" else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_STAGING = re.compile(r"^\.(?P<name>.+)\.gal-(?P<kind>staging|old)-(?P<pid>\d+)-[0-9a-f]+$")


def _recover_and_clean(out_dir: Path) -> None:
    """After a killed export: restore an old export moved aside if the target is missing, then remove the
    staging/aside folders of ours whose process is dead (only folders with our name pattern and marker)."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    ours = []
    for entry in parent.iterdir():
        m = _STAGING.match(entry.name)
        if not m or m["name"] != out_dir.name or not entry.is_dir() or entry.is_symlink():
            continue
        if _pid_alive(int(m["pid"])):
            continue
        ours.append((m["kind"], entry))
    if not out_dir.exists():
        for kind, entry in ours:
            if kind == "old" and (_read_marker(entry) or {}).get("complete", True):
                entry.rename(out_dir)  # the complete old export comes back
                ours.remove((kind, entry))
                break
    for _, entry in ours:
        if _read_marker(entry) is not None or not any(entry.iterdir()):
            _remove_ours(entry)


def _remove_ours(folder: Path) -> None:
    """Remove a staging/old folder of ours with its marker last, so a kill halfway leaves it recognisable."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for child in folder.iterdir():
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    res = renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _swap_in(staging: Path, out_dir: Path, token: str) -> None:
    """Put the complete staging folder at out_dir; the old export (if any) is removed last."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    if _exchange(staging, out_dir):
        _remove_ours(staging)  # now holds the old export
        return
    aside = out_dir.parent / f".{out_dir.name}.gal-old-{os.getpid()}-{token}"
    out_dir.rename(aside)
    try:
        staging.rename(out_dir)  # a kill just before this line: the next export restores `aside`
    except OSError:
        aside.rename(out_dir)
        raise
    _remove_ours(aside)


def _disk_full(err: BaseException) -> bool:
    text = str(err)
    return any(s in text for s in ("No space left", "StorageFull", "os error 28", "code: 28", "Disk quota"))


def _verify_weights(folder: Path) -> None:
    """Every weights file in the staging folder opens and its tensors fit in the file
    (a short write fails)."""
    from safetensors import safe_open

    for path in folder.rglob("*.safetensors"):
        try:
            with safe_open(str(path), "pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        except Exception as err:
            if isinstance(err, OSError) or _disk_full(err):
                raise
            raise OSError(errno.EIO, f"{path.name} was not written completely ({err})", str(path)) from err


def _os_error(err: OSError, out_dir: Path) -> ValueError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ValueError(
            f"the disk under {out_dir.parent} is full ({err.strerror}): free some space or export to another "
            "folder; nothing was written and an earlier export there is unchanged"
        )
    return ValueError(
        f"could not write the export to {out_dir}: {err.strerror or err} ({err.filename or out_dir}): "
        "check that the folder is writable or export to another folder; nothing was left behind"
    )


def _write_marker(folder: Path, run: dict, entries: list[str], formats, staging: bool = False) -> None:
    data = {
        "tool": "gal-studio",
        "run_id": run["run_id"],
        "run_name": run.get("name") or run["run_id"],
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),
        "formats": list(formats),
        "entries": list(entries),
        "complete": not staging,
    }
    (folder / MARKER).write_text(json.dumps(data, indent=2))
