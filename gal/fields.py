"""The run settings a person sets, as one table: the Set up form, its parsing, and ``gal run``'s flags.

Each :class:`Field` row says, as plain data, what the page shows (label, help, widget kind and its
choices), where the value lives in :class:`gal.config.RunConfig` (``path``), how the form's raw value
becomes a config value (``parse``, one of :data:`PARSERS`) and the CLI flag that sets it. The UI builds
its widgets from these rows, :func:`config_from_form` and :func:`form_from_config` read and write them,
and ``gal.cli`` adds one flag per row that has one: adding a setting is one row here.

No gradio here (``gal`` never imports it): ``ui.setup`` turns ``widget`` into a component.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gal.algorithm import STRATEGIES
from gal.config import EvalConfig, RunConfig, load_presets

# Table 1 of the paper: the query strategies the page offers (value, as RunConfig.gal.strategy takes it).
STRATEGY_CHOICES = (
    ("Random — k random anchors, weight 1", "random"),
    ("Human — the images you accept, weight 1", "human"),
    ("Uncertainty — the k most uncertain anchors, weight 1", "uncertainty"),
    ("Uncertainty + Balance (GAL) — k most uncertain anchors, weight Δ", "uncertainty+balance"),
    ("Human + Balance — the images you accept, weight Δ", "human+balance"),
    (
        "Uncertainty + Diversity (AISEL) — uncertain anchors whose images lie far apart, weight 1",
        "uncertainty+diversity",
    ),
)
DEFAULT_SUBJECT = {"object": "a <sks> cat", "style": "in <sks> style"}


@dataclass(frozen=True)
class Field:
    """One setting. ``widget``: text | lines | number | radio | checkbox; ``choices``: (label, value)
    pairs of a radio; ``group``: the row of the Set up tab it sits in (``ui.setup`` lays out groups);
    ``says``: the name messages use (default: ``label``); ``flag``: the ``gal run`` option (None: none),
    with ``flag_help`` (default: ``help``) and ``flag_choices`` (default: the widget's values)."""

    name: str
    label: str
    help: str
    widget: str
    path: str
    parse: str
    group: str
    choices: tuple = ()
    lines: int = 0
    max_lines: int = 0
    says: str = ""
    flag: str | None = None
    flag_help: str | None = None
    flag_choices: tuple = ()

    @property
    def named(self) -> str:
        return self.says or self.label

    @property
    def dest(self) -> str | None:
        """The argparse attribute of the flag (``--gen-steps`` -> ``gen_steps``)."""
        return self.flag.lstrip("-").replace("-", "_") if self.flag else None

    def values(self) -> tuple:
        return tuple(value for _, value in self.choices)

    def cli_type(self):
        return {
            "whole": int,
            "optional_whole": int,
            "at_least_one": int,
            "resolution": int,
            "number": float,
        }.get(self.parse, str)

    def cli_choices(self) -> list | None:
        choices = self.flag_choices or self.values()
        return list(choices) if choices else None


FIELDS: tuple[Field, ...] = (
    Field("task", "Task", "object: a subject (your cat); style: a look (watercolour)", "radio", "task",
          "choice", "subject", choices=(("object", "object"), ("style", "style")), flag="--task",
          flag_help=""),
    Field("soi_token", "SoI token", "the new word bound to your subject, e.g. <sks>", "text", "soi_token",
          "text", "subject", flag="--token", flag_help="the SoI token (default <sks>)"),
    Field("subject_phrase", "Subject phrase", "fills {} in the anchors, e.g. 'a <sks> cat'", "text",
          "subject_phrase", "phrase", "subject", flag="--subject",
          flag_help="replaces {} in the anchors, e.g. 'a <sks> cat'"),
    Field("oracle_subject", "Oracle subject", "fills {} for CLIP; empty: the phrase without the token",
          "text", "oracle_subject", "optional_text", "subject"),
    Field("anchors", "Anchors — one per line", "prompt directions to explore; {} is the subject phrase "
          "(the paper's 18 are loaded for the task)", "lines", "anchors", "lines", "anchors", lines=9,
          max_lines=30, says="anchors"),
    Field("eval_prompts", "Held-out evaluation prompts — one per line",
          "never anchors: TXT-ALN / IMG-ALN / OVF are measured on them", "lines", "eval.prompts", "lines",
          "eval", lines=6, max_lines=20, says="evaluation prompts"),
    Field("model", "Model", "tiny, toy, a hub id or a local diffusers folder (SD 1.x/2.x, SDXL, FLUX.1)",
          "text", "model", "model", "models", flag="--model",
          flag_help="tiny, tiny-sdxl, tiny-flux, toy, a hub id, a local diffusers folder "
          "(SD 1.x/2.x, SDXL, FLUX.1) or ckpt.safetensors?config=FOLDER"),
    Field("oracle", "Oracle (judge)", "a CLIP spec (tiny, toy, ViT-B-32/openai, an open_clip folder), "
          "siglip:<spec>, dino:<spec>, vlm:<spec>, ensemble:clip+dino, or an installed gal.judges plug-in",
          "text", "oracle", "oracle", "models", flag="--oracle",
          flag_help="the judge: a CLIP spec (tiny, toy, ViT-B-32/openai, a local open_clip folder), "
          "siglip:<spec>, dino:<spec>, vlm:<spec>, ensemble:clip+dino, or an installed gal.judges plug-in"),
    Field("strategy", "Strategy (Table 1)", "which images a round adds, and how much they weigh", "radio",
          "gal.strategy", "strategy", "strategy", choices=STRATEGY_CHOICES, says="strategy",
          flag="--strategy", flag_help="", flag_choices=STRATEGIES),
    Field("m", "m", "images drawn per anchor each round (paper: 10)", "number", "gal.m", "whole", "gal",
          says="m (images drawn per anchor)", flag="--m",
          flag_help="images drawn per anchor each round (10)"),
    Field("k", "k", "anchors picked per round (paper: 3)", "number", "gal.k", "whole", "gal",
          says="k (anchors per round)", flag="--k", flag_help="anchors picked per round (3)"),
    Field("lam", "λ", "Eq. 9: added images weigh Δ = λ·mean Ω (paper: 0.005)", "number", "gal.lam",
          "number", "gal", flag="--lam", flag_help="λ of Eq. 9 (0.005)"),
    Field("images_per_anchor", "images per picked anchor", "+diversity only: at most this many of a picked "
          "anchor's images are added, each only if it raises diversity (1)", "number",
          "gal.images_per_anchor", "at_least_one", "gal", flag="--images-per-anchor",
          flag_help="+diversity strategies: at most this many of a picked anchor's images are added, each "
          "only if it raises the picks' diversity (1)"),
    Field("rounds", "rounds", "at most this many rounds (paper: 4)", "number", "gal.max_rounds", "whole",
          "gal", flag="--rounds", flag_help="max rounds (4)"),
    Field("train_steps", "training steps", "LoRA optimiser steps per round", "number", "train.steps",
          "whole", "run", flag="--steps", flag_help="LoRA steps per round"),
    Field("resolution", "resolution", "training size in px; 0 = the model's own", "number",
          "train.resolution", "resolution", "run", flag="--resolution",
          flag_help="training/generation size (default: the model's)"),
    Field("seed", "seed", "fixes every draw: same seed, same images", "number", "seed", "whole", "run",
          flag="--seed", flag_help=""),
    Field("learning_rate", "learning rate", "LoRA learning rate", "number", "train.learning_rate", "number",
          "more", flag="--lr", flag_help="LoRA learning rate"),
    Field("rank", "LoRA rank", "adapter rank r (alpha = r)", "number", "train.rank", "whole", "more",
          flag="--rank", flag_help="LoRA rank (8)"),
    Field("network", "Adapter kind", "lora; dora: LoRA + a learned magnitude per output; lokr / loha: "
          "LyCORIS' Kronecker / Hadamard adapters (the denoiser only)", "radio", "train.network", "choice",
          "more", choices=(("LoRA", "lora"), ("DoRA", "dora"), ("LoKr", "lokr"), ("LoHa", "loha")),
          says="adapter kind", flag="--network", flag_help="adapter kind: lora, dora, lokr or loha (lora)"),
    Field("train_batch", "training batch", "images per step", "number", "train.batch_size", "whole", "more"),
    Field("gen_steps", "sampling steps", "denoising steps per image (paper: 50)", "number",
          "generate.steps", "whole", "run", flag="--gen-steps", flag_help="denoising steps"),
    Field("guidance", "guidance scale", "classifier-free guidance (paper: 7.5)", "number",
          "generate.guidance_scale", "number", "more", flag="--guidance",
          flag_help="classifier-free guidance scale"),
    Field("gen_batch", "generation batch", "images per UNet batch", "number", "generate.batch_size", "whole",
          "more2"),
    Field("eval_per_prompt", "eval images / prompt", "images per held-out prompt", "number",
          "eval.images_per_prompt", "whole", "more2", says="evaluation images per prompt"),
    Field("lr_schedule", "Learning-rate schedule",
          "cosine: 5 % warm-up, then decay to 0; keeps long high-lr rounds stable", "radio",
          "train.lr_schedule", "choice", "more2", choices=(("constant", "constant"), ("cosine", "cosine")),
          says="learning-rate schedule", flag="--lr-schedule",
          flag_help="learning-rate schedule per round (constant)"),
    Field("reference_sampling", "Batches of added images", "pooled: added images take batch slots from your "
          "references; real-rate: your references train as in round 1, added ones on top (try it when you "
          "accept many images: docs/bench/table1.md)", "radio", "train.reference_sampling", "choice", "more2",
          choices=(("pooled (official)", "pooled"), ("real refs at round-1 rate", "real-rate")),
          says="batches of added images", flag="--sampling",
          flag_help="how batches mix real and added references "
          "(pooled: official; real-rate: real ones keep round 1's rate)"),
    Field("captions", "Training captions", "informative: your references' captions also name their non-SoI "
          "content, added images are captioned by what the oracle sees in them (the exported dataset keeps "
          "the captions trained on)", "radio", "train.captions", "choice", "more2",
          choices=(("prompts", "plain"), ("informative (SID)", "informative"), ("VLM judge's", "vlm")),
          says="training captions", flag="--captions",
          flag_help="training captions: the prompts (plain), naming the non-SoI content (informative), "
          "or the VLM judge's description of what surrounds the subject (vlm; needs --oracle vlm:... or an "
          "ensemble)"),
    Field("blocks_to_swap", "Blocks swapped to the CPU", "transformer families: keep this many blocks' "
          "weights in CPU memory and stream each in as it runs (how 20B models fit 24 GB; slower). "
          "Empty: the family's 24 GB preset on a GPU, else 0", "number", "train.blocks_to_swap",
          "optional_whole",
          "more2", says="blocks swapped to the CPU", flag="--blocks-to-swap",
          flag_help="transformer blocks kept on the CPU and streamed in (default: the family's 24 GB preset "
          "on a GPU; 0: off)"),
    Field("log_dir", "TensorBoard log folder", "optional: event files (loss, lr, per-round metrics, a sample "
          "grid) go to FOLDER/<run id>; open with `tensorboard --logdir FOLDER`", "text", "train.log_dir",
          "optional_text", "more2", says="TensorBoard log folder", flag="--log-dir",
          flag_help="write TensorBoard event files to FOLDER/<run id> (off by default)"),
    Field("checkpoint_every", "save training state every", "steps between saves of the round's training "
          "state (adapter, optimiser, RNG), so Cancel/Continue or a killed run resumes mid-round; empty: 100 "
          "on a GPU, a third of the round on the CPU; 0: off", "number", "train.checkpoint_every",
          "optional_whole", "more2", says="training-state interval", flag="--checkpoint-every",
          flag_help="save the training state every N steps so a killed round resumes mid-round "
          "(default: 100 on a GPU, a third of the round on the CPU; 0: off)"),
    Field("mask_floor", "Mask floor", "with a mask (alpha channel or NAME.mask.png): how much the area "
          "outside it counts in the loss (0 = not at all, 1 = fully)", "number", "train.mask_floor", "number",
          "more2",
          says="mask floor", flag="--mask-floor",
          flag_help="weight of the unmasked area of a masked reference in the loss, 0..1 (0.1)"),
    Field("bucketing", "Aspect buckets", "train each reference whole at its aspect ratio (buckets at the "
          "model's pixel count) instead of a centre-cropped square", "checkbox", "train.bucketing", "bool",
          "more2", says="aspect buckets", flag="--bucketing",
          flag_help="train references at their aspect ratio (aspect buckets), not centre-cropped squares"),
    Field("gen_width", "image width", "px of the anchors' images; 0 = the training resolution (square)",
          "number", "generate.width", "resolution", "more2", says="image width", flag="--width",
          flag_help="generated image width in px (default: square at the training resolution)"),
    Field("gen_height", "image height", "px of the anchors' images; 0 = the training resolution (square)",
          "number", "generate.height", "resolution", "more2", says="image height", flag="--height",
          flag_help="generated image height in px (default: square at the training resolution)"),
    Field("adaptive_stop", "Adaptive stop (Eq. 10)", "finish early when fewer than k anchors are mixed",
          "checkbox", "gal.adaptive_stop", "bool", "more2"),
    Field("name", "Run name", "optional; shown in the Runs list", "text", "name", "text", "more2",
          flag="--name", flag_help=""),
)  # fmt: skip


def paper_presets() -> dict:
    """The paper's 18 object and 18 style anchors and the held-out evaluation prompts per task."""
    return load_presets()


def fields() -> tuple[Field, ...]:
    """The table as it is now (a test may add a row)."""
    return FIELDS


def field_names() -> tuple[str, ...]:
    """The form's fields in the order handlers take them (the order of the table)."""
    return tuple(f.name for f in fields())


def field(name: str) -> Field:
    for f in fields():
        if f.name == name:
            return f
    raise KeyError(name)


def label_of(name: str) -> str:
    """The field as messages name it (the page's wording)."""
    try:
        return field(name).named
    except KeyError:
        return name


# -- parsers: the form's raw value -> the config's value (ValueError names the field as the page does) --


def _number(value, f: Field) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{f.named} is empty: enter a number")
    if isinstance(value, bool) or isinstance(value, (list, dict, tuple)):
        raise ValueError(f"{f.named} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{f.named} must be a number, got {value!r}") from None


def _whole(value, f: Field) -> int:
    number = _number(value, f)
    if not math.isfinite(number) or not number.is_integer():
        raise ValueError(f"{f.named} must be a whole number, got {number:g}")
    return int(number)


def _at_least_one(value, f: Field) -> int:
    """A whole number >= 1 (empty: 1)."""
    if value in (None, ""):
        return 1
    number = _whole(value, f)
    if number < 1:
        raise ValueError(f"{f.named} must be at least 1, got {number}")
    return number


def _optional_whole(value, f: Field) -> int | None:
    """A whole number >= 0, or empty: None (the config's automatic choice)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = _whole(value, f)
    if number < 0:
        raise ValueError(f"{f.named} must be 0 or more, or empty (automatic), got {number}")
    return number


def _resolution(value, f: Field) -> int | None:
    number = _whole(value, f)
    if number < 0:
        raise ValueError(f"{f.named} must be 0 (the model's own) or a multiple of 8, got {number}")
    return number or None


def _string(value, f: Field) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"{f.named} must be text, got {type(value).__name__} {value!r}")
    return str(value)


def _text(value, f: Field) -> str:
    return _string(value, f).strip()


def _phrase(value, f: Field) -> str:
    return " ".join(_string(value, f).split())


def _optional_text(value, f: Field) -> str | None:
    return _text(value, f) or None


def _lines(value, f: Field) -> list[str]:
    return [line.strip() for line in _string(value, f).splitlines() if line.strip()]


def _choice(value, f: Field) -> str:
    if value in (None, ""):
        return _get(RunConfig(), f.path)  # empty: the config's default
    if value not in f.values():
        raise ValueError(f"{f.named} must be one of {', '.join(f.values())}, got {value!r}")
    return value


def _strategy(value, f: Field) -> str:
    if value not in f.values():
        raise ValueError(f"choose a strategy (one of the rows of Table 1), got {value!r}")
    return value


def _bool(value, f: Field) -> bool:
    if value in (None, ""):
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{f.named} must be true or false, got {value!r}")
    return value


def _model(value, f: Field) -> str:
    text = _text(value, f)
    if not text:
        raise ValueError("the model is empty: 'tiny', 'toy', a hub id or a local diffusers folder")
    return text


def _oracle(value, f: Field) -> str:
    text = _text(value, f)
    if not text:
        raise ValueError("the oracle is empty: 'tiny', 'toy', 'ViT-B-32/openai' or a local open_clip folder")
    return text


PARSERS = {
    "number": _number,
    "whole": _whole,
    "at_least_one": _at_least_one,
    "optional_whole": _optional_whole,
    "resolution": _resolution,
    "text": _text,
    "phrase": _phrase,
    "optional_text": _optional_text,
    "lines": _lines,
    "choice": _choice,
    "strategy": _strategy,
    "bool": _bool,
    "model": _model,
    "oracle": _oracle,
}


def parse(name: str, value) -> Any:
    """One form value as the config holds it (ValueError names the field)."""
    f = field(name)
    return PARSERS[f.parse](value, f)


# -- config paths ---------------------------------------------------------------------------------


def _get(config: RunConfig, path: str) -> Any:
    target = config
    for part in path.split("."):
        target = getattr(target, part)
    return target


def set_path(config: RunConfig, path: str, value) -> None:
    *sections, key = path.split(".")
    target = config
    for part in sections:
        target = getattr(target, part)
    setattr(target, key, value)


def _show(f: Field, value) -> Any:
    """A config value as the form shows it."""
    if f.parse == "lines":
        return "\n".join(value or [])
    if f.parse == "resolution":
        return value or 0
    if f.parse == "optional_text":
        return value or ""
    return value


# -- the form <-> RunConfig -----------------------------------------------------------------------


def config_from_form(form: dict) -> RunConfig:
    """Build and validate the RunConfig the form describes (ValueError names the field and the fix).

    Settings the form does not show keep RunConfig's defaults; the app always stops at review."""
    config = RunConfig()
    for f in fields():
        set_path(config, f.path, PARSERS[f.parse](form.get(f.name), f))
    config.gal.pause_for_review = True
    config.validate()
    return config


def form_from_config(config: RunConfig) -> dict:
    return {f.name: _show(f, _get(config, f.path)) for f in fields()}


def form_from_saved(config: dict) -> dict:
    """The form of a run's saved config (``runs.config`` as stored: a dict)."""
    return form_from_config(RunConfig.from_dict(config))


def default_form(model: str, oracle: str, task: str = "object") -> dict:
    presets = load_presets()
    config = RunConfig(
        task=task,
        subject_phrase=DEFAULT_SUBJECT[task],
        anchors=list(presets[task]),
        model=model,
        oracle=oracle,
        eval=EvalConfig(prompts=list(presets["eval"][task])),
    )
    return form_from_config(config)


# -- the CLI's `gal run` flags ----------------------------------------------------------------------


def add_flags(parser) -> None:
    """One ``gal run`` option per row that names a flag (argparse's parser; None = left as configured)."""
    for f in fields():
        if not f.flag:
            continue
        kw: dict[str, Any] = {"type": f.cli_type()} if f.cli_type() is not str else {}
        if f.cli_choices():
            kw["choices"] = f.cli_choices()
        if f.parse == "bool":
            kw = {"action": "store_true", "default": None}
        parser.add_argument(f.flag, help=(f.help if f.flag_help is None else f.flag_help) or None, **kw)


def apply_flags(config: RunConfig, args) -> None:
    """Set what the flags gave (argparse's namespace) into ``config``."""
    for f in fields():
        if f.flag and getattr(args, f.dest, None) is not None:
            set_path(config, f.path, getattr(args, f.dest))
