"""SDXL: two CLIP text encoders (penultimate hidden states concatenated, plus te2's pooled projection) and
the micro-conditioning ``add_time_ids`` (original size, crop, target size), as diffusers'
``train_dreambooth_lora_sdxl.py`` (``encode_prompt``, ``compute_time_ids``)."""

from __future__ import annotations

import torch

from gal.families.base import ExportFacts, FamilyDefaults
from gal.families.sd import SD_SCHEDULERS, SD_TARGETS, SDFamily, check_unet_input, unet_like

SDXL_FACTS = ExportFacts(
    variant="sdxl",
    base_model_version="sdxl_base_v1-0",  # sd-scripts library/sdxl_model_util MODEL_VERSION_SDXL_BASE_V1_0
    architecture="stable-diffusion-xl-v1-base",
    implementation="https://github.com/Stability-AI/generative-models",
    implementation_full="https://github.com/Stability-AI/generative-models",
    license="openrail++",
    tags=("stable-diffusion-xl",),
    kohya_text_encoder_prefixes={"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
)


class SDXLFamily(SDFamily):
    """The SDXL base: SD's UNet loss and samplers (an explicit subclass), two text encoders."""

    name = "sdxl"
    label = "Stable Diffusion XL"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    defaults = FamilyDefaults(
        resolution=1024,
        learning_rate=1e-4,
        rank=8,
        steps=30,
        guidance_scale=5.0,
        scheduler="euler",
        target_modules=SD_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,
        vae_tiling=True,
    )
    # text-encoder LoRA is wired for SD 1.x/2.x only (SDXL has two encoders to adapt)
    text_encoder_targets = []
    unsupported = {
        "StableDiffusionXLImg2ImgPipeline": "the SDXL refiner (img2img only, no text-to-image base)",
        "StableDiffusionXLInpaintPipeline": "SDXL inpainting",
    }
    detect_priority = 80
    # 24 GB: gradient checkpointing + both text encoders offloaded (bf16 2.6B UNet, ~9 GB at 1024 px).
    preset_24gb = {"gradient_checkpointing": True, "offload_text_encoders": True}
    kohya_text_encoder_prefixes = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}

    @property
    def tiny_name(self) -> str:
        return "tiny-sdxl"

    def claims_keys(self, keys, shapes, where) -> bool:
        if not unet_like(keys):
            return False
        if not (
            any(k.startswith("conditioner.embedders.1.") for k in keys)
            or any(k.startswith("add_embedding.") for k in keys)
        ):
            return False
        check_unet_input(shapes, where)
        return True

    def check_folder(self, folder, index: dict) -> None:
        if index.get("text_encoder") in (None, [None, None]) or index.get("requires_aesthetics_score"):
            raise ValueError(
                f"{folder} is an SDXL refiner config (no first text encoder / aesthetics score): "
                "use the SDXL base"
            )

    def export_facts(self, pipe) -> ExportFacts:
        return SDXL_FACTS

    def single_file_layout(self, pipe):
        return None

    def pipeline_class(self):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    def load_kwargs(self) -> dict:
        return {"add_watermarker": False}

    def schedulers(self) -> tuple[str, ...]:
        return SD_SCHEDULERS

    def build_tiny(self, seed: int = 0):
        """A random-init SDXL pipeline at 32 px (the notes' recipe); same seed, same weights."""
        from diffusers import (
            AutoencoderKL,
            EulerDiscreteScheduler,
            StableDiffusionXLPipeline,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

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
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=32 + 48,
            norm_num_groups=16,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.13025)

        def clip_config(width: int) -> CLIPTextConfig:
            # Different widths for te1/te2: with equal widths a single-file reload mixes their weights.
            return CLIPTextConfig(
                **{**TINY_CLIP_TEXT, "hidden_size": width, "intermediate_size": 2 * width}, hidden_act="gelu"
            )

        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(clip_config(32)).eval()
        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(clip_config(48)).eval()
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            timestep_spacing="leading",
        )
        tokenizer_2 = clip_tokenizer()
        tokenizer_2.pad_token = "!"  # real SDXL's second tokenizer pads with "!" (id 0)
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=clip_tokenizer(),
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        device = pipe.text_encoder_2.device
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        # Images are resized and centre-cropped to the training size: original = target, crop at (0, 0),
        # the conditioning generation uses by default.
        size = (resolution, resolution)
        time_ids = pipe._get_add_time_ids(
            size,
            (0, 0),
            size,
            dtype=embeds.dtype,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
        ).to(device)
        return {"embeds": embeds, "pooled": pooled, "time_ids": time_ids.repeat(len(prompts), 1)}

    @torch.no_grad()
    def encode(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        return self.encode_with_grad(pipe, prompts, resolution)

    def image_cond(self, pipe, originals: list, crops: list, targets: list) -> dict[str, torch.Tensor]:
        """With aspect buckets: each image's true original size and crop (SDXL's micro-conditioning)."""
        dim, te = pipe.text_encoder_2.config.projection_dim, pipe.text_encoder_2
        ids = [
            pipe._get_add_time_ids(
                tuple(o), tuple(c), tuple(t), dtype=te.dtype, text_encoder_projection_dim=dim
            )
            for o, c, t in zip(originals, crops, targets, strict=True)
        ]
        return {"time_ids": torch.cat(ids).to(te.device)}

    def predict(self, pipe, noisy, t, cond) -> torch.Tensor:
        added = {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}
        return pipe.unet(noisy, t, encoder_hidden_states=cond["embeds"], added_cond_kwargs=added).sample
