"""The whole run's config (``RunConfig``): the subject, anchors, models and one section per concern, saved as
JSON with each run; the prompt helpers (``fill``, ``strip_token``) and the paper's anchor presets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gal.config.checks import check_type
from gal.config.sections import EvalConfig, GALConfig, GenerateConfig
from gal.config.train import TrainConfig
from gal.flow_options import FlowOptions, flatten, nest_flat_keys

TASKS = ("object", "style")
PRESETS_FILE = Path(__file__).parents[1] / "presets" / "anchor_prompts.json"


# Settings added after runs existed, with the default that trains as before: a config that leaves them at it
# hashes as it did, so an existing run keeps its hash and its saved mid-round training state.
ADDED_LATER = {
    "train": {"mask_floor": 0.1, "bucketing": False},
    "generate": {"width": None, "height": None},
}


@dataclass
class RunConfig:
    task: str = "object"  # object: a subject (cat, toy); style: a look (watercolor)
    soi_token: str = "<sks>"  # the pseudo-word bound to the subject of interest
    subject_phrase: str = "a <sks> cat"  # replaces "{}" in anchor and eval templates
    anchors: list[str] = field(default_factory=list)  # templates with "{}" or full prompts
    oracle_subject: str | None = None  # fills "{}" in what the oracle reads; None: subject phrase minus token
    model: str = (
        "tiny"  # "tiny"/"tiny-sdxl"/"tiny-flux", "toy", a hub id, a local diffusers folder or a .safetensors
    )
    # The judge (gal.judges): a CLIP spec as always ("tiny", "toy", "ViT-B-32/openai", a local folder) is
    # Eq. 8's CLIP rule; "siglip:...", "dino:...", "vlm:...", "ensemble:clip+dino" or an installed plug-in
    # name pick another. One field, so the CLI's --oracle, the app's oracle box and saved runs keep working.
    oracle: str = "tiny"
    seed: int = 0
    name: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    gal: GALConfig = field(default_factory=GALConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # -- derived -----------------------------------------------------------------------------
    def anchor_prompts(self) -> list[str]:
        return [fill(t, self.subject_phrase) for t in self.anchors]

    def oracle_text(self, prompt: str) -> str:
        """What the CLIP oracle reads of a full prompt: the prompt without the SoI token (CLIP does not
        know it)."""
        return strip_token(prompt, self.soi_token)

    def _oracle_texts(self, templates: list[str]) -> list[str]:
        subject = (
            self.oracle_subject
            if self.oracle_subject is not None
            else strip_token(self.subject_phrase, self.soi_token)
        )
        return [strip_token(fill(t, subject), self.soi_token) for t in templates]

    def anchor_subject(self) -> str:
        """The subject as the oracle reads it ("a star"; "" for a style): what a judge is told to look for."""
        return self._oracle_texts(["{}"])[0]

    def anchor_oracle_texts(self) -> list[str]:
        return self._oracle_texts(self.anchors)

    def eval_prompts(self) -> list[str]:
        return [fill(t, self.subject_phrase) for t in self.eval.prompts]

    def eval_oracle_texts(self) -> list[str]:
        return self._oracle_texts(self.eval.prompts)

    def check_non_soi(self, non_soi: str | None, prompt: str) -> None:
        """A reference's non-SoI text names what the model must NOT learn (the scene without the subject);
        with the SoI token in it, it would score the subject itself as overfitting."""
        if non_soi is None or not non_soi.strip():
            return  # the default: the prompt without the token
        if self.soi_token and self.soi_token in non_soi:
            suggestion = self.oracle_text(prompt)
            same = non_soi.split() == prompt.split()
            raise ValueError(
                f"the non-SoI text {non_soi!r} contains the SoI token {self.soi_token!r}"
                + (" (it is the prompt itself)" if same else "")
                + f": write what is not the subject, e.g. {suggestion!r}, or leave it out for that default"
            )

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be 'object' or 'style', got {self.task!r}")
        # The engine derives seeds as seed * 7919 + i for torch's 64-bit generator: 2**32 keeps that in range.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be a whole number from 0 to {2**32 - 1}, got {self.seed!r}")
        if self.task == "object":
            if not self.soi_token.strip():
                raise ValueError("an object run needs an SoI token, e.g. <sks>")
            if self.soi_token not in self.subject_phrase:
                raise ValueError(
                    f"the subject phrase {self.subject_phrase!r} lacks the SoI token {self.soi_token!r}: "
                    f"write it in, e.g. 'a {self.soi_token} cat'"
                )
        if not self.subject_phrase.strip():
            raise ValueError("the subject phrase is empty: write what replaces {} in the anchors")
        check_type("anchors", "list[str]", self.anchors)
        check_type("eval.prompts", "list[str]", self.eval.prompts)
        if not self.anchors:
            raise ValueError("no anchors: give at least k anchor prompts (a preset has 18)")
        if len(self.anchors) > 1000:
            raise ValueError(f"{len(self.anchors)} anchors: at most 1000, keep a pool you can review")
        cleaned = [a.strip() for a in self.anchors]
        if any(not a for a in cleaned):
            raise ValueError(f"anchor {cleaned.index('') + 1} is empty: remove the blank line")
        seen: dict[str, int] = {}
        for i, a in enumerate(cleaned):
            if a.lower() in seen:
                raise ValueError(f"anchor {i + 1} repeats anchor {seen[a.lower()] + 1}: {a!r}")
            seen[a.lower()] = i
        for i, a in enumerate(cleaned):
            if "{}" not in a and self.soi_token and self.soi_token not in a:
                raise ValueError(
                    f"anchor {i + 1} {a!r} has neither '{{}}' nor the SoI token {self.soi_token!r}"
                )
        from gal import judges

        if self.oracle:  # empty: the engine fills in its default CLIP
            judges.validate(self.oracle)
        if self.train.captions == "vlm" and not (self.oracle and judges.uses_vlm(self.oracle)):
            raise ValueError(
                f"train.captions vlm needs a VLM judge, but oracle is {self.oracle!r}: "
                "set oracle to vlm:tiny (or a VLM folder) or ensemble:clip+vlm, or use informative captions"
            )
        self.train.validate()
        self.generate.validate()
        self.gal.validate()
        self.eval.validate()
        if self.gal.k > len(self.anchors):
            raise ValueError(
                f"k={self.gal.k} is larger than the {len(self.anchors)} anchors: lower k or add anchors"
            )

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def identity(self) -> dict:
        """What a run's config hash and its training-state fingerprint are computed from: ``to_dict`` in the
        layout configs had before ``train.flow`` and ``lora_alpha`` (the flow options flat in ``train``,
        alpha a number), so an existing run's hash and a saved mid-round state stay valid."""
        data = self.to_dict()
        data["train"] = flatten(data["train"])
        data["train"]["alpha"] = self.train.lora_alpha
        for section, added in ADDED_LATER.items():  # at their default they change nothing: not hashed
            for key, default in added.items():
                if data[section].get(key) == default:
                    del data[section][key]
        return data

    def identity_json(self) -> str:
        return json.dumps(self.identity(), indent=2, sort_keys=True)

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """A saved config (a run's ``config.json``, the database row, a config file), checked key by key;
        an old file's flat flow-matching keys in ``train`` move to ``train.flow``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        kwargs = {}
        for key, value in data.items():
            if key in SECTIONS:
                value = _section(key, value)
            else:
                check_type(key, next(f.type for f in fields(cls) if f.name == key), value)
            kwargs[key] = value
        if kwargs.get("task", "object") not in TASKS:  # checked before anything looks up the task's presets
            raise ValueError(f"task must be 'object' or 'style', got {kwargs['task']!r}")
        return cls(**kwargs)


# The config's sections by their path: each is read from a JSON object of its own.
SECTIONS = {
    "train": TrainConfig,
    "train.flow": FlowOptions,
    "generate": GenerateConfig,
    "gal": GALConfig,
    "eval": EvalConfig,
}


def _section(path: str, value):
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise ValueError(f"config key {path!r} must be an object of {path} settings, got {kind}")
    if path == "train":
        value = nest_flat_keys(value)
    cls = SECTIONS[path]
    sub_fields = {f.name: f for f in fields(cls)}
    bad = set(value) - set(sub_fields)
    if bad:
        raise ValueError(f"unknown {path} config keys: {', '.join(sorted(bad))}")
    kwargs = {}
    for key, sub_value in value.items():
        if f"{path}.{key}" in SECTIONS:
            sub_value = _section(f"{path}.{key}", sub_value)
        else:
            check_type(f"{path}.{key}", sub_fields[key].type, sub_value)
        kwargs[key] = sub_value
    return cls(**kwargs)


def fill(template: str, subject_phrase: str) -> str:
    return template.replace("{}", subject_phrase).strip() if "{}" in template else template.strip()


def strip_token(prompt: str, token: str) -> str:
    if not token:
        return " ".join(prompt.split())
    return " ".join(prompt.replace(token, " ").split())


def load_presets() -> dict:
    """The paper's anchor presets: 18 object and 18 style templates (``{}`` = subject phrase)."""
    return json.loads(PRESETS_FILE.read_text())
