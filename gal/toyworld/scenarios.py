"""The GAL scenarios of the toy world (``object``, ``style``, ``known``, ``known-style``): references of a
subject of interest and anchors that put it elsewhere, and what a faithful model would draw for them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from gal.toyworld.draw import render
from gal.toyworld.spec import BACKGROUNDS, RESERVED_PATTERN, Spec, subject_phrase


@dataclass
class Scenario:
    """A GAL preset: references of a subject of interest (SoI) and anchors that put it elsewhere.

    ``anchors`` are templates with one ``"{}"`` filled with ``subject`` for the generator prompt and with
    ``oracle_subject`` (the subject without its token) for the CLIP oracle.
    """

    name: str
    kind: str  # "object" | "style"
    token: str  # the new word bound to the SoI
    subject: str  # "a <sks> star": what fills "{}" in prompts
    oracle_subject: str  # "a star": what fills "{}" for the oracle (token removed)
    prompt: str  # the reference prompt, "a <sks> star on stairs"
    non_soi_text: str  # what overfitting looks like, "a star on stairs" (Eq. 8)
    reference_specs: list[Spec]
    reference_prompts: list[str]
    anchors: list[str]  # 18 templates, each with one "{}"
    eval_prompts: list[str]  # held-out prompts, never anchors
    seed: int = 0  # draws the reference images
    notes: str = ""
    metadata: dict = field(default_factory=dict)

    def anchor_prompts(self) -> list[str]:
        return [a.format(self.subject) for a in self.anchors]

    def anchor_oracle_texts(self) -> list[str]:
        return [" ".join(a.format(self.oracle_subject).split()) for a in self.anchors]

    def reference_images(self, size: int = 32) -> list[Image.Image]:
        rng = np.random.default_rng([self.seed, 2])
        return [render(s, rng, size) for s in self.reference_specs]

    def write_references(self, folder: str | Path, size: int = 32) -> list[Path]:
        """Write the reference PNGs (``ref_0.png`` ...) to ``folder``; returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(self.reference_images(size)):
            p = folder / f"ref_{i}.png"
            img.save(p)
            paths.append(p)
        return paths

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reference_specs"] = [asdict(s) for s in self.reference_specs]
        return d


# The "known" scenario's subject: a shape × colour × pattern the base generator already draws faithfully
# in every scene (scripts/known_gate.py measures it), so the round's own aligned drawings can be good data.
KNOWN_SUBJECT = Spec("star", "green", "checkered", "stairs")
# The "known-style" scenario's style: the same colour × pattern, learned from hearts on a blank background.
KNOWN_STYLE = Spec("heart", "green", "checkered", "blank")

# The style scenarios' anchors: 6 shapes other than the references' heart × 3 scenes.
STYLE_ANCHOR_SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
STYLE_BACKGROUNDS = ("grass", "sea", "night")
# The scened held-out prompts' (shape, scene): what the subject would look like there, drawn faithfully.
HELDOUT_SCENES = {
    "object": [("star", b) for b in ("grass", "night", "sea", "snow", "desert")],
    "style": [("star", "snow"), ("square", "desert"), ("cross", "sunset")],
}


def _anchor_templates(exclude: str, subject_slot: str = "{}") -> list[str]:
    """Two phrasings for each background other than ``exclude``: 9 x 2 = 18 templates."""
    out = []
    for name, phrases in BACKGROUNDS.items():
        if name != exclude:
            out.extend(f"{subject_slot} {p}" for p in phrases)
    return out


def subject_renders(specs: list[Spec], n: int, seed: int = 0, size: int = 32) -> list[Image.Image]:
    """``n`` real renders of each of ``specs`` (the gate's truth: :func:`truth_specs`)."""
    rng = np.random.default_rng([seed, 3])
    return [render(spec, rng, size) for spec in specs for _ in range(n)]


def scenarios() -> dict[str, Scenario]:
    """The GAL presets: ``object`` (a rainbow-striped star, all references on stairs), ``style`` (the
    rainbow-striped palette), and ``known`` / ``known-style``: the same with a subject / style the base
    model already draws (a green checkered star on stairs; green checkered hearts on a blank background)."""
    star = Spec("star", None, RESERVED_PATTERN, "stairs")
    obj = Scenario(
        name="object",
        kind="object",
        token="<sks>",
        subject="a <sks> star",
        oracle_subject="a star",
        prompt="a <sks> star on stairs",
        non_soi_text="a star on stairs",
        reference_specs=[star] * 4,
        reference_prompts=["a <sks> star on stairs"] * 4,
        anchors=_anchor_templates("stairs"),
        eval_prompts=[
            "a <sks> star",
            "a <sks> star in a field of grass",
            "a <sks> star under the night sky",
            "a <sks> star by the sea",
            "a <sks> star on a snowy field",
            "a <sks> star in the sand",
        ],
        seed=0,
        notes="Subject: a rainbow-striped star (a pattern never in base training). Every reference is on "
        "stairs, so stairs are the non-SoI content that can leak into anchors.",
    )
    heart = Spec("heart", None, RESERVED_PATTERN, "blank")
    sty = Scenario(
        name="style",
        kind="style",
        token="<sks>",
        subject="in <sks> style",
        oracle_subject="",
        prompt="a heart in <sks> style on a blank background",
        non_soi_text="a heart on a blank background",
        reference_specs=[heart] * 2,
        reference_prompts=["a heart in <sks> style on a blank background"] * 2,
        anchors=[f"a {s} {{}} {BACKGROUNDS[b][0]}" for s in STYLE_ANCHOR_SHAPES for b in STYLE_BACKGROUNDS],
        eval_prompts=[
            "a circle in <sks> style",
            "a star in <sks> style in the snow",
            "a square in <sks> style in the desert",
            "a cross in <sks> style at sunset",
        ],
        seed=0,
        notes="Style: the rainbow-striped palette. References are rainbow-striped hearts on a blank "
        "background; the heart shape and the blank background are what can leak.",
    )
    known = replace(  # the object scenario with a subject the base model already draws
        obj,
        name="known",
        reference_specs=[KNOWN_SUBJECT] * 4,
        anchors=list(obj.anchors),
        eval_prompts=list(obj.eval_prompts),
        notes=f"Subject: {subject_phrase(KNOWN_SUBJECT)[2:]} — a shape, colour and pattern the base model "
        "draws in every scene, so aligned round-1 drawings of it in new scenes look like the references "
        "(the gate in the model card). Every reference is on stairs, as in `object`.",
        metadata={"subject_spec": asdict(KNOWN_SUBJECT)},
    )
    known_style = replace(  # the style scenario with a style the base model already draws
        sty,
        name="known-style",
        reference_specs=[KNOWN_STYLE] * 2,
        anchors=list(sty.anchors),
        eval_prompts=list(sty.eval_prompts),
        notes="Style: the green checkered palette — a colour and pattern the base model draws on every "
        "shape, so aligned round-1 drawings of other shapes in <sks> style look like the style (the gate "
        "in the model card). References are green checkered hearts on a blank background, as in `style`.",
        metadata={"style_spec": asdict(KNOWN_STYLE)},
    )
    return {"object": obj, "style": sty, "known": known, "known-style": known_style}


def truth_specs(scenario: Scenario, scenes: list[tuple[str, str]] | None = None) -> list[Spec]:
    """What a faithful, disentangled model would draw for ``scenario``'s anchors: the references' subject
    (object) or colour × pattern (style) in each anchor's scene — or in ``scenes`` ((shape, scene) pairs)."""
    ref = scenario.reference_specs[0]
    if scenes is None:
        if scenario.kind == "style":
            scenes = [(s, b) for s in STYLE_ANCHOR_SHAPES for b in STYLE_BACKGROUNDS]
        else:
            scenes = [(ref.shape, b) for b in BACKGROUNDS if b != ref.background]
    return [Spec(shape, ref.colour, ref.pattern, b) for shape, b in scenes]
