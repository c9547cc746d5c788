"""Every seed a run derives from its one ``seed``, named: the same run seed gives the same images,
adapters and held-out samples in every process, and each draw has its own stream."""

from __future__ import annotations

EVAL_STREAM = 7  # held-out evaluation images draw from the run seed + 7 (values kept from the first version)


def image_seed(run_seed: int, anchor_index: int, slot: int) -> int:
    """The seed of an anchor's ``slot``-th image: the same every round (the official code seeds once),
    so one anchor+seed can be compared across rounds."""
    return (run_seed * 1_000_003 + anchor_index * 1_009 + slot) % (2**63 - 1)


def eval_image_seed(run_seed: int, prompt_index: int, slot: int) -> int:
    """The seed of the ``slot``-th image of held-out prompt ``prompt_index`` (the same every round)."""
    return image_seed(run_seed + EVAL_STREAM, prompt_index, slot)


def training_seed(run_seed: int, round_index: int) -> int:
    """Round ``round_index``'s training draws (LoRA init, batches, noise, timesteps)."""
    return run_seed * 1_000 + round_index


def class_image_seed(run_seed: int, i: int) -> int:
    """The ``i``-th prior-preservation class image (drawn once per run by the base model)."""
    return run_seed * 7_919 + i
