"""Stable Diffusion 1.x/2.x: one CLIP text encoder, a UNet, epsilon or v-prediction.

The family object holds exactly what differs between model families (as diffusers keeps it in the
pipeline and the training script): how to build/load the pipeline, encode prompts, noise a latent and
name the target, which modules LoRA adapts, how to draw and how exported keys are named (the seam:
``gal.families.base.Family``). SDXL subclasses this one (the same UNet loss and samplers).
"""

from __future__ import annotations

import torch

from gal.families.base import DEFAULT_CONFIG_TARGETS, ExportFacts, Family, FamilyDefaults, masked_loss
from gal.families.kohya import module_kohya_state_dict
from gal.families.memory import unet_activations

SD_TARGETS = list(DEFAULT_CONFIG_TARGETS)
SD_SCHEDULERS = ("dpmsolver++", "ddim", "euler", "euler_a", "pndm", "ddpm")
UNET_SHAPE_KEYS = ("input_blocks.0.0.weight", "conv_in.weight")


def unet_like(keys: list[str]) -> bool:
    return any(k.startswith(("input_blocks.", "down_blocks.")) for k in keys)


def check_unet_input(shapes: dict[str, list[int]], where: str) -> None:
    """Refuse a UNet whose input is not 4 latent channels (inpainting, depth)."""
    in_channels = next(
        (
            s[1]
            for k, s in shapes.items()
            if k.endswith(UNET_SHAPE_KEYS) and "vae" not in k and "first_stage" not in k
        ),
        4,
    )
    if in_channels != 4:
        raise ValueError(
            f"{where} has a {in_channels}-channel UNet input (inpainting?), which GAL Studio cannot train"
        )


class SDFamily(Family):
    """Stable Diffusion 1.x/2.x (SDXL subclasses it: the same UNet loss and samplers)."""

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
    unsupported = {
        "StableDiffusionInpaintPipeline": "SD inpainting",
        "StableDiffusionImg2ImgPipeline": "SD img2img",
    }
    detect_priority = 90  # the generic UNet: after every more specific layout
    # 24 GB: nothing to turn on (0.86B UNet, ~4 GB at bf16 for a rank-8 LoRA at 512 px: bench/families.py).
    preset_24gb = {}
    shape_keys = UNET_SHAPE_KEYS
    channels_last = True

    # -- detection ----------------------------------------------------------------------------------
    def claims_keys(self, keys: list[str], shapes: dict[str, list[int]], where: str) -> bool:
        if not unet_like(keys):
            return False
        check_unet_input(shapes, where)
        if any(k.startswith("conditioner.embedders.") for k in keys):
            raise ValueError(
                f"{where} looks like the SDXL refiner (one OpenCLIP embedder, img2img only), "
                "which GAL Studio cannot train: use the SDXL base"
            )
        return True

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

    @property
    def tiny_name(self) -> str:
        return "tiny"

    def build_tiny(self, seed: int = 0):
        """A small random-init SD pipeline (32 px, ~2 M UNet params) built from configs:
        same seed, same weights."""
        from diffusers import (
            AutoencoderKL,
            DPMSolverMultistepScheduler,
            StableDiffusionPipeline,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel

        from gal.families.tiny import TINY_CLIP_TEXT, TINY_VAE, clip_tokenizer

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_CLIP_TEXT))
        scheduler = DPMSolverMultistepScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
        )
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

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
        return masked_loss((pred.float() - target.float()).pow(2), cond, cfg)  # masked: gal.families.base

    def predict(self, pipe, noisy, t, cond) -> torch.Tensor:
        return pipe.unet(noisy, t, encoder_hidden_states=cond["embeds"]).sample

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        """The family's __call__ arguments from a GenerateConfig for ``n`` prompts."""
        return self.real_cfg_kwargs(cfg, n)

    # -- memory -------------------------------------------------------------------------------------
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        latent = resolution // vae_scale
        return unet_activations(latent, list(config.block_out_channels), int(config.layers_per_block), batch)

    # -- export -------------------------------------------------------------------------------------
    def export_facts(self, pipe) -> ExportFacts:
        """SD 1.x and 2.x told apart by the text encoder's width (SD2's is 1024), as kohya and A1111 do."""
        te = getattr(pipe, "text_encoder", None)
        width = getattr(getattr(te, "config", None), "hidden_size", None)
        unet = getattr(pipe, "unet", None)
        cross = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
        v_pred = getattr(pipe.scheduler.config, "prediction_type", "epsilon") == "v_prediction"
        if 1024 in (width, cross):
            return SD2_V_FACTS if v_pred else SD2_FACTS
        return SD1_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        prefixes = {"unet": "lora_unet", **self.kohya_text_encoder_prefixes}
        return module_kohya_state_dict(diffusers_state, scales, prefixes, self.label)

    kohya_text_encoder_prefixes = {"text_encoder": "lora_te"}

    def single_file_layout(self, pipe):
        facts = self.export_facts(pipe)
        from gal.families.ldm import sd_single_file

        return lambda fused: sd_single_file(fused, facts.variant)


_GENERATIVE_MODELS = "https://github.com/Stability-AI/generative-models"
SD1_FACTS = ExportFacts(
    variant="sd1",
    base_model_version="sd_v1",
    architecture="stable-diffusion-v1",
    implementation="diffusers",
    implementation_full=_GENERATIVE_MODELS,
    license="creativeml-openrail-m",
    tags=("stable-diffusion",),
    kohya_text_encoder_prefixes={"text_encoder": "lora_te"},
)
SD2_FACTS = ExportFacts(
    variant="sd2",
    base_model_version="sd_v2",
    architecture="stable-diffusion-v2-512",
    implementation="diffusers",
    implementation_full=_GENERATIVE_MODELS,
    license="openrail++",
    tags=("stable-diffusion",),
    v2=True,
    kohya_text_encoder_prefixes={"text_encoder": "lora_te"},
)
SD2_V_FACTS = ExportFacts(**{**SD2_FACTS.__dict__, "architecture": "stable-diffusion-v2-768-v"})
