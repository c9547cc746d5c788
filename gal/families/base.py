"""The model-family seam: everything that differs between model families, behind one abstract class.

A family is one file under ``gal/families/`` with one subclass of :class:`Family` and one line in the
registry (``gal/families/__init__.py``). The training loop (``gal.training``), generation
(``gal.generation``), loading (``gal.models``), the memory estimate (``gal.families.memory``) and the
exports (``gal.export``) call the family blind: no code outside ``gal/families/`` names a family.

What a family provides (abstract methods must be written; the others have a default that says what it
assumes — override it when the assumption is wrong for the family):

- detection: ``pipeline_classes`` (``model_index.json`` ``_class_name``), ``unsupported`` (variants named in
  the refusal), ``claims_keys`` (single-file tensor names), ``detect_priority`` (who looks first);
- loading: ``pipeline_class``, ``load_kwargs``, ``load_single_file``, ``build_tiny(seed)`` (the random-init
  ``tiny-<name>`` model of the tests, built offline from configs);
- parts: ``denoiser`` (what LoRA adapts), ``text_encoders``, ``native_resolution``;
- training: ``encode`` / ``encode_with_grad`` (conditioning per prompt, ``[n, ...]`` tensors),
  ``noise_scheduler``, ``per_sample_loss`` (noise + target + loss per sample, honouring ``rows``),
  ``text_encoder_targets``, ``defaults.target_modules`` (LoRA targets), ``options`` (the family's own
  training options dataclass);
- generation: ``pipe_kwargs`` (GenerateConfig -> ``__call__`` arguments), ``call_kwargs`` (arguments from
  the pipeline itself), ``schedulers`` / ``set_scheduler``, ``channels_last`` (a conv denoiser gains from it);
- memory: ``activations`` (16-bit activation bytes with/without gradient checkpointing);
- saving and export: ``save_lora`` (diffusers format), ``export_facts(pipe)`` (kohya/modelspec/licence/
  card facts), ``kohya_state_dict`` (the file ComfyUI, kohya and A1111 load), ``single_file_layout``
  (original-layout text encoder conversion for single-file checkpoints, or None).
"""

from __future__ import annotations

import abc
import functools
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

# The targets TrainConfig holds by default: "left at default" means the family's own targets (the
# app and CLI fill a full-size family's defaults; a tiny model keeps what the config says).
DEFAULT_CONFIG_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass(frozen=True)
class FamilyDefaults:
    """What the app/CLI fills in for a family (each a published or diffusers-script default)."""

    resolution: int  # native training/generation size of the full-size model
    learning_rate: float  # LoRA learning rate
    rank: int  # LoRA rank
    steps: int  # generation steps
    guidance_scale: float  # classifier-free guidance (SD/SDXL/SD3) or distilled guidance (FLUX.1-dev)
    scheduler: str  # sampler name understood by the family's set_scheduler
    target_modules: list[str] = field(default_factory=list)
    # Memory options the family needs on a 24 GB GPU (applied on CUDA only; CPU keeps fp32 and no offload)
    gradient_checkpointing: bool = False
    offload_text_encoders: bool = False
    cpu_offload: bool = False
    vae_tiling: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExportFacts:
    """What the exports write about the base model (values as the tools that read them define them)."""

    variant: str  # short name in the card and messages: sd1, sd2, sdxl, flux, sd3, ...
    base_model_version: str  # kohya ss_base_model_version (sd-scripts' MODEL_VERSION_* constants)
    architecture: str  # modelspec.architecture of the base (the LoRA adds "/lora")
    implementation: str  # modelspec.implementation of the LoRA file
    implementation_full: str  # modelspec.implementation of a full checkpoint
    license: str  # Hugging Face licence id of the base when it comes from the hub
    tags: tuple[str, ...]  # model-card tags naming the base family
    v2: bool = False  # kohya ss_v2
    writes_prediction_type: bool = True  # modelspec.prediction_type (epsilon / v); False for flow matching
    network_module: str = "networks.lora"  # kohya ss_network_module of the kohya-format file
    kohya_text_encoder_prefixes: dict[str, str] = field(default_factory=dict)  # diffusers part -> prefix
    # False where no known tool loads a kohya/ComfyUI-format LoRA of this family (ComfyUI has no such model,
    # diffusers reads the diffusers file): the export writes none rather than an unreadable file.
    kohya_file: bool = True


def of(pipe) -> Family:
    """The family a loaded pipeline carries (``gal.models.load_pipeline`` / ``build_tiny`` attach it)."""
    family = getattr(pipe, "gal_family", None)
    if family is None:
        raise ValueError(
            f"this {type(pipe).__name__} carries no model family: load it with gal.models.load_pipeline"
        )
    return family


def flag(value: bool | None, family_default: bool, device: torch.device) -> bool:
    """A memory option: None means the family's need on CUDA and off on CPU (CPU runs keep today's path)."""
    if value is None:
        return bool(family_default) and device.type == "cuda"
    return bool(value)


# The TrainConfig fields a family's ``preset_24gb`` may set, and what "unset" (None) means without it.
PRESET_FALLBACK = {
    "gradient_checkpointing": None,  # flag() then applies the family's defaults (CUDA only)
    "offload_text_encoders": None,
    "quantize_base": None,
    "blocks_to_swap": 0,
    "optimizer": "adamw",
}


def resolve_memory(cfg, family, device: torch.device):
    """A copy of the TrainConfig ``cfg`` with its unset (None) memory options filled: on CUDA from the
    family's ``preset_24gb``, then (CUDA or CPU) the plain fallback (no swap, AdamW, full-precision base).
    A value the person set wins; ``quantize_base="none"`` is an explicit "no quantization". On CPU the
    preset never applies, so CPU runs keep today's path."""
    preset = family.preset_24gb if torch.device(device).type == "cuda" else {}
    unknown = sorted(set(preset) - set(PRESET_FALLBACK))
    if unknown:
        raise ValueError(f"{family.label}: preset_24gb sets unknown options {unknown}")
    changes = {}
    for name, fallback in PRESET_FALLBACK.items():
        value = getattr(cfg, name, fallback)
        if value is None:
            value = preset.get(name, fallback)
        if name == "quantize_base" and value == "none":
            value = None
        if getattr(cfg, name, fallback) != value:
            changes[name] = value
    return with_options(cfg, **changes)


def with_options(cfg, **changes):
    """A copy of the TrainConfig ``cfg`` (or a plain object with its fields) with ``changes``; ``cfg`` itself
    when there are none."""
    import dataclasses

    if not changes:
        return cfg
    if dataclasses.is_dataclass(cfg):
        return dataclasses.replace(cfg, **changes)
    import copy

    cfg = copy.copy(cfg)
    for name, value in changes.items():
        setattr(cfg, name, value)
    return cfg


def describe_preset(preset: dict) -> str:
    """The 24 GB recipe in words ("int8 base, 16 blocks swapped, text encoder offloaded")."""
    words = []
    if preset.get("quantize_base"):
        words.append(f"{preset['quantize_base']} base")
    if preset.get("blocks_to_swap"):
        words.append(f"{preset['blocks_to_swap']} blocks swapped")
    if preset.get("gradient_checkpointing"):
        words.append("gradient checkpointing")
    if preset.get("offload_text_encoders"):
        words.append("text encoders offloaded")
    if preset.get("optimizer") == "adamw8bit":
        words.append("8-bit AdamW")
    return ", ".join(words) or "nothing to turn on (bf16 fits)"


def target_modules(cfg, family=None) -> list[str]:
    """The LoRA targets: the config's, or the family's when the config holds the untouched default."""
    if family is not None and list(cfg.target_modules) == DEFAULT_CONFIG_TARGETS:
        return list(family.defaults.target_modules)
    return list(cfg.target_modules)


def fit_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A loss mask ``[b, 1, H, W]`` (1 = learn, 0 = the floor weight) resized by area to ``like``'s last two
    (spatial) dimensions and shaped to broadcast over it (``[b, 1, ..., h, w]``); None stays None."""
    if mask is None:
        return None
    mask = mask.float().reshape(len(mask), 1, *mask.shape[-2:])
    if tuple(mask.shape[-2:]) != tuple(like.shape[-2:]):
        mask = torch.nn.functional.interpolate(mask, size=tuple(like.shape[-2:]), mode="area")
    return mask.reshape(len(mask), *([1] * (like.ndim - 3)), *mask.shape[-2:]).to(like.device)


def reduce_loss(error: torch.Tensor, mask: torch.Tensor | None, floor: float) -> torch.Tensor:
    """The per-sample loss ``[b]`` of an element-wise error ``[b, ...]``: the plain mean without a mask,
    else the mean weighted by ``floor + (1 - floor) · mask`` (so the masked area counts fully and the rest
    at ``floor``), normalised by the weights' sum; a sample whose weights are all 0 has loss 0."""
    b = len(error)
    if mask is None:
        return error.reshape(b, -1).mean(dim=1)
    weight = (floor + (1.0 - floor) * fit_mask(mask, error)).expand_as(error)
    total = weight.reshape(b, -1).sum(dim=1)
    return (weight * error).reshape(b, -1).sum(dim=1) / total.clamp_min(1e-12)


LOSS_MASK = "loss_mask"  # the conditioning key the training loop puts a batch's masks under


def masked_loss(error: torch.Tensor, cond: dict, cfg) -> torch.Tensor:
    """``reduce_loss`` with the batch's masks from ``cond`` (none: the plain mean) and ``cfg.mask_floor``."""
    return reduce_loss(error, cond.get(LOSS_MASK), getattr(cfg, "mask_floor", 0.1))


class Family(abc.ABC):
    """One model family. Subclasses set the class attributes and write the abstract methods."""

    name: ClassVar[str]  # registry key; the tiny model is ``tiny-<name>`` (see ``tiny_name``)
    label: ClassVar[str]  # what messages call it
    pipeline_classes: ClassVar[tuple[str, ...]]  # diffusers pipeline class names it trains
    # Pipelines of this family's lineage that it cannot train, with why (named in the refusal).
    unsupported: ClassVar[dict[str, str]] = {}
    denoiser_name: ClassVar[str]  # the pipeline attribute LoRA adapts ("unet", "transformer")
    lora_prefix: ClassVar[str]  # key prefix of the denoiser in diffusers LoRA files
    defaults: ClassVar[FamilyDefaults]
    text_encoder_targets: ClassVar[list[str]] = []  # [] = text-encoder LoRA not supported
    detect_priority: ClassVar[int] = 50  # lower looks at single-file keys first (specific before generic)
    channels_last: ClassVar[bool] = False  # a 4-D conv denoiser: channels-last memory layout on CUDA
    options: ClassVar[type | None] = None  # the family's own training options dataclass, if any
    # What fits a 24 GB GPU: TrainConfig memory options (keys of ``PRESET_FALLBACK``) the family fills on
    # CUDA where the person left them unset (``resolve_memory``); sized from ``gal.families.memory``'s
    # estimate and the peers' published recipes. Empty: the family's ``defaults`` flags are enough.
    preset_24gb: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs):
        """A family's ``build_tiny`` returns a pipeline that carries its family (as ``load`` does)."""
        super().__init_subclass__(**kwargs)
        build = cls.__dict__.get("build_tiny")
        if build is not None and not getattr(build, "_carries_family", False):

            @functools.wraps(build)
            def build_tiny(self, seed: int = 0):
                return self.attach(build(self, seed))

            build_tiny._carries_family = True
            cls.build_tiny = build_tiny

    def attach(self, pipe):
        """Make ``pipe`` carry this family (``pipe.gal_family``): done where a model is loaded or built."""
        pipe.gal_family = self
        return pipe

    @property
    def tiny_name(self) -> str:
        """The model spec of the family's random-init test model."""
        return f"tiny-{self.name}"

    # -- detection ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def claims_keys(self, keys: list[str], shapes: dict[str, list[int]], where: str) -> bool:
        """Whether a single-file checkpoint with these tensor names is this family's. ``keys`` have the
        ``model.diffusion_model.`` prefix stripped; ``shapes`` holds the shapes of the keys in
        ``shape_keys``. Raise a ValueError naming the variant when it is an untrainable one of ours."""

    shape_keys: ClassVar[tuple[str, ...]] = ()  # key suffixes whose shapes ``claims_keys`` reads

    def check_folder(self, folder, index: dict) -> None:  # noqa: B027  (most families accept every folder)
        """Refuse a diffusers folder of this family's class that is a variant we cannot train."""

    # -- loading ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def pipeline_class(self):
        """The diffusers pipeline class."""

    def load_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments (e.g. no safety checker)."""
        return {}

    # The diffusers class of the transformer a single file holds, for families whose single files hold the
    # denoiser only (the text encoders, VAE and tokenizers come from the diffusers folder ``config``);
    # "": the single file is a whole-pipeline checkpoint (SD, SDXL).
    single_file_transformer: str = ""

    def load_single_file(self, path: str, config: str, dtype):
        """A single-file checkpoint, configs and tokenizers from the diffusers folder ``config``."""
        if not self.single_file_transformer:
            return self.pipeline_class().from_single_file(
                path, config=config, torch_dtype=dtype, **self.load_kwargs()
            )
        transformer = self.transformer_from_single_file(path, config, dtype)
        return self.pipeline_class().from_pretrained(config, transformer=transformer, dtype=dtype)

    def transformer_from_single_file(self, path: str, config: str, dtype):
        """``single_file_transformer`` from the file (original or diffusers layout), its config from
        ``config``'s ``transformer`` folder."""
        import diffusers

        cls = getattr(diffusers, self.single_file_transformer)
        return cls.from_single_file(path, config=config, subfolder="transformer", torch_dtype=dtype)

    @abc.abstractmethod
    def build_tiny(self, seed: int = 0):
        """The family's random-init tiny pipeline, built offline from configs; same seed, same weights."""

    # -- parts --------------------------------------------------------------------------------------
    def denoiser(self, pipe) -> torch.nn.Module:
        return getattr(pipe, self.denoiser_name)

    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(pipe, n, None) for n in names) if m is not None]

    @abc.abstractmethod
    def native_resolution(self, pipe) -> int:
        """The pipeline's native image size in pixels."""

    # -- training -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """Conditioning per prompt, each tensor ``[n_prompts, ...]``, differentiable (text-encoder LoRA)."""

    @torch.no_grad()
    def encode(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """The same without gradients (cached once per round)."""
        return self.encode_with_grad(pipe, prompts, resolution)

    def image_cond(self, pipe, originals: list, crops: list, targets: list) -> dict[str, torch.Tensor]:
        """Conditioning that comes from each training image, not its prompt (``train.bucketing``: SDXL's
        micro-conditioning), each ``[n, ...]``: ``originals`` / ``targets`` (h, w), ``crops`` (top, left)
        per image. ``{}``: the family has none."""
        return {}

    def latent_dist(self, pipe, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior's ``(mean, std)`` of ``pixels [b, 3, h, w]``, each ``[b, c, h, w]`` (a family
        whose VAE takes frames ``[b, 3, t, h, w]`` overrides this)."""
        dist = pipe.vae.encode(pixels).latent_dist
        return dist.mean, dist.std

    @abc.abstractmethod
    def noise_scheduler(self, pipe):
        """A fresh training scheduler (the pipeline's keeps only the last generation's timesteps)."""

    @abc.abstractmethod
    def per_sample_loss(
        self,
        pipe,
        scheduler,
        latents: torch.Tensor,
        cond: dict[str, torch.Tensor],
        generator: torch.Generator,
        cfg,
        autocast: bool,
        rows: slice | None = None,
    ) -> torch.Tensor:
        """Noise ``latents [b, c, h, w]``, predict, return the loss per sample ``[b]`` (float32).

        Every random draw (noise, timesteps) is made for the whole batch from ``generator``; then ``rows``
        (one process's slice of a batch split across processes) keeps only those samples, so each sample
        gets the noise it would get in one process. An empty slice returns ``latents.new_zeros(0)``."""

    # -- generation ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def pipe_kwargs(self, cfg, n: int) -> dict:
        """The pipeline's ``__call__`` arguments from a GenerateConfig for ``n`` prompts."""

    @staticmethod
    def real_cfg_kwargs(cfg, n: int) -> dict:
        """``pipe_kwargs`` of a pipeline with real classifier-free guidance: steps, guidance and the negative
        prompt once per prompt (None when empty: the pipeline's own empty negative)."""
        return {
            "negative_prompt": [cfg.negative_prompt] * n if cfg.negative_prompt else None,
            "num_inference_steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
        }

    def call_kwargs(self, pipe) -> dict:
        """``__call__`` arguments that come from the pipeline itself (e.g. the T5 sequence length)."""
        return {}

    @abc.abstractmethod
    def schedulers(self) -> tuple[str, ...]:
        """The sampler names ``set_scheduler`` accepts (``defaults.scheduler`` is one of them)."""

    @abc.abstractmethod
    def set_scheduler(self, pipe, name: str | None) -> None:
        """Put sampler ``name`` (None: the family's default) on the pipeline; unknown names raise."""

    # -- memory -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        """(without, with gradient checkpointing) 16-bit activation bytes of one training step
        (``gal.families.memory.transformer_activations`` / ``unet_activations`` do the arithmetic)."""

    def meta_parts(self, variant: str = "") -> dict[str, torch.nn.Module]:
        """The full-size model's parts (``denoiser_name``, ``text_encoder*``, ``vae``) from the published
        configs on the meta device (shapes only, nothing downloaded) for ``bench/families.py``. Families
        without a full-size config raise NotImplementedError. The configs are ``gal.families.published``'s."""
        from gal.families.published import PUBLISHED, parts

        if any(family == self.name for family, _ in PUBLISHED):
            return parts(self.name, variant)
        raise NotImplementedError(f"{self.label}: no full-size config")

    def needs_memory_saving(self) -> bool:
        return bool(self.defaults.gradient_checkpointing or self.defaults.offload_text_encoders)

    # -- saving and export --------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers: dict[str, dict], metadata: dict[str, dict]) -> None:
        """Write the diffusers LoRA. ``layers``/``metadata``: ``{part: state}`` in diffusers naming (the
        denoiser under ``lora_prefix``, ``text_encoder`` when trained); the adapter metadata keeps alpha."""
        kwargs = {}
        for part, state in layers.items():
            kwargs[f"{part}_lora_layers"] = state
            kwargs[f"{part}_lora_adapter_metadata"] = metadata[part]
        type(pipe).save_lora_weights(folder, **kwargs)

    @abc.abstractmethod
    def export_facts(self, pipe) -> ExportFacts:
        """kohya / modelspec / licence / card facts of the loaded base model."""

    @abc.abstractmethod
    def kohya_state_dict(
        self, diffusers_state: dict[str, torch.Tensor], scales: dict[str, tuple[float, int | None]], pipe=None
    ) -> dict[str, torch.Tensor]:
        """The diffusers LoRA state in the key naming ComfyUI / kohya / A1111 load for this family, with
        per-module ``.alpha`` tensors. ``scales``: ``{part: (alpha, rank)}`` the adapter was trained with.
        Modules the naming does not know raise, rather than being dropped."""

    def single_file_layout(self, pipe):
        """A function converting the fused pipeline to an original-layout single-file state dict, or None
        when the family has no single-file export (the export then refuses the format)."""
        return None
