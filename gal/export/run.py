"""``export_run``: a run's final round in the chosen formats, written to a staging folder and swapped in
(``gal.export.target``). Every fact about the base model comes from its family (``Family.export_facts``)."""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path

import torch

import gal.export.card as card
import gal.export.dataset as dataset
import gal.export.diffusers as diffusers
import gal.export.fused as fused
import gal.export.kohya as kohya
import gal.export.single_file as single_file
import gal.export.target as target
import storage
from gal.config import RunConfig
from gal.export.target import ExportSource, export_stem
from gal.families.base import of
from gal.runfolder import safe_join
from gal.training import LORA_FILE

log = logging.getLogger(__name__)

FORMATS = ("diffusers", "kohya", "fused", "checkpoint", "dataset", "card")
DEFAULT_FORMATS = ("diffusers", "kohya", "dataset", "card")


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
    target._recover_and_clean(out_dir)
    target._check_target(src, run_id, out_dir, force)
    final = rounds[-1]
    run_dir = src.run_dir(run_id)
    adapter_dir = safe_join(run_dir, final["adapter_path"])
    stem = export_stem(run)
    captions = dataset.kept_captions(adapter_dir)  # what each reference trained on ({} before it was kept)
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
    family = of(pipe)
    facts = family.export_facts(pipe)
    if "kohya" in formats and not facts.kohya_file:
        formats = tuple(f for f in formats if f != "kohya")
        if not formats:
            raise ValueError(
                f"no tool loads a kohya/ComfyUI-format LoRA of {family.label} models (ComfyUI has no "
                f"{family.label} model): export the diffusers LoRA instead (--format diffusers)"
            )
        log.warning("%s has no kohya/ComfyUI LoRA format any tool loads: not written", family.label)
    v_pred = getattr(pipe.scheduler.config, "prediction_type", "epsilon") == "v_prediction"
    resolution = int(config.train.resolution or family.native_resolution(pipe))
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
        raise target._os_error(err, out_dir) from err
    written: dict[str, Path] = {}
    entries: list[str] = []
    try:
        # first, so that a stale staging folder is recognisably ours
        target._write_marker(staging, run, entries, formats, staging=True)
        (staging / "gal_config.json").write_text(config.to_json())
        entries.append("gal_config.json")
        source = adapter_dir / LORA_FILE
        if "diffusers" in formats:
            diffusers.write_diffusers(source, staging / names["diffusers"], provenance)
        if "kohya" in formats:
            kohya.write_kohya(
                source,
                staging / names["kohya"],
                config,
                provenance,
                family=family,
                facts=facts,
                pipe=pipe,
                v_parameterization=v_pred,
                run=run,
                # ss_tag_frequency counts the captions trained on
                references=[r | {"prompt": captions.get(r["file"], r["prompt"])} for r in trained_on],
                round_index=final["round_index"],
                stem=stem,
                resolution=resolution,
                precision={torch.float16: "fp16", torch.bfloat16: "bf16"}.get(pipe.dtype, "no"),
            )
        fused_pipe = None
        if "fused" in formats or "checkpoint" in formats:
            fused_pipe = fused.fused_pipeline(
                src.models.with_adapter(config.model, (run_id, final["round_index"]), adapter_dir)
            )
        if "fused" in formats:
            fused.save_fused_folder(fused_pipe, staging / names["fused"])
        if "checkpoint" in formats:
            if "fused" not in formats:  # from_single_file needs the configs: a weightless folder
                fused.save_fused_folder(fused_pipe, staging / "config", configs_only=True)
                entries.append("config")
            single_file.save_single_file(
                fused_pipe,
                pipe,
                staging / names["checkpoint"],
                {**provenance, **kohya.modelspec(facts, v_pred, run, config, resolution, lora=False)},
            )
        del fused_pipe
        if "dataset" in formats:
            dataset._write_dataset(
                staging / names["dataset"], run_dir, references, captions, {r["file"] for r in trained_on}
            )
        if "card" in formats:
            samples = dataset._copy_samples(staging, run_dir, images, stem)
            if samples:
                entries.append("samples")
            (staging / names["card"]).write_text(
                card.model_card(
                    run,
                    config,
                    all_rounds,
                    references,
                    provenance,
                    facts=facts,
                    samples=samples,
                    files={f: names[f] for f in formats},
                )
            )
        for f in formats:
            entries.append(names[f])
            written[f] = out_dir / names[f]
        entries = sorted(set(entries))
        target._verify_weights(staging)
        target._write_marker(staging, run, entries, formats)
        target._swap_in(staging, out_dir, token)
    except OSError as err:
        target._remove_ours(staging)
        raise target._os_error(err, out_dir) from err
    except Exception as err:
        target._remove_ours(staging)
        if target._disk_full(err):  # safetensors reports I/O errors as SafetensorError, not OSError
            raise target._os_error(OSError(errno.ENOSPC, "No space left on device"), out_dir) from err
        raise
    except BaseException:
        target._remove_ours(staging)
        raise
    return written
