"""Chroma (lodestones/Chroma1-HD, 8.9B): FLUX.1-schnell's MMDiT pruned of its per-block modulation (one
small "distilled guidance" approximator makes all modulations from the timestep), T5-XXL only (no CLIP,
no pooled projection), an attention mask over the T5 padding, the FLUX.1 VAE, real classifier-free
guidance with negative prompts (not guidance-distilled).

diffusers has no Chroma training script; the recipe here is FLUX.1's (``train_dreambooth_lora_flux.py``:
density-sampled timesteps, ``noisy = (1 - σ) x + σ ε``, target ``ε - x``, ``compute_loss_weighting_for_sd3``,
packed 2×2 patches, image ids, the 12 attention/MLP LoRA targets) with Chroma's conditioning as
``ChromaPipeline`` builds it: ``encode_prompt`` (T5 with its mask; the mask keeps the first padding token),
``_prepare_attention_mask`` (text mask + ones for the image tokens), no pooled projection, no guidance
embedding. sd-scripts (``--model_type chroma``), ai-toolkit, SimpleTuner and OneTrainer train it this way.

Exports: the diffusers LoRA (``ChromaPipeline.save_lora_weights``, FluxLoraLoaderMixin) and the
kohya/BFL file (``lora_unet_double_blocks_…``, fused qkv) that ComfyUI's Chroma model (a ``Flux``
subclass in ``comfy/model_base.py``) maps through ``model_lora_keys_unet``: the same layout as FLUX.1.
"""

from __future__ import annotations

import torch

from gal.families.base import ExportFacts, FamilyDefaults
from gal.families.flux import FLUX_TARGETS, FluxFamily

CHROMA_FACTS = ExportFacts(
    variant="chroma",
    base_model_version="chroma",  # sd-scripts library/flux_utils MODEL_VERSION_CHROMA
    architecture="chroma",  # sd-scripts library/sai_model_spec ARCH_FLUX_1_CHROMA
    implementation="https://huggingface.co/lodestones/Chroma",  # sai_model_spec IMPL_CHROMA
    implementation_full="https://huggingface.co/lodestones/Chroma",
    license="apache-2.0",  # lodestones/Chroma1-HD
    tags=("chroma",),
    writes_prediction_type=False,
    network_module="networks.lora_flux",  # sd-scripts: flux_train_network --model_type chroma
)


class ChromaFamily(FluxFamily):
    name = "chroma"
    label = "Chroma"
    pipeline_classes = ("ChromaPipeline",)
    unsupported = {"ChromaImg2ImgPipeline": "Chroma img2img"}
    detect_priority = 5  # before FLUX.1: a Chroma file has FLUX.1's block names too
    defaults = FamilyDefaults(
        resolution=1024,
        learning_rate=1e-4,
        rank=16,
        steps=35,  # ChromaPipeline's default
        guidance_scale=4.0,  # real CFG (Chroma1-HD's card: 3-5; the pipeline's default is 5.0)
        scheduler="flow-euler",
        target_modules=FLUX_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,
        cpu_offload=True,
        vae_tiling=True,
    )
    text_encoder_targets = []  # the T5 is never adapted here
    # Fits 24 GB: 8.9B in int8 (~9 GB) + offloaded T5-XXL; peers publish ~16 GB at int8 (SimpleTuner).
    preset_24gb = {"quantize_base": "int8", "gradient_checkpointing": True, "offload_text_encoders": True}

    def claims_keys(self, keys, shapes, where) -> bool:
        """FLUX.1's block names plus the ``distilled_guidance_layer`` approximator (the key diffusers'
        ``single_file_utils`` CHECKPOINT_KEY_NAMES["chroma"] looks for), BFL or diffusers layout."""
        return any(k.startswith("distilled_guidance_layer.") for k in keys)

    def pipeline_class(self):
        from diffusers import ChromaPipeline

        return ChromaPipeline

    def load_single_file(self, path: str, config: str, dtype):
        """Chroma single files hold the transformer: T5, VAE and tokenizer come from the folder ``config``."""
        from diffusers import ChromaTransformer2DModel

        transformer = ChromaTransformer2DModel.from_single_file(
            path, config=config, subfolder="transformer", torch_dtype=dtype
        )
        return self.pipeline_class().from_pretrained(config, transformer=transformer, dtype=dtype)

    def build_tiny(self, seed: int = 0):
        """A random-init Chroma-shaped pipeline at 32 px (diffusers' test transformer at FLUX.1's tiny
        widths, FLUX.1's tiny VAE and T5); same seed, same weights."""
        from diffusers import (
            AutoencoderKL,
            ChromaPipeline,
            ChromaTransformer2DModel,
            FlowMatchEulerDiscreteScheduler,
        )

        from gal.families.tiny import TINY_VAE, t5_tokenizer, tiny_t5

        torch.manual_seed(seed)
        transformer = ChromaTransformer2DModel(
            patch_size=1,
            in_channels=16,  # 4 latent channels x 2x2 packing
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            axes_dims_rope=(4, 4, 8),
            approximator_num_channels=16,
            approximator_hidden_dim=32,
            approximator_layers=1,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            **TINY_VAE,
            shift_factor=0.0609,
            scaling_factor=1.5035,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        tokenizer = t5_tokenizer(32)
        text_encoder = tiny_t5(tokenizer, d_model=32, seed=seed + 3)
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        pipe = ChromaPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
        pipe.default_sample_size = 16  # 16 latent px x vae_scale_factor 2 = 32 px native
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        return [pipe.text_encoder] if pipe.text_encoder is not None else []

    @staticmethod
    def max_sequence_length(pipe) -> int:
        return int(min(512, pipe.tokenizer.model_max_length))

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """T5 embeddings and the mask ``ChromaPipeline.encode_prompt`` makes (real tokens + the first pad)."""
        embeds, _text_ids, mask, *_ = pipe.encode_prompt(
            list(prompts),
            device=pipe.text_encoder.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length(pipe),
        )
        return {"embeds": embeds, "mask": mask}

    def per_sample_loss(
        self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None
    ) -> torch.Tensor:
        """FLUX.1's flow-matching loss with Chroma's conditioning: no pooled projection, no guidance
        embedding, the text mask extended over the image tokens (``_prepare_attention_mask``)."""
        from diffusers import ChromaPipeline

        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        d = self.flow_draw(scheduler, latents, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        b, c, h, w = d.latents.shape
        packed = ChromaPipeline._pack_latents(d.noisy, b, c, h, w)
        image_ids = ChromaPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        text_ids = torch.zeros(d.cond["embeds"].shape[1], 3, device=device, dtype=dtype)
        mask = pipe._prepare_attention_mask(
            batch_size=b, sequence_length=packed.shape[1], dtype=dtype, attention_mask=d.cond["mask"]
        )
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                hidden_states=packed.to(dtype),
                timestep=d.timesteps / 1000,
                encoder_hidden_states=d.cond["embeds"],
                txt_ids=text_ids,
                img_ids=image_ids,
                attention_mask=mask,
                return_dict=False,
            )[0]
        scale = int(pipe.vae_scale_factor)
        pred = ChromaPipeline._unpack_latents(pred, height=h * scale, width=w * scale, vae_scale_factor=scale)
        return self.flow_loss(cfg, d.sigmas, pred, d.noise - d.latents, d.mask)

    def pipe_kwargs(self, cfg, n: int) -> dict:
        """Chroma takes real CFG and negative prompts (not guidance-distilled, unlike FLUX.1-dev)."""
        return {
            "negative_prompt": [cfg.negative_prompt] * n if cfg.negative_prompt else None,
            "num_inference_steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
        }

    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                "Chroma LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super().save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return CHROMA_FACTS
