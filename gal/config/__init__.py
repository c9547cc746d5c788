"""Run configuration: one dataclass per concern, a comment on each default, saved as JSON with each run.

Defaults follow the paper and its official code (see README "Defaults"), except where a LoRA differs
from the official full-UNet DreamBooth (learning rate, steps).

- :mod:`gal.config.run`: ``RunConfig`` (the whole run, its (de)serialisation and hash), the prompt helpers;
- :mod:`gal.config.train`: ``TrainConfig`` (its flow-matching options: :mod:`gal.flow_options`);
- :mod:`gal.config.sections`: ``GenerateConfig``, ``GALConfig``, ``EvalConfig``;
- :mod:`gal.config.checks`: the type and range checks they share.
"""

from gal.config.run import PRESETS_FILE, TASKS, RunConfig, fill, load_presets, strip_token
from gal.config.sections import EvalConfig, GALConfig, GenerateConfig, schedulers
from gal.config.train import (
    CAPTIONS,
    NETWORKS,
    OPTIMIZERS,
    QUANTIZE_BASE,
    REFERENCE_SAMPLING,
    TrainConfig,
)
from gal.flow_options import WEIGHTING_SCHEMES, FlowOptions

__all__ = [
    "CAPTIONS",
    "NETWORKS",
    "OPTIMIZERS",
    "PRESETS_FILE",
    "QUANTIZE_BASE",
    "REFERENCE_SAMPLING",
    "TASKS",
    "WEIGHTING_SCHEMES",
    "EvalConfig",
    "FlowOptions",
    "GALConfig",
    "GenerateConfig",
    "RunConfig",
    "TrainConfig",
    "fill",
    "load_presets",
    "schedulers",
    "strip_token",
]
