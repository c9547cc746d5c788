"""Checks shared by the config sections: a config file's JSON types and the ranges ``validate`` uses."""

from __future__ import annotations

import math

_JSON_TYPES = {
    "str": ((str,), "a string"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
}


def check_type(name: str, annotation: str, value) -> None:
    """A config file's value has its field's JSON type (``"anchors": [1, 2]`` is refused here with the
    field's name, not later as an AttributeError deep in validate). Unknown annotations are not checked."""
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    if value is None:
        if optional:
            return
        raise ValueError(f"config field {name} must not be null: give a value or leave the key out")
    if base == "list[str]":
        if not isinstance(value, list):
            raise ValueError(f"config field {name} must be a list of strings, got {type(value).__name__}")
        for i, item in enumerate(value, 1):
            if not isinstance(item, str):
                raise ValueError(
                    f"config field {name}: item {i} must be a string (a prompt in quotes), got {item!r}"
                )
        return
    if base not in _JSON_TYPES:
        return
    types, words = _JSON_TYPES[base]
    if (isinstance(value, bool) and base != "bool") or not isinstance(value, types):
        raise ValueError(f"config field {name} must be {words}, got {value!r} ({type(value).__name__})")


def positive_int(name: str, value, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be at most {most}, got {value!r}")


def positive_float(name: str, value, most: float | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be at most {most:g}, got {value!r}")
