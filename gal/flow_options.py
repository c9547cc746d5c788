"""Flow-matching training options (FLUX.1, FLUX.2, SD3.5 and the other ``gal.families.flow`` families), as
diffusers' ``train_dreambooth_lora_*.py`` names them: ``RunConfig.train.flow``. The SD families ignore them.

Configs saved before these options had their own section kept them flat in ``train``
(``"train": {"weighting_scheme": ...}``); :func:`nest_flat_keys` moves them here when such a file is read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


@dataclass
class FlowOptions:
    # timestep density / loss weighting: "none" (uniform) or "logit_normal", "mode", "sigma_sqrt", "cosmap"
    weighting_scheme: str = "none"
    logit_mean: float = 0.0  # logit_normal's mean
    logit_std: float = 1.0  # logit_normal's std
    mode_scale: float = 1.29  # the "mode" scheme's scale
    # FLUX.1-dev's distilled guidance embedded while training (diffusers' default)
    guidance_scale: float = 3.5

    def validate(self) -> None:
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(
                f"train.flow.weighting_scheme must be one of {', '.join(WEIGHTING_SCHEMES)}, "
                f"got {self.weighting_scheme!r}"
            )


FLAT_KEYS = tuple(f.name for f in fields(FlowOptions))  # their names in ``train`` before the section


def nest_flat_keys(train: dict) -> dict:
    """A saved ``train`` section with the flow options in the current form: flat keys (an old config file)
    move into ``train["flow"]``; a section with both forms is refused, as neither can be said to win."""
    flat = [key for key in FLAT_KEYS if key in train]
    if not flat:
        return train
    if "flow" in train:
        raise ValueError(
            f"the config sets the flow-matching options twice: train.{', train.'.join(flat)} (the old flat "
            "form) and train.flow (the current form): keep one, e.g. move "
            f"{flat[0]!r} into train.flow"
        )
    nested = {key: value for key, value in train.items() if key not in flat}
    nested["flow"] = {key: train[key] for key in flat}
    return nested


def flatten(train: dict) -> dict:
    """The reverse of :func:`nest_flat_keys`: ``train["flow"]`` spread into ``train`` (the layout a run's
    config hash has always been computed from)."""
    flat = {key: value for key, value in train.items() if key != "flow"}
    flat.update(train.get("flow") or {})
    return flat
