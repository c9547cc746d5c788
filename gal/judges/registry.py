"""Judges by name: the built-in ones and third-party ones registered under the ``gal.judges`` entry point.

A judge spec is ``<kind>:<argument>`` or a bare CLIP spec (what ``oracle`` always held):

- ``tiny``, ``toy``, ``ViT-B-32/openai`` (open_clip name/pretrained), a local open_clip folder, or
  ``clip:<any of those>`` — Eq. 8's CLIP rule; ``clip`` alone is the offline default CLIP;
- ``siglip:tiny`` (a tiny SigLIP-shaped open_clip model) or ``siglip:ViT-B-16-SigLIP/webli`` — the same
  rule on a SigLIP model (open_clip loads both);
- ``dino:tiny`` / ``dino:<hub id or folder>`` — DINOv2 image fidelity to the real references;
- ``vlm:tiny`` / ``vlm:<hub id or folder>`` — a vision-language model's yes/no answer;
- ``ensemble:<a>+<b>[+...]`` — a confidence-weighted vote of those judges (``ensemble:clip+dino``);
- ``<plug-in>[:<argument>]`` — an entry point ``<plug-in> = package.module:factory`` in the group
  ``gal.judges``; ``factory(argument, device)`` returns an object with ``name`` and ``judge(request)``.

Parsing imports no torch (the config validates specs with it); only a bare ``clip`` looks up the default
CLIP through ``gal.models``.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

GROUP = "gal.judges"
BUILTIN = ("clip", "siglip", "dino", "vlm", "ensemble")
_DEFAULT_ARG = {"siglip": "tiny", "dino": "tiny", "vlm": "tiny"}  # clip: gal.models.default_oracle()
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def plugins() -> dict:
    """Installed third-party judges: name -> entry point (read from the installed distributions now)."""
    return {ep.name: ep for ep in entry_points(group=GROUP) if ep.name not in BUILTIN}


def available() -> list[str]:
    """Every judge kind a spec may name: the built-in ones, then installed plug-ins."""
    return [*BUILTIN, *sorted(plugins())]


def _default_clip() -> str:
    from gal.models import default_oracle  # gal.models imports torch only inside functions it calls

    return default_oracle()


def parse(spec: str) -> tuple[str, str]:
    """``(kind, argument)`` of a judge spec, defaults filled in; a bare spec is a CLIP spec.

    ``"tiny"`` -> ``("clip", "tiny")``; ``"dino"`` -> ``("dino", "tiny")``; ``"ensemble:clip+dino"`` ->
    ``("ensemble", "clip+dino")``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"oracle must name a judge, got {spec!r}: e.g. tiny, dino:tiny, ensemble:clip+dino")
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    if not sep:
        if spec in BUILTIN[:-1]:
            return spec, _DEFAULT_ARG.get(spec) or _default_clip()
        if spec == "ensemble":
            raise ValueError("ensemble needs its members: e.g. ensemble:clip+dino")
        if _KIND.fullmatch(spec) and "/" not in spec and spec in plugins():
            return spec, ""
        return "clip", spec
    if kind in BUILTIN:
        if not arg.strip():
            raise ValueError(f"judge {spec!r} lacks its model after ':': e.g. {kind}:tiny")
        if kind == "ensemble":
            members = [m.strip() for m in arg.split("+")]
            if len(members) < 2 or not all(members):
                raise ValueError(
                    f"ensemble {spec!r} needs two or more judges joined by '+': ensemble:clip+dino"
                )
            for m in members:
                if m.partition(":")[0] == "ensemble" or parse(m)[0] == "ensemble":
                    raise ValueError(f"ensemble {spec!r} nests an ensemble: list its judges flat")
        return kind, arg.strip()
    if _KIND.fullmatch(kind) and not Path(spec).expanduser().exists():
        if kind in plugins():
            return kind, arg
        raise ValueError(
            f"unknown judge {kind!r} in {spec!r}: choose one of {', '.join(available())} "
            "(or a CLIP spec: tiny, toy, ViT-B-32/openai, a folder)"
        )
    return "clip", spec


def canonical(spec: str) -> str:
    """The one name of a judge, whatever way it was written (``tiny`` and ``clip:tiny`` are one judge)."""
    kind, arg = parse(spec)
    if kind == "ensemble":
        return "ensemble:" + "+".join(canonical(m) for m in arg.split("+"))
    return f"{kind}:{arg}" if arg else kind


def members(spec: str) -> list[str]:
    """The canonical names of the judges a spec consults (an ensemble's members, else itself)."""
    kind, arg = parse(spec)
    return [canonical(m) for m in arg.split("+")] if kind == "ensemble" else [canonical(spec)]


def scorer_spec(spec: str) -> str:
    """The CLIP-space model that measures a run judged by ``spec`` (its TXT-ALN/IMG-ALN, the images'
    sim_anchor/sim_non_soi, the +diversity embeddings, informative captions): a CLIP or SigLIP judge is
    its own scorer, an ensemble uses its first CLIP/SigLIP member, any other judge the default CLIP, so
    a DINO or VLM run's metrics stay comparable with a CLIP run's. A bare spec is returned unchanged."""
    for name in members(spec):
        kind, arg = name.split(":", 1) if ":" in name else (name, "")
        if kind == "clip":
            return arg
        if kind == "siglip":
            return name
    return _default_clip()


def uses_vlm(spec: str) -> str | None:
    """The VLM judge a spec consults (its canonical name), or None."""
    return next((m for m in members(spec) if m.startswith("vlm:")), None)


def validate(spec: str) -> None:
    """Raise a ValueError naming the fix for a spec no judge answers to (loading checks the rest)."""
    parse(spec)
    if parse(spec)[0] == "ensemble":
        for m in parse(spec)[1].split("+"):
            parse(m)
