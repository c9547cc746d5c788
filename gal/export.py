"""Export a run's final model: diffusers LoRA, kohya/A1111 LoRA, fused pipeline, single-file checkpoint,
dataset, model card.

Safety (export never deletes anything it did not write):

- the target may not be the runs folder, a run's folder, inside one, or a folder that contains one;
- a non-empty target must be a previous export of the same run (marker file ``.gal-export.json``)
  holding nothing but the files that export wrote; ``force`` replaces only that;
- the new export is written into a staging sibling ``.<name>.gal-staging-<pid>-<token>`` and swapped in
  (``renameat2(RENAME_EXCHANGE)`` where the kernel has it, else rename old aside / new in, with the
  aside copy restored on the next export if a kill came in between), so at every moment the target is
  the old complete export or the new one; stale staging folders of dead processes are removed next time;
- a full disk or another OS error becomes a ValueError naming the fix, and leaves nothing behind.

Names: every file is named from the run (``<stem>.safetensors`` for A1111/ComfyUI/Forge/kohya, where
``<stem>`` is the run's sanitised name, unique per run), so the LoRA files of several runs can sit in one
``models/Lora`` folder side by side.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

import torch

import storage
from gal.config import RunConfig
from gal.loaded import LoadedModels
from gal.runfolder import RunFolder, safe_join
from gal.training import LORA_FILE, TRAINING_SET, add_safetensors_metadata

FORMATS = ("diffusers", "kohya", "fused", "checkpoint", "dataset", "card")
DEFAULT_FORMATS = ("diffusers", "kohya", "dataset", "card")
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
SAMPLES = 4  # images of the exported round copied into the export for the model card's widget


def parse_formats(formats) -> tuple[str, ...]:
    """None: the defaults. A comma string or a sequence; empty or unknown names are refused."""
    if formats is None:
        return DEFAULT_FORMATS
    if isinstance(formats, str):
        formats = formats.split(",")
    names = tuple(dict.fromkeys(f.strip() for f in formats if f and f.strip()))
    if not names:
        raise ValueError(
            f"no export format given: name one or more of {', '.join(FORMATS)} (e.g. --format kohya,card)"
        )
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    return names


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


# -- export -------------------------------------------------------------------------------------


def export_run(
    src: ExportSource, run_id: str, out_dir: str | Path, formats=None, *, force: bool = False
) -> dict[str, Path]:
    """Write the run's final round in ``formats`` to ``out_dir``; returns {format: path written}."""
    formats = parse_formats(formats)
    out_dir = Path(out_dir).expanduser().absolute()
    out_dir = out_dir.parent.resolve() / out_dir.name if out_dir.parent.exists() else out_dir.resolve()
    with src.db() as db:
        run = storage.get_run(db, run_id)
        config = RunConfig.from_dict(run["config"])
        all_rounds = storage.list_rounds(db, run_id)
        rounds = [r for r in all_rounds if r.get("adapter_path")]
        final_index = rounds[-1]["round_index"] if rounds else None
        references = storage.list_references(db, run_id)
        trained_on = storage.list_references(db, run_id, up_to_round=final_index - 1) if rounds else []
        images = storage.list_images(db, run_id, final_index, kind=None) if rounds else []
    if not rounds:
        raise ValueError(f"run {run_id} has no trained round yet: run it first (gal run --resume {run_id})")
    _recover_and_clean(out_dir)
    _check_target(src, run_id, out_dir, force)
    final = rounds[-1]
    run_dir = src.run_dir(run_id)
    adapter_dir = safe_join(run_dir, final["adapter_path"])
    stem = export_stem(run)
    captions = kept_captions(adapter_dir)  # what each reference trained on ({} before it was kept)
    provenance = {
        "gal.run_id": run_id,
        "gal.run_name": run.get("name") or run_id,
        "gal.round": str(final["round_index"]),
        "gal.config_hash": config.config_hash(),
        "gal.base_model": config.model,
        "gal.strategy": config.gal.strategy,
        "gal.soi_token": config.soi_token,
    }
    # the base pipeline tells the family; the round's adapter is only needed to merge it
    pipe = src.pipeline(config.model)
    family = detect_family(pipe)
    v_pred = getattr(pipe.scheduler.config, "prediction_type", "epsilon") == "v_prediction"
    names = {
        # diffusers' default name: load_lora_weights(folder) finds it, as the Hub does
        "diffusers": LORA_FILE,
        "kohya": f"{stem}.safetensors",
        "fused": "pipeline",
        "checkpoint": f"{stem}.fused.safetensors",
        "dataset": "dataset",
        "card": "README.md",
    }

    token = secrets.token_hex(4)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = out_dir.parent / f".{out_dir.name}.gal-staging-{os.getpid()}-{token}"
        staging.mkdir()
    except OSError as err:
        raise _os_error(err, out_dir) from err
    written: dict[str, Path] = {}
    entries: list[str] = []
    try:
        # first, so that a stale staging folder is recognisably ours
        _write_marker(staging, run, entries, formats, staging=True)
        (staging / "gal_config.json").write_text(config.to_json())
        entries.append("gal_config.json")
        source = adapter_dir / LORA_FILE
        if "diffusers" in formats:
            shutil.copyfile(source, staging / names["diffusers"])
            add_safetensors_metadata(staging / names["diffusers"], provenance)
        if "kohya" in formats:
            write_kohya(
                source,
                staging / names["kohya"],
                config,
                provenance,
                family=family,
                v_parameterization=v_pred,
                run=run,
                # ss_tag_frequency counts the captions trained on
                references=[r | {"prompt": captions.get(r["file"], r["prompt"])} for r in trained_on],
                round_index=final["round_index"],
                stem=stem,
                resolution=_resolution(pipe, config),
                precision={torch.float16: "fp16", torch.bfloat16: "bf16"}.get(pipe.dtype, "no"),
            )
        fused_pipe = None
        if "fused" in formats or "checkpoint" in formats:
            fused_pipe = fused_pipeline(
                src.models.with_adapter(config.model, (run_id, final["round_index"]), adapter_dir)
            )
        if "fused" in formats:
            save_fused_folder(fused_pipe, staging / names["fused"])
        if "checkpoint" in formats:
            if "fused" not in formats:  # from_single_file needs the configs: a weightless folder
                save_fused_folder(fused_pipe, staging / "config", configs_only=True)
                entries.append("config")
            save_ldm_checkpoint(
                fused_pipe,
                staging / names["checkpoint"],
                family,
                {
                    **provenance,
                    **_modelspec(family, v_pred, run, config, _resolution(pipe, config), lora=False),
                },
            )
        del fused_pipe
        if "dataset" in formats:
            _write_dataset(
                staging / names["dataset"], run_dir, references, captions, {r["file"] for r in trained_on}
            )
        if "card" in formats:
            samples = _copy_samples(staging, run_dir, images, stem)
            if samples:
                entries.append("samples")
            (staging / names["card"]).write_text(
                model_card(
                    run,
                    config,
                    all_rounds,
                    references,
                    provenance,
                    family=family,
                    samples=samples,
                    files={f: names[f] for f in formats},
                )
            )
        for f in formats:
            entries.append(names[f])
            written[f] = out_dir / names[f]
        entries = sorted(set(entries))
        _verify_weights(staging)
        _write_marker(staging, run, entries, formats)
        _swap_in(staging, out_dir, token)
    except OSError as err:
        _remove_ours(staging)
        raise _os_error(err, out_dir) from err
    except Exception as err:
        _remove_ours(staging)
        if _disk_full(err):  # safetensors reports I/O errors as SafetensorError, not OSError
            raise _os_error(OSError(errno.ENOSPC, "No space left on device"), out_dir) from err
        raise
    except BaseException:
        _remove_ours(staging)
        raise
    return written


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


def kept_captions(adapter_dir: Path) -> dict[str, str]:
    """The caption each reference file trained on in a round ({} for rounds trained before it was kept)."""
    path = adapter_dir / TRAINING_SET
    try:
        return {x["file"]: x["caption"] for x in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_dataset(
    folder: Path, run_dir: Path, references: list[dict], captions: dict[str, str], trained: set[str]
) -> None:
    """Every reference with its caption: ``metadata.jsonl`` (Hugging Face imagefolder) and a ``.txt`` beside
    each image (OneTrainer and ai-toolkit read it; kohya's sd-scripts with ``--caption_extension .txt``).
    The caption is the one the exported round trained on (``train.captions``); an image added in the last
    round (not trained on yet), or a round trained before captions were kept, has its prompt
    (``caption_kept`` false)."""
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for ref in references:
            name = Path(ref["file"]).name
            shutil.copyfile(safe_join(run_dir, ref["file"]), folder / name)
            caption = captions.get(ref["file"], ref["prompt"])
            (folder / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
            row = {
                "file_name": name,
                "prompt": ref["prompt"],
                "caption": caption,
                "caption_kept": ref["file"] in captions,
                "trained": ref["file"] in trained,
                "weight": ref["weight"],
                "round": ref["round_added"],
                "source": ref["source"],
                "sha256": ref["sha256"],
            }
            meta.write(json.dumps(row) + "\n")


def _copy_samples(staging: Path, run_dir: Path, images: list[dict], stem: str) -> list[dict]:
    """A few images of the exported round (held-out eval prompts first, one per prompt) for the card."""
    chosen, prompts = [], set()
    for im in sorted(images, key=lambda x: (x["kind"] != "eval", x["anchor_index"] or 0, x["slot"])):
        if len(chosen) == SAMPLES:
            break
        if im.get("prompt") in prompts:
            continue
        src = safe_join(run_dir, im["file"])
        if not src.is_file():
            continue
        prompts.add(im.get("prompt"))
        chosen.append((im, src))
    if not chosen:
        return []
    (staging / "samples").mkdir()
    out = []
    for i, (im, src) in enumerate(chosen):
        name = f"samples/{stem}-{i}{src.suffix or '.png'}"
        shutil.copyfile(src, staging / name)
        out.append({"file": name, "prompt": im.get("prompt") or "", "seed": im.get("seed")})
    return out


# -- model family ---------------------------------------------------------------------------------

FAMILIES = ("sd1", "sd2", "sdxl", "flux")


def detect_family(pipe) -> str:
    """sd1 / sd2 / sdxl / flux: the model family (``gal.families``), SD split by its text encoder's width
    (SD2's is 1024) since kohya and A1111 tell the two apart."""
    from gal.families.base import of

    return of(pipe).export_facts(pipe).variant


def _registered(family: str):
    """A family beyond the four legacy variant names: its registry entry (its variant is its name), whose
    ``export_facts`` say what the legacy tables below say for those four; None for the four."""
    if family in FAMILIES:
        return None
    from gal.families import get

    return get(family)


def base_model_metadata(family: str, *, v_parameterization: bool = False) -> dict[str, str]:
    """kohya's ``ss_base_model_version`` / ``ss_v2`` / ``ss_v_parameterization`` for a family name.

    Values as sd-scripts writes them: ``sd_v1`` / ``sd_v2`` (library/model_util), ``sdxl_base_v1-0``
    (library/sdxl_model_util MODEL_VERSION_SDXL_BASE_V1_0), ``flux1``
    (library/flux_utils MODEL_VERSION_FLUX_V1).
    """
    versions = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
    if _registered(family):
        return {"ss_base_model_version": _registered(family).export_facts(None).base_model_version}
    if family not in versions:
        raise ValueError(f"unknown model family {family!r}: one of {', '.join(FAMILIES)}")
    meta = {"ss_base_model_version": versions[family], "ss_v2": str(family == "sd2")}
    if v_parameterization:
        meta["ss_v_parameterization"] = "True"
    return meta


def _modelspec(
    family: str, v_pred: bool, run: dict, config: RunConfig, resolution: int, *, lora: bool
) -> dict:
    """modelspec.* (Stability AI's model spec) as sd-scripts' library/sai_model_spec.py builds them."""
    facts = _registered(family) and _registered(family).export_facts(None)
    arch = (
        facts.architecture
        if facts
        else {
            "sd1": "stable-diffusion-v1",
            "sd2": "stable-diffusion-v2-768-v" if v_pred else "stable-diffusion-v2-512",
            "sdxl": "stable-diffusion-xl-v1-base",
            "flux": "flux-1-dev",
        }[family]
    )
    if facts:
        impl = facts.implementation if lora else facts.implementation_full
    elif family == "flux":
        impl = "https://github.com/black-forest-labs/flux"
    elif (lora and family == "sdxl") or not lora:
        impl = "https://github.com/Stability-AI/generative-models"
    else:
        impl = "diffusers"
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{arch}/lora" if lora else arch,
        "modelspec.implementation": impl,
        "modelspec.title": run.get("name") or run["run_id"],
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": _created(run).date().isoformat(),
        "modelspec.description": f"GAL Studio ({config.gal.strategy}) personalization of {config.model}",
    }
    if config.task == "object" and config.soi_token:
        meta["modelspec.trigger_phrase"] = config.soi_token
    if family != "flux" and not (facts and not facts.writes_prediction_type):
        meta["modelspec.prediction_type"] = "v" if v_pred else "epsilon"
    return meta


def _created(run: dict) -> datetime:
    try:
        stamp = datetime.fromisoformat(str(run.get("created_at")))
    except ValueError:
        return datetime.now(timezone.utc)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _resolution(pipe, config: RunConfig) -> int:
    from gal.models import native_resolution

    return int(config.train.resolution or native_resolution(pipe))


# -- kohya / A1111 LoRA ---------------------------------------------------------------------------


def _lora_scales(meta: dict, component: str, config: RunConfig) -> tuple[float, int | None]:
    """(alpha, rank) a component was trained with: the adapter's saved LoRA config, else the run config."""
    try:
        adapter = json.loads(meta.get("lora_adapter_metadata", "{}"))
    except ValueError:
        adapter = {}
    alpha = adapter.get(f"{component}.lora_alpha", config.train.alpha)
    rank = adapter.get(f"{component}.r")
    if adapter.get(f"{component}.alpha_pattern") or adapter.get(f"{component}.rank_pattern"):
        raise ValueError(
            f"the {component} adapter uses per-layer rank/alpha patterns, which the kohya export cannot write"
        )
    return float(alpha), rank


def kohya_state_dict(diffusers_state: dict, metadata: dict, config: RunConfig, family: str = "sd1") -> dict:
    """diffusers LoRA keys -> kohya keys with ``.alpha`` tensors = the trained alpha (not the rank).

    UNet: ``lora_unet_<diffusers module path with _>`` (what diffusers' convert_state_dict_to_kohya and
    kohya's SD1/SDXL loaders name). Text encoder: transformers 5 flattened CLIPTextModel (no
    ``text_model.``); kohya and ComfyUI expect it, so it is put back: SD1/2 ``lora_te_text_model_…``,
    SDXL ``lora_te1_…`` / ``lora_te2_…``.
    """
    from diffusers.utils import convert_all_state_dict_to_peft

    by_component: dict[str, dict] = {}
    for key, value in diffusers_state.items():
        by_component.setdefault(key.partition(".")[0], {})[key] = value
    peft = {}
    for part in by_component.values():  # one at a time: the converter guesses one key style per dict
        peft.update(convert_all_state_dict_to_peft(part))
    prefixes = {
        "unet": "lora_unet",
        "text_encoder": "lora_te1" if family == "sdxl" else "lora_te",
        "text_encoder_2": "lora_te2",
    }
    scales = {c: _lora_scales(metadata, c, config) for c in prefixes}
    out: dict[str, torch.Tensor] = {}
    for key, value in peft.items():
        component, _, rest = key.partition(".")
        if component not in prefixes:
            raise ValueError(
                f"the LoRA holds {component}.* weights, which the kohya export of {family} cannot name"
            )
        module, _, kind = rest.rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise ValueError(f"unexpected LoRA key {key!r}: re-save the adapter with diffusers")
        if component.startswith("text_encoder") and not module.startswith("text_model."):
            module = f"text_model.{module}"
        name = f"{prefixes[component]}_{module.replace('.', '_')}"
        out[f"{name}.{'lora_down' if kind == 'A.weight' else 'lora_up'}.weight"] = value.contiguous()
        if kind == "A.weight":
            alpha, rank = scales[component]
            if rank is not None and int(rank) != value.shape[0]:
                raise ValueError(
                    f"{key} has rank {value.shape[0]} but the adapter says r={rank}: re-export the round"
                )
            out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def tag_frequency(references: list[dict], trigger: str) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: {dataset folder: {tag: count}}, tags = comma-separated caption parts,
    plus the trigger token on its own (where A1111's and Civitai's trigger-word lists look)."""
    counts: Counter = Counter()
    for ref in references:
        tags = [t.strip() for t in str(ref["prompt"]).split(",") if t.strip()]
        counts.update(tags)
        if trigger and trigger in ref["prompt"] and trigger not in tags:
            counts[trigger] += 1
    return {"gal_references": dict(counts)}


def addnet_hash_legacy(b) -> str:
    """Copied from kohya-ss/sd-scripts library/train_util.py ``addnet_hash_legacy`` (commit 48d368f):
    old model hash of sd-webui-additional-networks for .safetensors files."""
    m = hashlib.sha256()
    b.seek(0x100000)
    m.update(b.read(0x10000))
    return m.hexdigest()[0:8]


def addnet_hash_safetensors(b) -> str:
    """Copied from sd-scripts library/train_util.py ``addnet_hash_safetensors``: sha256 of everything after
    the safetensors header."""
    hash_sha256 = hashlib.sha256()
    blksize = 1024 * 1024
    b.seek(0)
    header = b.read(8)
    n = int.from_bytes(header, "little")
    offset = n + 8
    b.seek(offset)
    for chunk in iter(lambda: b.read(blksize), b""):
        hash_sha256.update(chunk)
    return hash_sha256.hexdigest()


def precalculate_safetensors_hashes(tensors: dict, metadata: dict) -> tuple[str, str]:
    """sd-scripts library/train_util.py ``precalculate_safetensors_hashes(tensors, metadata)``: the hashes
    of the file as saved with only its ``ss_*`` metadata (user metadata must not change them); networks/
    lora.py stores them as ``sshs_model_hash`` / ``sshs_legacy_hash``."""
    import safetensors.torch

    metadata = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = safetensors.torch.save(tensors, metadata)
    b = BytesIO(data)
    return addnet_hash_safetensors(b), addnet_hash_legacy(b)


def write_kohya(
    diffusers_file: Path,
    out: Path,
    config: RunConfig,
    provenance: dict,
    *,
    family: str = "sd1",
    v_parameterization: bool = False,
    run: dict | None = None,
    references: list[dict] | None = None,
    round_index: int | None = None,
    stem: str | None = None,
    resolution: int = 512,
    precision: str = "no",
) -> dict[str, str]:
    """Write the kohya-format LoRA with kohya's metadata; returns the metadata written."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(diffusers_file), "pt") as f:
        source_meta = f.metadata() or {}
    state = load_file(str(diffusers_file))
    if family == "flux":  # BFL block names, what ComfyUI's and kohya's FLUX.1 loaders read
        from gal.families import get

        scales = {"transformer": _lora_scales(source_meta, "transformer", config)}
        tensors = get("flux").kohya_state_dict(state, scales)
    elif _registered(family):  # the family's own ComfyUI/kohya layout
        scales = {"transformer": _lora_scales(source_meta, "transformer", config)}
        tensors = _registered(family).kohya_state_dict(state, scales)
    else:
        tensors = kohya_state_dict(state, source_meta, config, family)
    run = run or {"run_id": provenance.get("gal.run_id", "run")}
    references = references or []
    created = _created(run)
    res = int(resolution)
    model_name = config.model
    if Path(model_name).expanduser().exists():
        model_name = Path(model_name).expanduser().resolve().name
    unet_alpha, _ = _lora_scales(source_meta, "unet", config)
    metadata = {
        "ss_session_id": str(int(hashlib.sha256(run["run_id"].encode()).hexdigest()[:8], 16)),
        "ss_training_started_at": str(created.timestamp()),
        "ss_output_name": stem or run["run_id"],
        "ss_learning_rate": str(config.train.learning_rate),
        "ss_unet_lr": str(config.train.learning_rate),
        "ss_num_train_images": str(len(references)),
        "ss_num_reg_images": str(config.train.num_class_images if config.train.prior_preservation else 0),
        "ss_max_train_steps": str(config.train.steps),
        "ss_lr_scheduler": config.train.lr_schedule,
        "ss_batch_size_per_device": str(config.train.batch_size),
        "ss_network_module": _registered(family).export_facts(None).network_module
        if _registered(family)
        else "networks.lora",
        "ss_network_dim": str(config.train.rank),
        "ss_network_alpha": str(unet_alpha),
        "ss_mixed_precision": precision,  # what the run trained in, as kohya names it (no / fp16 / bf16)
        "ss_seed": str(config.seed),
        "ss_prior_loss_weight": str(config.train.prior_loss_weight),
        "ss_max_grad_norm": str(config.train.max_grad_norm),
        "ss_sd_model_name": model_name,
        "ss_resolution": f"({res}, {res})",
        "ss_tag_frequency": json.dumps(
            tag_frequency(references, config.soi_token if config.task == "object" else "")
        ),
        "ss_training_comment": f"trained with GAL Studio (Generative Active Learning), round {round_index}",
        **base_model_metadata(family, v_parameterization=v_parameterization),
    }
    model_hash, legacy_hash = precalculate_safetensors_hashes(tensors, metadata)
    metadata["sshs_model_hash"] = model_hash
    metadata["sshs_legacy_hash"] = legacy_hash
    metadata.update(_modelspec(family, v_parameterization, run, config, res, lora=True))
    metadata.update({k: str(v) for k, v in provenance.items()})
    save_file(tensors, str(out), metadata=metadata)
    return metadata


# -- fused pipeline and single-file checkpoint -----------------------------------------------------


def fused_pipeline(pipe):
    """The pipeline with the active LoRA merged in, for saving: components holding a LoRA are copied (to the
    CPU) and merged, the others are shared; the live pipeline keeps its adapter."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    parts = {}
    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module) and any(isinstance(m, BaseTunerLayer) for m in part.modules()):
            part = copy.deepcopy(part).to("cpu")
            for mod_name, mod in list(part.named_modules()):
                if isinstance(mod, BaseTunerLayer):  # merge W + scale * B A, then drop the LoRA wrapper
                    mod.merge(adapter_names=list(mod.active_adapters))
                    parent_name, _, child = mod_name.rpartition(".")
                    setattr(
                        part.get_submodule(parent_name) if parent_name else part, child, mod.get_base_layer()
                    )
            for attr in ("peft_config", "_hf_peft_config_loaded"):
                if attr in vars(part):
                    delattr(part, attr)
            if any(isinstance(m, BaseTunerLayer) for m in part.modules()):
                raise ValueError(f"could not merge the LoRA into the pipeline's {name}")
        parts[name] = part
    if "requires_safety_checker" in _init_params(type(pipe)):
        parts["requires_safety_checker"] = False
    fused = type(pipe)(**parts)
    fused.set_progress_bar_config(disable=True)
    return fused


def _init_params(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def save_fused_folder(fused, folder: Path, configs_only: bool = False) -> None:
    """A diffusers folder; ``configs_only`` keeps only configs and tokenizers (for from_single_file)."""
    fused.save_pretrained(folder)
    index = folder / "model_index.json"
    data = json.loads(index.read_text())
    if "requires_safety_checker" in data or "safety_checker" in data:
        data["requires_safety_checker"] = False
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if configs_only:
        for path in list(folder.rglob("*")):
            if path.is_file() and path.suffix in (".safetensors", ".bin", ".ckpt", ".pt"):
                path.unlink()


def _unet_prefix_map(config) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) for a UNet2DConditionModel of any block count, generalising
    diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py (written for SD's 4 x 2 blocks)."""
    n = len(config.block_out_channels)
    layers = config.layers_per_block
    layers = [layers] * n if isinstance(layers, int) else list(layers)
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    idx = 1
    for i, kind in enumerate(config.down_block_types):
        for j in range(layers[i]):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{idx}.0."))
            if "CrossAttn" in kind:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{idx}.1."))
            idx += 1
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{idx}.0.op."))
            idx += 1
    idx = 0
    rev = list(reversed(layers))
    for i, kind in enumerate(config.up_block_types):
        for j in range(rev[i] + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{idx}.0."))
            if "CrossAttn" in kind:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{idx}.1."))
            idx += 1
        if i < n - 1:
            pairs.append(
                (
                    f"up_blocks.{i}.upsamplers.0.",
                    f"output_blocks.{idx - 1}.{2 if 'CrossAttn' in kind else 1}.",
                )
            )
    return pairs


_RESNET = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def _rename(key: str, pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    best = None
    for hf, sd in pairs:
        if key.startswith(hf) and (best is None or len(hf) > len(best[0])):
            best = (hf, sd)
    return best


def convert_unet_to_ldm(state: dict, config) -> dict:
    pairs = _unet_prefix_map(config)
    out = {}
    for key, value in state.items():
        hit = _rename(key, pairs)
        if hit is None:
            raise ValueError(
                f"UNet weight {key!r} has no place in the original SD layout: this UNet is not SD-1/2 shaped"
            )
        hf, sd = hit
        rest = key[len(hf) :]
        if ".resnets." in hf:
            for a, b in _RESNET:
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
                    break
        out["model.diffusion_model." + sd + rest] = value
    return out


def convert_vae_to_ldm(state: dict, config) -> dict:
    """diffusers AutoencoderKL -> LDM ``first_stage_model.*`` (diffusers' script, any block count)."""
    n = len(config.block_out_channels)
    layers = config.layers_per_block
    pairs = [
        ("encoder.mid_block.attentions.0.", "encoder.mid.attn_1."),
        ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1."),
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
    ]
    for part in ("encoder", "decoder"):
        for i in range(2):
            pairs.append((f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}."))
    for i in range(n):
        for j in range(layers):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        for j in range(layers + 1):
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}."))
        if i < n - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    attn = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
        ("query.", "q."),
        ("key.", "k."),
        ("value.", "v."),
        ("proj_attn.", "proj_out."),
    ]
    out = {}
    for key, value in state.items():
        hit = _rename(key, pairs)
        new = key if hit is None else hit[1] + key[len(hit[0]) :]
        if hit is not None and ".resnets." in hit[0]:
            new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if hit is not None and "attentions" in hit[0]:
            rest = key[len(hit[0]) :]
            for a, b in attn:
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
                    break
            new = hit[1] + rest
            if rest.split(".")[0] in ("q", "k", "v", "proj_out") and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # linear -> 1x1 conv, as SD stores them
        out["first_stage_model." + new] = value
    return out


def convert_text_encoder_to_ldm(state: dict, family: str) -> dict:
    """SD1: HF CLIP keys under ``cond_stage_model.transformer.text_model.`` (put back: transformers 5 has
    no ``text_model.`` level). SD2: OpenCLIP ``cond_stage_model.model.*`` with fused in_proj (diffusers'
    script ``convert_text_enc_state_dict_v20``)."""
    flat = {(k[len("text_model.") :] if k.startswith("text_model.") else k): v for k, v in state.items()}
    if family == "sd1":
        return {f"cond_stage_model.transformer.text_model.{k}": v for k, v in flat.items()}
    if family != "sd2":
        raise ValueError(f"no single-file text-encoder layout for {family}")
    out, qkv_w, qkv_b = {}, {}, {}
    for k, v in flat.items():
        m = re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            (qkv_w if m[3] == "weight" else qkv_b).setdefault(m[1], {})[m[2]] = v
            continue
        new = k
        for a, b in [
            ("encoder.layers.", "transformer.resblocks."),
            (".self_attn.out_proj.", ".attn.out_proj."),
            (".layer_norm1.", ".ln_1."),
            (".layer_norm2.", ".ln_2."),
            (".mlp.fc1.", ".mlp.c_fc."),
            (".mlp.fc2.", ".mlp.c_proj."),
            ("final_layer_norm.", "ln_final."),
            ("embeddings.token_embedding.weight", "token_embedding.weight"),
            ("embeddings.position_embedding.weight", "positional_embedding"),
        ]:
            new = new.replace(a, b)
        if new == "embeddings.position_ids":
            continue
        out[f"cond_stage_model.model.{new}"] = v
    for store, suffix in ((qkv_w, "in_proj_weight"), (qkv_b, "in_proj_bias")):
        for layer, parts in store.items():
            out[f"cond_stage_model.model.transformer.resblocks.{layer}.attn.{suffix}"] = torch.cat(
                [parts["q"], parts["k"], parts["v"]]
            )
    return out


def save_ldm_checkpoint(fused, path: Path, family: str, metadata: dict) -> None:
    """One .safetensors in the original SD layout (A1111/ComfyUI/Forge checkpoints folder)."""
    from safetensors.torch import save_file

    if family not in ("sd1", "sd2"):
        raise ValueError(
            f"the single-file checkpoint is written for SD 1.x/2.x only, not {family}: "
            "export the fused diffusers folder (--format fused) instead"
        )
    state = {}
    state.update(convert_unet_to_ldm(fused.unet.state_dict(), fused.unet.config))
    state.update(convert_vae_to_ldm(fused.vae.state_dict(), fused.vae.config))
    state.update(convert_text_encoder_to_ldm(fused.text_encoder.state_dict(), family))
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(state, str(path), metadata={k: str(v) for k, v in metadata.items()})


# -- model card ------------------------------------------------------------------------------------

LICENSES = {"sd1": "creativeml-openrail-m", "sd2": "openrail++", "sdxl": "openrail++", "flux": "other"}


def _yaml(text: str) -> str:
    return json.dumps(str(text), ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def model_card(
    run: dict,
    config: RunConfig,
    rounds: list[dict],
    references: list[dict],
    provenance: dict,
    *,
    family: str = "sd1",
    samples: list[dict] | None = None,
    files: dict[str, str] | None = None,
) -> str:
    samples = samples or []
    files = files or {}
    hub_base = not (
        config.model in ("tiny", "toy")
        or Path(config.model).expanduser().exists()
        or config.model.startswith((".", "/", "~"))
    )
    front = ["---"]
    if hub_base:
        front.append(f"base_model: {_yaml(config.model)}")
    front += [
        f"instance_prompt: {_yaml(config.subject_phrase)}",
        "library_name: diffusers",
        f"license: {LICENSES.get(family, 'other') if hub_base else 'other'}",
        "tags:",
        "- text-to-image",
        "- diffusers",
        "- lora",
        "- template:sd-lora",
        "- diffusers-training",
        {
            "sd1": "- stable-diffusion",
            "sd2": "- stable-diffusion",
            "sdxl": "- stable-diffusion-xl",
            "flux": "- flux",
        }.get(family, f"- {family}" if _registered(family) else "- stable-diffusion"),
        "- gal-studio",
    ]
    if samples:
        front.append("widget:")
        for s in samples:
            front += [f"- text: {_yaml(s['prompt'])}", "  output:", f"    url: {_yaml(s['file'])}"]
    front.append("---")
    name = run.get("name") or run["run_id"]
    lines = front + [
        "",
        f"# {name}",
        "",
        "A LoRA trained with GAL Studio (Generative Active Learning for image-synthesis personalization).",
        "",
        f"- base model: `{config.model}` ({family})",
        f"- task: {config.task}; SoI token `{config.soi_token}`; subject phrase `{config.subject_phrase}`",
        f"- strategy: {config.gal.strategy}; m={config.gal.m}, k={config.gal.k}, λ={config.gal.lam}, "
        f"rounds={len(rounds)} (max {config.gal.max_rounds})",
        f"- LoRA: rank {config.train.rank}, alpha {config.train.alpha} "
        f"(scale {config.train.alpha / config.train.rank:g}), "
        f"lr {config.train.learning_rate}, {config.train.steps} steps/round, "
        f"targets {', '.join(config.train.target_modules)}",
        f"- references: {sum(r['source'] == 'real' for r in references)} real, "
        f"{sum(r['source'] == 'synthetic' for r in references)} added by GAL",
        f"- provenance: run `{provenance['gal.run_id']}`, round {provenance['gal.round']}, "
        f"config hash `{provenance['gal.config_hash']}`",
        "",
        "## Metrics per round (held-out prompts)",
        "",
        "| round | TXT-ALN | IMG-ALN | OVF | Δ (openness) |",
        "|---|---|---|---|---|",
    ]
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rounds:
        m = r.get("metrics") or {}
        lines.append(
            f"| {r['round_index']} | {fmt(m.get('txt_aln'))} | {fmt(m.get('img_aln'))} | "
            f"{fmt(m.get('ovf'))} | "
            f"{fmt(r.get('openness'))} |"
        )
    lines += [
        "",
        "TXT-ALN = 2.5 × max(CLIP cosine, 0) to the prompt; "
        "IMG-ALN = CLIP image cosine to the real references;",
        "OVF = share of images closer to the references' non-subject caption than to the prompt (Eq. 8).",
        "",
        "## Files and use",
        "",
    ]
    trigger = f" Trigger: `{config.soi_token}`." if config.task == "object" else ""
    if "kohya" in files:
        lines.append(
            f"- `{files['kohya']}`: kohya keys for A1111 / Forge / ComfyUI / sd-scripts — copy it into "
            f"`models/Lora` (ComfyUI: `models/loras`) and prompt "
            f"`<lora:{Path(files['kohya']).stem}:1>`.{trigger}"
        )
    if "diffusers" in files:
        lines += [
            f"- `{files['diffusers']}`: diffusers keys:",
            "",
            "```python",
            f"pipe.load_lora_weights('<this folder>', weight_name='{files['diffusers']}')",
            "```",
            "",
        ]
    if "fused" in files:
        lines.append(
            "- `pipeline/`: the base model with the LoRA merged in "
            "(`StableDiffusionPipeline.from_pretrained`)."
        )
    if "checkpoint" in files:
        cfg = "pipeline" if "fused" in files else "config"
        lines.append(
            f"- `{files['checkpoint']}`: the merged model as one checkpoint in the original SD layout "
            f"(A1111 `models/Stable-diffusion`; diffusers: `from_single_file(path, config='{cfg}')`)."
        )
    if "dataset" in files:
        lines.append(
            "- `dataset/`: the references (real and added) with prompts, training captions and weights "
            "(`metadata.jsonl`; the caption also in a `.txt` beside each image: OneTrainer and ai-toolkit "
            "read it, kohya's sd-scripts with `--caption_extension .txt`)."
        )
    lines.append("")
    return "\n".join(lines)
