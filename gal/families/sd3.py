"""Stable Diffusion 3 / 3.5: two CLIP text encoders (pooled + penultimate states) and a T5, a flow-matching
MMDiT (``SD3Transformer2DModel``) on 2×2 latent patches. Training follows diffusers'
``train_dreambooth_lora_sd3.py``: density-sampled timesteps and ``compute_loss_weighting_for_sd3`` (the
shared :class:`~gal.families.flow.FlowMatching`), the raw timestep (0..1000, not divided by 1000) into the
transformer, and ``precondition_outputs``: ``pred·(−σ) + noisy`` against the clean latents."""

from __future__ import annotations

import torch

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.flow import FlowMatching
from gal.families.kohya import module_kohya_state_dict
from gal.families.memory import transformer_activations

# The modules diffusers' SD3 DreamBooth-LoRA script adapts by default (its --lora_layers default).
SD3_TARGETS = [
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
]  # fmt: skip

SD3_FACTS = ExportFacts(
    variant="sd3",
    base_model_version="sd3",
    architecture="stable-diffusion-3",  # sd-scripts' ARCH_SD3_M stem (it appends the size when it knows it)
    implementation="diffusers",  # sd-scripts' determine_implementation for an SD3 LoRA
    implementation_full="https://github.com/Stability-AI/generative-models",
    license="other",  # the Stability AI Community License has no Hugging Face licence id
    tags=("sd3", "sd3-diffusers"),  # what diffusers' SD3 script writes in its model card
    writes_prediction_type=False,  # flow matching: neither epsilon nor v
    # ComfyUI's model_lora_keys_unet maps "lora_transformer_<diffusers module with _>" for SD3 (OneTrainer's
    # naming) to the MMDiT weights; kohya-style down/up/alpha tensors under it load in ComfyUI and Forge.
    network_module="networks.lora_sd3",
)


class SD3Family(FlowMatching, Family):
    name = "sd3"
    label = "Stable Diffusion 3.5"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    unsupported = {
        "StableDiffusion3Img2ImgPipeline": "SD3 img2img",
        "StableDiffusion3InpaintPipeline": "SD3 inpainting",
        "StableDiffusion3ControlNetPipeline": "SD3 ControlNet",
    }
    denoiser_name = "transformer"
    lora_prefix = "transformer"
    defaults = FamilyDefaults(
        resolution=1024,
        learning_rate=1e-4,  # the script's README LoRA example
        rank=16,
        steps=28,  # the SD3.5 model cards' sampling
        guidance_scale=4.5,
        scheduler="flow-euler",
        target_modules=SD3_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,
        cpu_offload=True,
        vae_tiling=True,
    )
    detect_priority = 20
    # 24 GB: SD3.5 Large (8.1B) in bf16 is ~15 GiB: checkpointing + the three text encoders offloaded (T5-XXL
    # alone is 9 GiB). No full-size config here yet, so this is the parameter arithmetic, not the table.
    preset_24gb = {"gradient_checkpointing": True, "offload_text_encoders": True}
    shape_keys = ("x_embedder.proj.weight", "pos_embed.proj.weight")

    # -- detection ----------------------------------------------------------------------------------
    def claims_keys(self, keys, shapes, where) -> bool:
        original = any(k.startswith("joint_blocks.") for k in keys)
        diffusers = "pos_embed.proj.weight" in keys and any(k.startswith("transformer_blocks.") for k in keys)
        if not (original or diffusers):
            return False
        channels = next((s[1] for k, s in shapes.items() if k.endswith(self.shape_keys)), 16)
        if channels not in (4, 16):  # SD3 takes 16 latent channels (the tiny model 4); more: a variant
            raise ValueError(
                f"{where} is an SD3 variant with {channels} input channels, which GAL Studio cannot train"
            )
        return True

    # -- loading ------------------------------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    def build_tiny(self, seed: int = 0):
        """A random-init SD3-shaped pipeline at 32 px (notes.md "SD3"): CLIP-L/G as 32/48-wide
        CLIPTextModelWithProjection, a T5 of d_model 96 (≥ their sum: the pipeline pads CLIP to T5's
        width)."""
        from diffusers import (
            AutoencoderKL,
            FlowMatchEulerDiscreteScheduler,
            SD3Transformer2DModel,
            StableDiffusion3Pipeline,
        )
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        from gal.families.tiny import TINY_CLIP_TEXT, TINY_VAE, clip_tokenizer, t5_tokenizer, tiny_t5

        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=96,
            pooled_projection_dim=80,  # te1 + te2 projections
            out_channels=4,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE, shift_factor=0.0609, scaling_factor=1.5305)

        def clip(width: int, s: int):
            torch.manual_seed(s)
            config = CLIPTextConfig(
                **{
                    **TINY_CLIP_TEXT,
                    "hidden_size": width,
                    "intermediate_size": 2 * width,
                    "projection_dim": width,
                }
            )
            return CLIPTextModelWithProjection(config).eval()

        text_encoder, text_encoder_2 = clip(32, seed + 2), clip(48, seed + 3)
        tokenizer_3 = t5_tokenizer(32)
        text_encoder_3 = tiny_t5(tokenizer_3, d_model=96, seed=seed + 4)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
            text_encoder_2=text_encoder_2,
            tokenizer_2=clip_tokenizer(),
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def native_resolution(self, pipe) -> int:
        return int(pipe.default_sample_size) * int(pipe.vae_scale_factor)

    # -- training -----------------------------------------------------------------------------------
    @staticmethod
    def max_sequence_length(pipe) -> int:
        """The T5 length, the same in training and generation (the pipeline's default 256, or shorter)."""
        return int(min(256, pipe.tokenizer_3.model_max_length))

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts,
            prompt_2=None,
            prompt_3=None,
            device=pipe.text_encoder.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length(pipe),
        )
        return {"embeds": embeds, "pooled": pooled}

    def per_sample_loss(
        self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None
    ) -> torch.Tensor:
        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        d = self.flow_draw(scheduler, latents, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                hidden_states=d.noisy.to(dtype),
                timestep=d.timesteps,  # SD3 takes the timestep in 0..1000 (FLUX divides by 1000)
                encoder_hidden_states=d.cond["embeds"],
                pooled_projections=d.cond["pooled"],
                return_dict=False,
            )[0]
        # precondition_outputs (the script's default, EDM section 5): predict the clean latents
        pred = pred.float() * (-d.sigmas) + d.noisy.float()
        return self.flow_loss(cfg, d.sigmas, pred, d.latents, d.mask)

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        return self.real_cfg_kwargs(cfg, n)

    def call_kwargs(self, pipe) -> dict:
        return {"max_sequence_length": self.max_sequence_length(pipe)}

    # -- memory -------------------------------------------------------------------------------------
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        patches = (resolution // vae_scale // int(config.patch_size)) ** 2
        width = int(config.num_attention_heads * config.attention_head_dim)
        tokens = patches + 77 + 256  # image patches + CLIP (77) + T5 (256) text tokens, joint attention
        return transformer_activations(tokens, width, 2 * int(config.num_layers), batch)  # two streams

    # -- saving and export --------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError("SD3 LoRA here adapts the transformer only: turn train.train_text_encoder off")
        super().save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return SD3_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        return module_kohya_state_dict(
            diffusers_state, scales, {"transformer": "lora_transformer"}, self.label
        )
