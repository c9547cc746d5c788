"""Stable Diffusion 1.x/2.x: one CLIP text encoder, a UNet, epsilon or v-prediction.

The family object holds exactly what differs between model families (as diffusers keeps it in the
pipeline and the training script): how to build/load the pipeline, encode prompts, noise a latent and
name the target, which modules LoRA adapts, how to draw and how exported keys are named. The loop in
``gal.training`` / ``gal.generation`` calls it blind. SDXL and FLUX.1 subclass it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass(frozen=True)
class FamilyDefaults:
    """What the app/CLI fills in for a family (each a published or diffusers-script default)."""

    resolution: int  # native training/generation size of the full-size model
    learning_rate: float  # LoRA learning rate
    rank: int  # LoRA rank
    steps: int  # generation steps
    guidance_scale: float  # classifier-free guidance (SD/SDXL) or distilled guidance (FLUX.1-dev)
    scheduler: str  # sampler name understood by the family's set_scheduler
    target_modules: list[str] = field(default_factory=list)
    # Memory options the family needs on a 24 GB GPU (applied on CUDA only; CPU keeps fp32 and no offload)
    gradient_checkpointing: bool = False
    offload_text_encoders: bool = False
    cpu_offload: bool = False
    vae_tiling: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


SD_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
SD_SCHEDULERS = ("dpmsolver++", "ddim", "euler", "euler_a", "pndm", "ddpm")


class Family:
    """Stable Diffusion 1.x/2.x; the base the other families override."""

    name = "sd"
    label = "Stable Diffusion 1.x/2.x"
    pipeline_classes = ("StableDiffusionPipeline",)
    denoiser_name = "unet"
    lora_prefix = "unet"  # key prefix in diffusers LoRA files
    defaults = FamilyDefaults(
        resolution=512,
        learning_rate=1e-4,
        rank=8,
        steps=50,
        guidance_scale=7.5,
        scheduler="dpmsolver++",
        target_modules=SD_TARGETS,
    )
    text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP attention, as diffusers' scripts

    # -- pipeline -----------------------------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    def load_kwargs(self) -> dict:
        return {"safety_checker": None, "requires_safety_checker": False}

    def load_single_file(self, path: str, config: str, dtype):
        """A single-file (original/LDM layout) checkpoint, configs and tokenizers from a diffusers folder."""
        return self.pipeline_class().from_single_file(
            path, config=config, torch_dtype=dtype, **self.load_kwargs()
        )

    def build_tiny(self, seed: int = 0):
        from gal.models import build_tiny_pipeline

        return build_tiny_pipeline(seed)

    def denoiser(self, pipe) -> torch.nn.Module:
        return getattr(pipe, self.denoiser_name)

    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        return [
            m
            for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
            if m is not None
        ]

    def native_resolution(self, pipe) -> int:
        return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    def schedulers(self) -> tuple[str, ...]:
        return SD_SCHEDULERS

    def set_scheduler(self, pipe, name: str | None) -> None:
        from diffusers import (
            DDIMScheduler,
            DDPMScheduler,
            DPMSolverMultistepScheduler,
            EulerAncestralDiscreteScheduler,
            EulerDiscreteScheduler,
            PNDMScheduler,
        )

        name = name or self.defaults.scheduler
        config = pipe.scheduler.config
        if name == "dpmsolver++":
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
            return
        cls = {
            "ddim": DDIMScheduler,
            "euler": EulerDiscreteScheduler,
            "euler_a": EulerAncestralDiscreteScheduler,
            "pndm": PNDMScheduler,
            "ddpm": DDPMScheduler,
        }.get(name)
        if cls is None:
            raise ValueError(
                f"unknown scheduler {name!r} for {self.label}: choose one of {', '.join(self.schedulers())}"
            )
        pipe.scheduler = cls.from_config(config)

    # -- training -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """Conditioning per prompt, each tensor ``[n_prompts, ...]`` (cached once per round)."""
        return {"embeds": self.encode_with_grad(pipe, prompts, resolution)["embeds"]}

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """The same, differentiable (text-encoder LoRA trains through it)."""
        te = pipe.text_encoder
        ids = pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(te.device)
        return {"embeds": te(ids)[0]}

    def noise_scheduler(self, pipe):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(pipe.scheduler.config)

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
        """Noise ``latents [b, c, h, w]`` at random timesteps, predict, return the MSE per sample ``[b]``.

        The target is the noise (epsilon models) or the velocity (v-prediction models). ``rows``: only
        those samples are predicted (one process's slice of a batch split across processes); the random
        draws are made for the whole batch, so each sample gets the noise it would get in one process."""
        device, dtype = latents.device, self.denoiser(pipe).dtype
        noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator).to(
            device
        )
        if rows is not None:
            latents, noise, t = latents[rows], noise[rows], t[rows]
            cond = {k: v[rows] for k, v in cond.items()}
            if not len(latents):
                return latents.new_zeros(0)
        noisy = scheduler.add_noise(latents, noise, t)
        prediction_type = scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, t)
        else:
            raise ValueError(f"unsupported prediction type {prediction_type!r}")
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = self.predict(pipe, noisy, t, cond)
        return (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))

    def predict(self, pipe, noisy, t, cond) -> torch.Tensor:
        return pipe.unet(noisy, t, encoder_hidden_states=cond["embeds"]).sample

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        """The family's __call__ arguments from a GenerateConfig for ``n`` prompts."""
        return {
            "negative_prompt": [cfg.negative_prompt] * n if cfg.negative_prompt else None,
            "num_inference_steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
        }

    # -- saving -------------------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers: dict[str, dict], metadata: dict[str, dict]) -> None:
        """``layers``/``metadata``: ``{"unet": state, "text_encoder": state}`` in diffusers naming."""
        kwargs = {}
        for part, state in layers.items():
            kwargs[f"{part}_lora_layers"] = state
            kwargs[f"{part}_lora_adapter_metadata"] = metadata[part]
        type(pipe).save_lora_weights(folder, **kwargs)

    # -- memory -------------------------------------------------------------------------------------
    def needs_memory_saving(self) -> bool:
        return False
