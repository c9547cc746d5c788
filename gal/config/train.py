"""The training section of a run's config (``RunConfig.train``): the adapter, optimiser and memory options."""

from __future__ import annotations

from dataclasses import dataclass, field

from gal.config.checks import positive_float, positive_int
from gal.flow_options import FlowOptions

OPTIMIZERS = ("adamw", "adamw8bit")
QUANTIZE_BASE = (None, "none", "int8", "nf4", "fp8")

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
    # whatever the rank is set to later; a number given here, by --alpha or in a saved config is kept as it
    # is (old configs saved alpha 8.0 and keep it). Training and exports read ``lora_alpha``, a number.
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
    # on a GPU and for the CPU demo's toy model (4.6 % of its round), off for other models on the CPU (there
    # a preview costs more than 10 % of a round); 0: off.
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
    # -- flow matching (FLUX.1, SD3.5, ...: gal.families.flow), as diffusers' train_dreambooth_lora_*.py --
    flow: FlowOptions = field(default_factory=FlowOptions)

    @property
    def lora_alpha(self) -> float:
        """The alpha the adapter trains with: ``alpha``, or the rank when it is None (scale 1)."""
        return float(self.rank) if self.alpha is None else self.alpha

    def validate(self) -> None:
        positive_int("train.rank", self.rank, most=1024)
        positive_int("train.steps", self.steps, most=1_000_000)
        positive_int("train.batch_size", self.batch_size, most=1024)
        if self.alpha is not None:
            positive_float("train.alpha", self.alpha, most=1e4)
        positive_float("train.learning_rate", self.learning_rate, most=1.0)
        positive_float("train.max_grad_norm", self.max_grad_norm, most=1e6)
        weight = self.prior_loss_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1e3:
            raise ValueError(f"train.prior_loss_weight must be a number from 0 to 1000, got {weight!r}")
        n_class = self.num_class_images
        if isinstance(n_class, bool) or not isinstance(n_class, int) or not 0 <= n_class <= 10_000:
            raise ValueError(f"train.num_class_images must be a whole number 0-10000, got {n_class!r}")
        if self.prior_preservation:
            positive_int("train.num_class_images", n_class)
        if self.resolution is not None:
            positive_int("train.resolution", self.resolution, most=4096)
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
        floor = self.mask_floor
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
            raise ValueError(f"train.mask_floor must be a number from 0 to 1, got {floor!r}")
        if not isinstance(self.bucketing, bool):
            raise ValueError(f"train.bucketing must be true or false, got {self.bucketing!r}")
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
        self.flow.validate()
