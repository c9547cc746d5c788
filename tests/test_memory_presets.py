"""The families' 24 GB presets: filled into unset memory options on CUDA only; an explicit setting wins."""

from __future__ import annotations

import pytest
import torch

from gal import families
from gal.config import TrainConfig
from gal.families.base import PRESET_FALLBACK, describe_preset, resolve_memory

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")  # a device object: no GPU needed to resolve


def test_every_family_has_a_known_preset():
    for name in families.FAMILIES:
        family = families.get(name)
        assert set(family.preset_24gb) <= set(PRESET_FALLBACK), name
    assert families.get("sd").preset_24gb == {}
    for name in ("flux", "zimage", "flux2", "chroma", "krea2"):
        assert families.get(name).preset_24gb["quantize_base"] == "int8", name


def test_preset_reaches_unset_options_on_cuda_only():
    qwen = families.get("qwenimage")
    on_cuda = resolve_memory(TrainConfig(), qwen, CUDA)
    assert (on_cuda.quantize_base, on_cuda.blocks_to_swap, on_cuda.optimizer) == ("fp8", 16, "adamw8bit")
    assert on_cuda.gradient_checkpointing is True and on_cuda.offload_text_encoders is True
    on_cpu = resolve_memory(TrainConfig(), qwen, CPU)
    assert (on_cpu.quantize_base, on_cpu.blocks_to_swap, on_cpu.optimizer) == (None, 0, "adamw")
    assert on_cpu.gradient_checkpointing is None and on_cpu.offload_text_encoders is None  # flag() decides


def test_explicit_settings_win_over_the_preset():
    cfg = TrainConfig(quantize_base="none", blocks_to_swap=4, optimizer="adamw", gradient_checkpointing=False)
    got = resolve_memory(cfg, families.get("qwenimage"), CUDA)
    assert (got.quantize_base, got.blocks_to_swap, got.optimizer) == (None, 4, "adamw")
    assert got.gradient_checkpointing is False and got.offload_text_encoders is True  # only the unset one
    assert cfg.blocks_to_swap == 4 and cfg.quantize_base == "none"  # the person's config is not modified
    krea = resolve_memory(TrainConfig(quantize_base="fp8"), families.get("krea2"), CUDA)
    assert (krea.quantize_base, krea.blocks_to_swap) == ("fp8", 8)


def test_describe_preset_and_bad_values():
    assert describe_preset(families.get("qwenimage").preset_24gb) == (
        "fp8 base, 16 blocks swapped, gradient checkpointing, text encoders offloaded, 8-bit AdamW"
    )
    assert describe_preset({}) == "nothing to turn on (bf16 fits)"
    with pytest.raises(ValueError, match="quantize_base"):
        TrainConfig(quantize_base="int4").validate()
    TrainConfig(quantize_base="none").validate()
