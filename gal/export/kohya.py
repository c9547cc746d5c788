"""The kohya / A1111 / ComfyUI LoRA file: the family's key naming (``Family.kohya_state_dict``) with
kohya's ``ss_*`` metadata, sd-scripts' hashes and Stability AI's modelspec (values as sd-scripts writes them;
the family supplies the model-specific ones through ``Family.export_facts``)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

from gal.config import RunConfig
from gal.families.base import ExportFacts, Family

MODELSPEC_VERSION = "1.0.1"  # sd-scripts' library/sai_model_spec.py BASE_METADATA


def base_model_metadata(facts: ExportFacts, *, v_parameterization: bool = False) -> dict[str, str]:
    """kohya's ``ss_base_model_version`` / ``ss_v2`` / ``ss_v_parameterization`` of a base model (no
    ``ss_base_model_version`` where kohya defines none for the family: ``facts.base_model_version`` "")."""
    meta = {"ss_base_model_version": facts.base_model_version} if facts.base_model_version else {}
    meta["ss_v2"] = str(facts.v2)
    if v_parameterization:
        meta["ss_v_parameterization"] = "True"
    return meta


def modelspec(
    facts: ExportFacts, v_pred: bool, run: dict, config: RunConfig, resolution: int, *, lora: bool
) -> dict:
    """modelspec.* (Stability AI's model spec 1.0.1) as sd-scripts' library/sai_model_spec.py builds them:
    a full ISO 8601 date and time, the architecture with ``/lora`` for a LoRA."""
    meta = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{facts.architecture}/lora" if lora else facts.architecture,
        "modelspec.implementation": facts.implementation if lora else facts.implementation_full,
        "modelspec.title": run.get("name") or run["run_id"],
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": _created(run).replace(microsecond=0).isoformat(),
        "modelspec.description": f"GAL Studio ({config.gal.strategy}) personalization of {config.model}",
    }
    if config.task == "object" and config.soi_token:
        meta["modelspec.trigger_phrase"] = config.soi_token
    if facts.writes_prediction_type:
        meta["modelspec.prediction_type"] = "v" if v_pred else "epsilon"
    return meta


def _created(run: dict) -> datetime:
    try:
        stamp = datetime.fromisoformat(str(run.get("created_at")))
    except ValueError:
        return datetime.now(timezone.utc)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _lora_scales(meta: dict, component: str, config: RunConfig) -> tuple[float, int | None]:
    """(alpha, rank) a component was trained with: the adapter's saved LoRA config, else the run config."""
    try:
        adapter = json.loads(meta.get("lora_adapter_metadata", "{}"))
    except ValueError:
        adapter = {}
    alpha = adapter.get(f"{component}.lora_alpha", config.train.lora_alpha)
    rank = adapter.get(f"{component}.r")
    if adapter.get(f"{component}.alpha_pattern") or adapter.get(f"{component}.rank_pattern"):
        raise ValueError(
            f"the {component} adapter uses per-layer rank/alpha patterns, which the kohya export cannot write"
        )
    return float(alpha), rank


def lora_scales(meta: dict, config: RunConfig, state: dict) -> dict[str, tuple[float, int | None]]:
    """``{part: (alpha, rank)}`` of every part (``unet``, ``transformer``, ``text_encoder``…) in ``state``."""
    parts = {key.partition(".")[0] for key in state}
    return {part: _lora_scales(meta, part, config) for part in parts}


def kohya_state_dict(
    diffusers_state: dict, metadata: dict, config: RunConfig, family: Family, pipe=None
) -> dict:
    """diffusers LoRA keys -> the family's kohya/ComfyUI keys with ``.alpha`` tensors = the trained alpha."""
    return family.kohya_state_dict(diffusers_state, lora_scales(metadata, config, diffusers_state), pipe)


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


def variant_state_dict(state: dict, metadata: dict, config: RunConfig, family: Family, pipe) -> dict:
    """A DoRA / LoKr / LoHa denoiser adapter -> kohya/LyCORIS keys (``gal.export.lycoris``): a UNet's as
    ``lora_unet_<module>`` (kohya), a transformer's as ``lycoris_<diffusers module>`` (the SimpleTuner LyCORIS
    form ComfyUI maps for FLUX.1, Chroma, SD3 and Qwen-Image). DoRA reads the base weights from ``pipe``."""
    from gal.export.lycoris import lycoris_state_dict

    network, part = config.train.network, family.lora_prefix
    if pipe is None:
        raise ValueError(
            f"the kohya export of a {network} adapter needs the base model: export --format diffusers"
        )
    try:
        adapter = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except ValueError:
        adapter = {}
    alpha = float(adapter.get(f"{part}.alpha", adapter.get(f"{part}.lora_alpha", config.train.lora_alpha)))
    rank = int(adapter.get(f"{part}.r", config.train.rank))
    head = f"{part}."
    parts = {k.partition(".")[0] for k in state}
    if parts != {part}:
        raise ValueError(
            f"a {network} adapter holds {sorted(parts)} weights: only the {part}'s can be written"
        )
    peft_state = {k[len(head) :]: v for k, v in state.items()}
    base = {}
    if network == "dora":
        modules = dict(family.denoiser(pipe).named_modules())
        for key in peft_state:
            path = key.rpartition(".lora_")[0]
            module = modules[path]
            base[path] = (module.get_base_layer() if hasattr(module, "get_base_layer") else module).weight
    prefix = "lora_unet" if part == "unet" else "lycoris"
    return lycoris_state_dict(peft_state, network, alpha, rank, base, prefix=prefix)


def write_kohya(
    diffusers_file: Path,
    out: Path,
    config: RunConfig,
    provenance: dict,
    *,
    family: Family,
    facts: ExportFacts,
    pipe=None,
    v_parameterization: bool = False,
    run: dict | None = None,
    references: list[dict] | None = None,
    round_index: int | None = None,
    stem: str | None = None,
    resolution: int = 512,
    precision: str = "no",
) -> dict[str, str]:
    """Write the kohya-format LoRA with kohya's metadata; returns the metadata written.

    ``ss_network_dim`` / ``ss_network_alpha`` are the file's module rank and alpha (the family may fuse
    modules into higher-rank ones and pads the others to the same rank, so one value is true of all)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(diffusers_file), "pt") as f:
        source_meta = f.metadata() or {}
    state = load_file(str(diffusers_file))
    network = getattr(config.train, "network", "lora")
    if network == "lora":
        tensors = kohya_state_dict(state, source_meta, config, family, pipe)
    else:
        tensors = variant_state_dict(state, source_meta, config, family, pipe)
    run = run or {"run_id": provenance.get("gal.run_id", "run")}
    references = references or []
    created = _created(run)
    res = int(resolution)
    model_name = config.model
    if Path(model_name).expanduser().exists():
        model_name = Path(model_name).expanduser().resolve().name
    dim, alpha = _network_dim_alpha(tensors, state, source_meta, config, family)
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
        # none where no kohya network module trains the family (facts.network_module "")
        **({"ss_network_module": facts.network_module} if network == "lora" and facts.network_module else {}),
        **({"ss_network_module": "lycoris.kohya"} if network != "lora" else {}),
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
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
        **base_model_metadata(facts, v_parameterization=v_parameterization),
    }
    if network != "lora":  # LyCORIS' own record of the algorithm (DoRA: LoRA with weight decomposition)
        metadata["ss_network_args"] = json.dumps(
            {
                "algo": "lora" if network == "dora" else network,
                **({"dora_wd": "True"} if network == "dora" else {}),
            }
        )
    model_hash, legacy_hash = precalculate_safetensors_hashes(tensors, metadata)
    metadata["sshs_model_hash"] = model_hash
    metadata["sshs_legacy_hash"] = legacy_hash
    metadata.update(modelspec(facts, v_parameterization, run, config, res, lora=True))
    metadata.update({k: str(v) for k, v in provenance.items()})
    save_file(tensors, str(out), metadata=metadata)
    return metadata


def _network_dim_alpha(tensors: dict, state: dict, meta: dict, config: RunConfig, family: Family):
    """(dim, alpha) for the header: the rank and alpha every denoiser module in the file has, or, when they
    differ, the denoiser adapter's own (a per-module ``.alpha`` tensor always holds the truth)."""
    ranks = {
        tuple((v.shape[0], float(tensors[k.replace(".lora_down.weight", ".alpha")])))
        for k, v in tensors.items()
        if k.endswith(".lora_down.weight") and k.replace(".lora_down.weight", ".alpha") in tensors
    }
    if len(ranks) == 1:
        rank, alpha = next(iter(ranks))
        return int(rank), alpha
    alpha, rank = _lora_scales(meta, family.lora_prefix, config)
    return int(rank or config.train.rank), alpha
