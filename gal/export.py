"""Export a run's final model: diffusers LoRA, kohya/A1111 LoRA, fused pipeline, dataset, model card.

Everything is written to a temporary sibling folder first and moved into place at the end, so a
failed export leaves neither a half-written folder nor a damaged earlier export.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

import storage
from gal.config import RunConfig
from gal.training import LORA_FILE, add_safetensors_metadata

FORMATS = ("diffusers", "kohya", "fused", "dataset", "card")
DEFAULT_FORMATS = ("diffusers", "kohya", "dataset", "card")
KOHYA_FILE = "gal_lora_kohya.safetensors"


def export_run(studio, run_id: str, out_dir: Path, formats=None, *, force: bool = False) -> dict[str, Path]:
    from gal.engine import safe_join

    formats = tuple(formats or DEFAULT_FORMATS)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise ValueError(f"{out_dir} already exists and is not empty: choose another folder or pass --force to replace it")
    run_dir = studio.run_dir(run_id)
    with studio.db() as db:
        run = storage.get_run(db, run_id)
        config = RunConfig.from_dict(run["config"])
        all_rounds = storage.list_rounds(db, run_id)
        rounds = [r for r in all_rounds if r.get("adapter_path")]
        references = storage.list_references(db, run_id)
    if not rounds:
        raise ValueError(f"run {run_id} has no trained round yet: run it first (gal run --resume {run_id})")
    final = rounds[-1]
    adapter_dir = safe_join(run_dir, final["adapter_path"])
    provenance = {
        "gal.run_id": run_id,
        "gal.round": str(final["round_index"]),
        "gal.config_hash": config.config_hash(),
        "gal.base_model": config.model,
        "gal.strategy": config.gal.strategy,
        "gal.soi_token": config.soi_token,
    }

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    written: dict[str, Path] = {}
    try:
        (staging / "gal_config.json").write_text(config.to_json())
        if "diffusers" in formats or "kohya" in formats:
            lora = staging / LORA_FILE
            shutil.copyfile(adapter_dir / LORA_FILE, lora)
            add_safetensors_metadata(lora, provenance)
            written["diffusers"] = out_dir / LORA_FILE
        if "kohya" in formats:
            _write_kohya(staging / LORA_FILE, staging / KOHYA_FILE, config, provenance)
            written["kohya"] = out_dir / KOHYA_FILE
            if "diffusers" not in formats:
                (staging / LORA_FILE).unlink()
                written.pop("diffusers")
        if "fused" in formats:
            _write_fused(studio._activate(run_id, config, final["round_index"]), staging / "pipeline")
            written["fused"] = out_dir / "pipeline"
        if "dataset" in formats:
            folder = staging / "dataset"
            folder.mkdir()
            with open(folder / "metadata.jsonl", "w") as meta:
                for ref in references:
                    name = Path(ref["file"]).name
                    shutil.copyfile(safe_join(run_dir, ref["file"]), folder / name)
                    meta.write(json.dumps({"file_name": name, "prompt": ref["prompt"], "weight": ref["weight"],
                                           "round": ref["round_added"], "source": ref["source"],
                                           "sha256": ref["sha256"]}) + "\n")
            written["dataset"] = out_dir / "dataset"
        if "card" in formats:
            (staging / "README.md").write_text(model_card(run, config, all_rounds, references, provenance))
            written["card"] = out_dir / "README.md"
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def _write_fused(pipe, folder: Path) -> None:
    """A plain diffusers pipeline with the LoRA merged in; the live pipeline keeps its adapter untouched."""
    import copy

    from gal.families import family_of

    family = family_of(pipe)
    name = family.denoiser_name  # unet or transformer
    denoiser = copy.deepcopy(family.denoiser(pipe)).to("cpu")
    denoiser.fuse_lora(lora_scale=1.0)
    denoiser.unload_lora()  # drop the LoRA modules, keep the merged weights
    parts = {key: part for key, part in pipe.components.items() if key != name}
    type(pipe)(**parts, **{name: denoiser}).save_pretrained(folder)


def _write_kohya(diffusers_file: Path, out: Path, config: RunConfig, provenance: dict) -> None:
    """A1111/ComfyUI read kohya keys (``lora_unet_…``; FLUX.1: BFL block names), not diffusers keys: the
    model family names them (``gal.families.<family>.kohya_state_dict``), with the configured alpha."""
    from safetensors.torch import load_file, save_file

    from gal.models import model_family

    family = model_family(config.model)
    state = load_file(str(diffusers_file))
    kohya = family.kohya_state_dict(state, config.train.alpha)
    kohya = {k: v.to(torch.float16).contiguous() for k, v in kohya.items()}
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.train.rank),
        "ss_network_alpha": str(config.train.alpha),
        "ss_base_model_version": family.kohya_base_version,
        "ss_output_name": provenance["gal.run_id"],
        "ss_training_comment": "trained with GAL Studio (Generative Active Learning)",
        **provenance,
    }
    save_file(kohya, str(out), metadata=metadata)


def model_card(run: dict, config: RunConfig, rounds: list[dict], references: list[dict], provenance: dict) -> str:
    lines = [
        f"# {run.get('name') or run['run_id']}",
        "",
        "A LoRA trained with GAL Studio (Generative Active Learning for image-synthesis personalization).",
        "",
        f"- base model: `{config.model}`",
        f"- task: {config.task}; SoI token `{config.soi_token}`; subject phrase `{config.subject_phrase}`",
        f"- strategy: {config.gal.strategy}; m={config.gal.m}, k={config.gal.k}, λ={config.gal.lam}, "
        f"rounds={len(rounds)} (max {config.gal.max_rounds})",
        f"- LoRA: rank {config.train.rank}, alpha {config.train.alpha}, lr {config.train.learning_rate}, "
        f"{config.train.steps} steps/round, targets {', '.join(config.train.target_modules)}",
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
    for r in rounds:
        m = r.get("metrics") or {}
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {r['round_index']} | {fmt(m.get('txt_aln'))} | {fmt(m.get('img_aln'))} | {fmt(m.get('ovf'))} | "
                     f"{fmt(r.get('openness'))} |")
    lines += [
        "",
        "TXT-ALN = 2.5 × max(CLIP cosine, 0) to the prompt; IMG-ALN = CLIP image cosine to the real references;",
        "OVF = share of images closer to the references' non-subject caption than to the prompt (Eq. 8).",
        "",
        "## Use",
        "",
        "```python",
        "pipe.load_lora_weights('<this folder>', weight_name='pytorch_lora_weights.safetensors')",
        "```",
        f"`{KOHYA_FILE}` is the same LoRA in kohya keys for A1111 / ComfyUI.",
        "",
    ]
    return "\n".join(lines)
