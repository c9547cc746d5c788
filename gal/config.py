"""Run configuration: one dataclass per concern, a comment on each default, saved as JSON with each run.

Defaults follow the paper and its official code (see README "Defaults"), except where a LoRA differs
from the official full-UNet DreamBooth (learning rate, steps).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gal.algorithm import Strategy

TASKS = ("object", "style")
SCHEDULERS = ("dpmsolver++", "ddim", "euler", "euler_a", "pndm", "ddpm")
PRESETS_FILE = Path(__file__).parent / "presets" / "anchor_prompts.json"


REFERENCE_SAMPLING = ("pooled", "real-rate")
CAPTIONS = ("plain", "informative")


@dataclass
class TrainConfig:
    rank: int = 8  # LoRA rank r
    alpha: float = 8.0  # LoRA alpha; the adapter's scale is alpha / rank
    learning_rate: float = 1e-4  # LoRA on SD-1.x; the official full-UNet run used 5e-6
    steps: int = 400  # optimiser steps per round (official: 800 object / 500 style, full UNet)
    batch_size: int = 1  # official: 1 object, 2 style
    resolution: int | None = None  # None: the model's native size (512 for SD-1.5, 32 for the toy world)
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    retrain_from_base: bool = True  # official: each round trains from the base on all references
    prior_preservation: bool = False  # DreamBooth's class-prior loss (official object runs: on, 200 images)
    class_prompt: str = ""  # e.g. "a cat"; required when prior_preservation is on
    num_class_images: int = 50  # class images generated once per run with the base model
    prior_loss_weight: float = 1.0
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto: bf16 on GPUs that support it, else fp16; fp32 on CPU
    # How batches mix real and added references. "pooled" (official code): draw uniformly from all of
    # them, so every added image takes batch slots from the real ones whatever its weight. "real-rate":
    # draw real references exactly as round 1 does and the added ones in a second half-batch, so the
    # real references keep their round-1 training and an added image counts by its weight only.
    reference_sampling: str = "pooled"
    # Learning-rate schedule over a round's steps: "constant" (diffusers' default) or "cosine" (5 % linear
    # warm-up, then cosine decay to 0), which keeps long high-lr rounds from blowing up late.
    lr_schedule: str = "constant"
    # Training captions (the SID seed). "plain": each reference trains on its prompt. "informative":
    # a real reference's caption also names its non-SoI content (the words of its non-SoI caption its
    # prompt lacks: "a <sks> star" + "a star on stairs" -> "a <sks> star on stairs"), and an added
    # image's caption names what the oracle sees in it (the anchor or non-SoI text it scores highest).
    captions: str = "plain"

    def validate(self) -> None:
        _positive_int("train.rank", self.rank)
        _positive_int("train.steps", self.steps)
        _positive_int("train.batch_size", self.batch_size)
        _positive_float("train.alpha", self.alpha)
        _positive_float("train.learning_rate", self.learning_rate)
        if self.resolution is not None:
            _positive_int("train.resolution", self.resolution)
            if self.resolution % 8:
                raise ValueError(f"train.resolution must be a multiple of 8, got {self.resolution}")
        if not self.target_modules:
            raise ValueError("train.target_modules is empty: name the attention layers to adapt, e.g. to_q,to_v")
        if self.prior_preservation and not self.class_prompt.strip():
            raise ValueError("prior preservation needs a class prompt, e.g. 'a cat'")
        if self.mixed_precision not in ("auto", "fp16", "bf16", "no"):
            raise ValueError(f"train.mixed_precision must be auto, fp16, bf16 or no, got {self.mixed_precision!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.captions not in CAPTIONS:
            raise ValueError(f"train.captions must be {' or '.join(CAPTIONS)}, got {self.captions!r}")
        if self.reference_sampling not in REFERENCE_SAMPLING:
            raise ValueError(f"train.reference_sampling must be {' or '.join(REFERENCE_SAMPLING)}, got {self.reference_sampling!r}")


@dataclass
class GenerateConfig:
    scheduler: str = "dpmsolver++"  # official: DPM-Solver multistep
    steps: int = 50  # official: 50
    guidance_scale: float = 7.5  # official: 7.5
    batch_size: int = 8  # images per UNet batch, across anchors
    negative_prompt: str = ""

    def validate(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        _positive_int("generate.steps", self.steps)
        _positive_int("generate.batch_size", self.batch_size)
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"generate.guidance_scale must be >= 0, got {self.guidance_scale}")


@dataclass
class GALConfig:
    # query × Balance: random | uncertainty | human, "+balance" to weigh added images by Δ (Table 1's rows)
    strategy: str = "uncertainty+balance"
    m: int = 10  # images per anchor per round (paper: 10)
    k: int = 3  # anchors picked per round (paper: 3)
    lam: float = 0.005  # λ of Eq. 9 (official 0.005: added images then weigh Δ <= 0.0035)
    max_rounds: int = 4  # paper: 4 (round 1 is plain DreamBooth on the real references)
    remove_selected: bool = True  # official: a selected anchor leaves the pool (18 -> 15 -> 12)
    pause_for_review: bool = False  # stop at each round's review (the app and Human mode do)
    adaptive_stop: bool = True  # Eq. 10: finish early when fewer than k anchors are still uncertain
    # +diversity strategies only: up to this many images of a picked anchor, each extra one only when it
    # raises the picks' diversity (mean pairwise cosine distance of the oracle's image embeddings).
    # 1 (default): k images a round, the budget of every Table 1 row, so the matched-compute control holds.
    images_per_anchor: int = 1

    @property
    def parsed_strategy(self) -> Strategy:
        return Strategy.parse(self.strategy)

    def validate(self) -> None:
        Strategy.parse(self.strategy)  # raises, listing the choices
        _positive_int("m", self.m)
        _positive_int("k", self.k)
        _positive_int("max_rounds", self.max_rounds)
        _positive_int("images_per_anchor", self.images_per_anchor)
        if not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"λ must be a finite number >= 0, got {self.lam!r}")


@dataclass
class EvalConfig:
    prompts: list[str] = field(default_factory=list)  # held-out templates with "{}"; empty: task default
    images_per_prompt: int = 2
    enabled: bool = True

    def validate(self) -> None:
        _positive_int("eval.images_per_prompt", self.images_per_prompt)


@dataclass
class RunConfig:
    task: str = "object"  # object: a subject (cat, toy); style: a look (watercolor)
    soi_token: str = "<sks>"  # the pseudo-word bound to the subject of interest
    subject_phrase: str = "a <sks> cat"  # replaces "{}" in anchor and eval templates
    anchors: list[str] = field(default_factory=list)  # templates with "{}" or full prompts
    oracle_subject: str | None = None  # fills "{}" in what the oracle reads; None: subject phrase minus token
    model: str = "tiny"  # "tiny", "toy", a hub id or a local diffusers folder
    oracle: str = "tiny"  # "tiny", "toy", "ViT-B-32/openai"-style name/pretrained, or a local folder
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
        """What the CLIP oracle reads of a full prompt: the prompt without the SoI token (CLIP does not know it)."""
        return strip_token(prompt, self.soi_token)

    def _oracle_texts(self, templates: list[str]) -> list[str]:
        subject = self.oracle_subject if self.oracle_subject is not None else strip_token(self.subject_phrase, self.soi_token)
        return [strip_token(fill(t, subject), self.soi_token) for t in templates]

    def anchor_oracle_texts(self) -> list[str]:
        return self._oracle_texts(self.anchors)

    def eval_prompts(self) -> list[str]:
        return [fill(t, self.subject_phrase) for t in self.eval.prompts]

    def eval_oracle_texts(self) -> list[str]:
        return self._oracle_texts(self.eval.prompts)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be 'object' or 'style', got {self.task!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {self.seed!r}")
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
        if not self.anchors:
            raise ValueError("no anchors: give at least k anchor prompts (a preset has 18)")
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
                raise ValueError(f"anchor {i + 1} {a!r} has neither '{{}}' nor the SoI token {self.soi_token!r}")
        self.train.validate()
        self.generate.validate()
        self.gal.validate()
        self.eval.validate()
        if self.gal.k > len(self.anchors):
            raise ValueError(f"k={self.gal.k} is larger than the {len(self.anchors)} anchors: lower k or add anchors")

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        nested = {"train": TrainConfig, "generate": GenerateConfig, "gal": GALConfig, "eval": EvalConfig}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        kwargs = {}
        for key, value in data.items():
            if key in nested and not isinstance(value, dict):
                raise ValueError(f"config key {key!r} must be an object of {key} settings, got {type(value).__name__}")
            if key in nested:
                sub_known = {f.name for f in fields(nested[key])}
                bad = set(value) - sub_known
                if bad:
                    raise ValueError(f"unknown {key} config keys: {', '.join(sorted(bad))}")
                value = nested[key](**value)
            kwargs[key] = value
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


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def _positive_float(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
