"""The single-file checkpoint: the fused pipeline in the family's original layout (one .safetensors for
A1111 / ComfyUI / Forge checkpoints folders). The layout is the family's (``Family.single_file_layout``);
a family without one refuses the format."""

from __future__ import annotations

from pathlib import Path

from gal.families.ldm import (  # noqa: F401  (re-exported: the SD layout's converters)
    convert_text_encoder_to_ldm,
    convert_unet_to_ldm,
    convert_vae_to_ldm,
)


def save_single_file(fused, pipe, path: Path, metadata: dict) -> None:
    """One .safetensors in the family's original layout, with ``metadata`` in its header."""
    from safetensors.torch import save_file

    family = pipe.gal_family
    layout = family.single_file_layout(pipe)
    if layout is None:
        raise ValueError(
            f"the single-file checkpoint is not written for {family.label}: "
            "export the fused diffusers folder (--format fused) instead"
        )
    state = {k: v.detach().to("cpu").contiguous() for k, v in layout(fused).items()}
    save_file(state, str(path), metadata={k: str(v) for k, v in metadata.items()})
