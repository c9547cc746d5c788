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
OPTIMIZERS = ("adamw", "adamw8bit")
QUANTIZE_BASE = (None, "none", "int8", "nf4", "fp8")
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")
PRESETS_FILE = Path(__file__).parent / "presets" / "anchor_prompts.json"


def schedulers() -> tuple[str, ...]:
    """Every sampler name some model family accepts (the loaded model's family checks its own)."""
    from gal.families import FAMILIES

    return tuple(dict.fromkeys(name for family in FAMILIES.values() for name in family.schedulers()))


REFERENCE_SAMPLING = ("pooled", "real-rate")
CAPTIONS = ("plain", "informative", "vlm")


NETWORKS = ("lora", "dora", "lokr", "loha")


@dataclass
class TrainConfig:
    rank: int = 8  # LoRA rank r
    # The adapter kind (peft): "lora", "dora" (LoRA with a learned magnitude per output), "lokr" (Kronecker
    # product, LyCORIS) or "loha" (Hadamard product of two low-rank pairs, LyCORIS). See gal.training.
    network: str = "lora"
    # LoRA alpha; the adapter's scale is alpha / rank. None (the default) means alpha = rank, scale 1,
    # and follows the rank when the rank is changed later; a number given here, by --alpha or in a
    # saved config is kept as it is (old configs saved alpha 8.0 and keep it). After construction
    # the attribute always holds a number, so training and exports read one value.
    alpha: float | None = None
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
    # "vlm": the run's VLM judge (oracle vlm:... or an ensemble with one) describes what surrounds the subject
    # in every reference and added image; its caption is the prompt, then those words (SID's selectively
    # informative descriptions: class name + non-subject content).
    captions: str = "plain"
    # Preview images of two anchors every N training steps, shown on the Progress tab. None: every 100 steps
    # on a GPU, off on the CPU (there a preview costs more than 10 % of a round); 0: off.
    preview_every: int | None = None
    # Save the training state (adapter, optimiser, scheduler, RNG, step) every N steps, so a killed or
    # cancelled round resumes mid-round. None: 100 on a GPU (a save: ~0.2 s SD-1.5, ~1.9 s FLUX), on the CPU a
    # third of the round's steps (so short test rounds exercise it); 0: off.
    checkpoint_every: int | None = None
    # -- memory (None: on where the model family needs it on CUDA, see gal.families.defaults; off on CPU) --
    gradient_checkpointing: bool | None = (
        None  # recompute activations in backward: ~same speed x1.3, far less memory
    )
    offload_text_encoders: bool | None = (
        None  # after caching the round's embeddings, move text encoders to the CPU
    )
    # "adamw8bit": bitsandbytes' 8-bit AdamW (CUDA only), 1/4 of the optimiser state. None: the family's
    # 24 GB preset on CUDA (Family.preset_24gb), else "adamw".
    optimizer: str | None = None
    # Frozen denoiser weights in "int8" (torchao, CPU+CUDA) / "fp8" (CUDA); "nf4": not yet. "none": full
    # precision even where the family's preset quantizes; None: the family's 24 GB preset on CUDA.
    quantize_base: str | None = None
    # Keep the last N transformer blocks' frozen weights on the CPU and stream each one in while it runs
    # (forward and the checkpointed recompute; turns gradient checkpointing on). 0: off. None: the family's
    # 24 GB preset on CUDA, else 0. See gal.blockswap.
    blocks_to_swap: int | None = None
    # A folder for TensorBoard event files (one subfolder per run: loss and lr per step, TXT-ALN / IMG-ALN /
    # OVF / Δ and a sample grid per round). None: no event files.
    log_dir: str | None = None
    # Masked loss: a reference's mask (its alpha channel or NAME.mask.png) weighs the latent loss; the
    # unmasked area counts at this floor weight (0: not at all, 1: as much as the subject).
    mask_floor: float = 0.1
    # Aspect-ratio buckets: each reference is resized to the bucket of its aspect ratio at the family's
    # native pixel count (not centre-cropped to a square) and a step's batch comes from one bucket. Off:
    # every reference is centre-cropped to a square, as the paper's runs and every run before it.
    bucketing: bool = False
    train_text_encoder: bool = (
        False  # also a LoRA on the CLIP text encoder's attention (SD 1.x/2.x), as diffusers' scripts
    )
    # -- flow matching (FLUX.1, SD3.5: gal.families.flow), as diffusers' train_dreambooth_lora_*.py --
    weighting_scheme: str = (
        "none"  # timestep density / loss weighting: "none" (uniform) or "logit_normal", ...
    )
    logit_mean: float = 0.0  # logit_normal's mean
    logit_std: float = 1.0  # logit_normal's std
    mode_scale: float = 1.29  # the "mode" scheme's scale
    guidance_scale: float = (
        3.5  # FLUX.1-dev's distilled guidance embedded while training (diffusers' default)
    )

    def __setattr__(self, name, value) -> None:
        # ``_alpha_follows_rank`` is a plain attribute, not a field: not saved, not hashed.
        if name == "alpha":
            if value is None:  # the rule: alpha = rank
                object.__setattr__(self, "_alpha_follows_rank", True)
                value = float(self.rank) if isinstance(self.rank, int) else self.rank
            else:
                object.__setattr__(self, "_alpha_follows_rank", False)
        object.__setattr__(self, name, value)
        if name == "rank" and getattr(self, "_alpha_follows_rank", False) and isinstance(value, int):
            object.__setattr__(self, "alpha", float(value))

    def validate(self) -> None:
        _positive_int("train.rank", self.rank, most=1024)
        _positive_int("train.steps", self.steps, most=1_000_000)
        _positive_int("train.batch_size", self.batch_size, most=1024)
        _positive_float("train.alpha", self.alpha, most=1e4)
        _positive_float("train.learning_rate", self.learning_rate, most=1.0)
        _positive_float("train.max_grad_norm", self.max_grad_norm, most=1e6)
        weight = self.prior_loss_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1e3:
            raise ValueError(f"train.prior_loss_weight must be a number from 0 to 1000, got {weight!r}")
        n_class = self.num_class_images
        if isinstance(n_class, bool) or not isinstance(n_class, int) or not 0 <= n_class <= 10_000:
            raise ValueError(f"train.num_class_images must be a whole number 0-10000, got {n_class!r}")
        if self.prior_preservation:
            _positive_int("train.num_class_images", n_class)
        if self.resolution is not None:
            _positive_int("train.resolution", self.resolution, most=4096)
            if self.resolution % 8:
                raise ValueError(f"train.resolution must be a multiple of 8, got {self.resolution}")
        if not self.target_modules:
            raise ValueError(
                "train.target_modules is empty: name the attention layers to adapt, e.g. to_q,to_v"
            )
        if self.prior_preservation and not self.class_prompt.strip():
            raise ValueError("prior preservation needs a class prompt, e.g. 'a cat'")
        if self.mixed_precision not in ("auto", "fp16", "bf16", "no"):
            raise ValueError(
                f"train.mixed_precision must be auto, fp16, bf16 or no, got {self.mixed_precision!r}"
            )
        if self.preview_every is not None and (
            isinstance(self.preview_every, bool)
            or not isinstance(self.preview_every, int)
            or not 0 <= self.preview_every <= 1_000_000
        ):
            raise ValueError(
                f"train.preview_every must be a whole number of steps (0 = off), got {self.preview_every!r}"
            )
        if self.network not in NETWORKS:
            raise ValueError(f"train.network must be {' | '.join(NETWORKS)}, got {self.network!r}")
        if self.network != "lora" and self.train_text_encoder:
            raise ValueError(
                f"train.network={self.network!r} adapts the denoiser only: turn train.train_text_encoder off "
                "or use network 'lora'"
            )
        floor = self.mask_floor
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
            raise ValueError(f"train.mask_floor must be a number from 0 to 1, got {floor!r}")
        if not isinstance(self.bucketing, bool):
            raise ValueError(f"train.bucketing must be true or false, got {self.bucketing!r}")
        if self.log_dir is not None and (not isinstance(self.log_dir, str) or not self.log_dir.strip()):
            raise ValueError(f"train.log_dir must be a folder path or left empty, got {self.log_dir!r}")
        if self.checkpoint_every is not None and (
            isinstance(self.checkpoint_every, bool)
            or not isinstance(self.checkpoint_every, int)
            or not 0 <= self.checkpoint_every <= 1_000_000
        ):
            raise ValueError(
                "train.checkpoint_every must be a whole number of steps (0 = off), "
                f"got {self.checkpoint_every!r}"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.captions not in CAPTIONS:
            raise ValueError(f"train.captions must be {' or '.join(CAPTIONS)}, got {self.captions!r}")
        if self.reference_sampling not in REFERENCE_SAMPLING:
            raise ValueError(
                f"train.reference_sampling must be {' or '.join(REFERENCE_SAMPLING)}, "
                f"got {self.reference_sampling!r}"
            )
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be adamw or adamw8bit, got {self.optimizer!r}")
        if self.quantize_base not in QUANTIZE_BASE:
            raise ValueError(
                f"train.quantize_base must be null, none, int8, nf4 or fp8, got {self.quantize_base!r}"
            )
        if self.blocks_to_swap is None:
            pass
        elif isinstance(self.blocks_to_swap, bool) or not isinstance(self.blocks_to_swap, int):
            raise ValueError(f"train.blocks_to_swap must be an integer >= 0, got {self.blocks_to_swap!r}")
        elif not 0 <= self.blocks_to_swap <= 1000:
            raise ValueError(f"train.blocks_to_swap must be between 0 and 1000, got {self.blocks_to_swap!r}")
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(
                f"train.weighting_scheme must be one of {', '.join(WEIGHTING_SCHEMES)}, "
                f"got {self.weighting_scheme!r}"
            )


@dataclass
class GenerateConfig:
    # None: the model family's sampler (SD 1.x/2.x: DPM-Solver++ multistep, as the official code; SDXL: euler;
    # FLUX.1: flow-euler); a name picks one the family supports.
    scheduler: str | None = None
    steps: int = 50  # official: 50
    guidance_scale: float = 7.5  # official: 7.5
    batch_size: int = 8  # images per UNet batch, across anchors
    negative_prompt: str = ""
    # Image size in px of the anchors' images; None: the training resolution, square.
    width: int | None = None
    height: int | None = None
    # -- memory (None: on where the model family needs it on CUDA; off on CPU) --
    vae_tiling: bool | None = None  # decode large images tile by tile
    vae_slicing: bool | None = None  # decode a batch one image at a time
    cpu_offload: bool | None = (
        None  # diffusers' model CPU offload: one model on the GPU at a time (CUDA only)
    )
    compile: bool = (
        False  # torch.compile the denoiser on CUDA (costs a minute once; an adapter swap recompiles)
    )

    def validate(self) -> None:
        known = schedulers()
        if self.scheduler is not None and self.scheduler not in known:
            raise ValueError(f"unknown scheduler {self.scheduler!r}: choose one of {', '.join(known)}")
        _positive_int("generate.steps", self.steps, most=1000)
        _positive_int("generate.batch_size", self.batch_size, most=1024)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(f"generate.{name}", value, most=8192)
                if value % 8:
                    raise ValueError(f"generate.{name} must be a multiple of 8, got {value}")
        scale = self.guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < math.inf:
            raise ValueError(f"generate.guidance_scale must be >= 0, got {scale!r}")
        if scale > 100:
            raise ValueError(f"generate.guidance_scale must be at most 100 (7.5 is usual), got {scale!r}")


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
        _positive_int("m", self.m, most=1000)
        _positive_int("k", self.k, most=1000)
        _positive_int("max_rounds", self.max_rounds, most=1000)
        _positive_int("images_per_anchor", self.images_per_anchor, most=1000)
        if self.images_per_anchor > 1 and not Strategy.parse(self.strategy).diversity:
            raise ValueError(
                f"images_per_anchor {self.images_per_anchor} only applies to the +diversity strategies: "
                f"set it to 1 or choose uncertainty+diversity (strategy is {self.strategy})"
            )
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"λ must be a finite number >= 0, got {self.lam!r}")
        if self.lam > 1e3:
            raise ValueError(f"λ must be at most 1000 (the paper uses 0.005), got {self.lam!r}")


@dataclass
class EvalConfig:
    prompts: list[str] = field(default_factory=list)  # held-out templates with "{}"; empty: task default
    images_per_prompt: int = 2
    enabled: bool = True

    def validate(self) -> None:
        _positive_int("eval.images_per_prompt", self.images_per_prompt, most=1000)
        if len(self.prompts) > 1000:
            raise ValueError(f"eval.prompts holds {len(self.prompts)} prompts: at most 1000, keep a sample")


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
        _check_type("anchors", "list[str]", self.anchors)
        _check_type("eval.prompts", "list[str]", self.eval.prompts)
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
                raise ValueError(
                    f"config key {key!r} must be an object of {key} settings, got {type(value).__name__}"
                )
            if key in nested:
                sub_fields = {f.name: f for f in fields(nested[key])}
                bad = set(value) - set(sub_fields)
                if bad:
                    raise ValueError(f"unknown {key} config keys: {', '.join(sorted(bad))}")
                for sub_key, sub_value in value.items():
                    _check_type(f"{key}.{sub_key}", sub_fields[sub_key].type, sub_value)
                value = nested[key](**value)
            else:
                _check_type(key, next(f.type for f in fields(cls) if f.name == key), value)
            kwargs[key] = value
        if kwargs.get("task", "object") not in TASKS:  # checked before anything looks up the task's presets
            raise ValueError(f"task must be 'object' or 'style', got {kwargs['task']!r}")
        return cls(**kwargs)


_JSON_TYPES = {
    "str": ((str,), "a string"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
}


def _check_type(name: str, annotation: str, value) -> None:
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


def fill(template: str, subject_phrase: str) -> str:
    return template.replace("{}", subject_phrase).strip() if "{}" in template else template.strip()


def strip_token(prompt: str, token: str) -> str:
    if not token:
        return " ".join(prompt.split())
    return " ".join(prompt.replace(token, " ").split())


def load_presets() -> dict:
    """The paper's anchor presets: 18 object and 18 style templates (``{}`` = subject phrase)."""
    return json.loads(PRESETS_FILE.read_text())


def _positive_int(name: str, value, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be at most {most}, got {value!r}")


def _positive_float(name: str, value, most: float | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be at most {most:g}, got {value!r}")
