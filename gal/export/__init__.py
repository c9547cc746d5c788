"""Export a run's final model: diffusers LoRA, kohya/ComfyUI LoRA, fused pipeline, single-file checkpoint,
dataset, model card — one module per job:

- ``target``: where an export may go, markers, staging and the atomic swap (never deletes what it did not
  write);
- ``run``: ``export_run``, the orchestration;
- ``diffusers``: the diffusers LoRA (scale folded in, so every loader draws it at the trained strength);
- ``kohya``: the kohya / A1111 / ComfyUI LoRA with kohya's metadata (key naming from the family);
- ``fused``, ``single_file``: the merged model as a diffusers folder / one checkpoint file;
- ``dataset``, ``card``: the references with captions, and the model card.

Every fact about the base model (kohya base version, modelspec architecture, licence, tags, key naming,
single-file layout) comes from its family (``gal.families.base.Family.export_facts`` and friends).
"""

from gal.export.card import model_card
from gal.export.dataset import SAMPLES, _copy_samples, _write_dataset, kept_captions
from gal.export.diffusers import fold_lora_scale, write_diffusers
from gal.export.fused import fused_pipeline, save_fused_folder
from gal.export.kohya import (
    _created,
    base_model_metadata,
    kohya_state_dict,
    modelspec,
    precalculate_safetensors_hashes,
    tag_frequency,
    write_kohya,
)
from gal.export.run import DEFAULT_FORMATS, FORMATS, export_run, parse_formats
from gal.export.single_file import (
    convert_text_encoder_to_ldm,
    convert_unet_to_ldm,
    convert_vae_to_ldm,
    save_single_file,
)
from gal.export.target import MARKER, ExportSource, _exchange, export_stem

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "MARKER",
    "SAMPLES",
    "ExportSource",
    "_copy_samples",
    "_created",
    "_exchange",
    "_write_dataset",
    "base_model_metadata",
    "convert_text_encoder_to_ldm",
    "convert_unet_to_ldm",
    "convert_vae_to_ldm",
    "export_run",
    "export_stem",
    "fold_lora_scale",
    "fused_pipeline",
    "kept_captions",
    "kohya_state_dict",
    "model_card",
    "modelspec",
    "parse_formats",
    "precalculate_safetensors_hashes",
    "save_fused_folder",
    "save_single_file",
    "tag_frequency",
    "write_diffusers",
    "write_kohya",
]
