"""The smaller sections of a run's config: sampling (``generate``), the GAL loop (``gal``) and evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gal.algorithm import Strategy
from gal.config.checks import positive_int


def schedulers() -> tuple[str, ...]:
    """Every sampler name some model family accepts (the loaded model's family checks its own)."""
    from gal.families import FAMILIES

    return tuple(dict.fromkeys(name for family in FAMILIES.values() for name in family.schedulers()))


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
        positive_int("generate.steps", self.steps, most=1000)
        positive_int("generate.batch_size", self.batch_size, most=1024)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                positive_int(f"generate.{name}", value, most=8192)
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
        positive_int("m", self.m, most=1000)
        positive_int("k", self.k, most=1000)
        positive_int("max_rounds", self.max_rounds, most=1000)
        positive_int("images_per_anchor", self.images_per_anchor, most=1000)
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
        positive_int("eval.images_per_prompt", self.images_per_prompt, most=1000)
        if len(self.prompts) > 1000:
            raise ValueError(f"eval.prompts holds {len(self.prompts)} prompts: at most 1000, keep a sample")
