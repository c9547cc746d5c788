"""Qwen-Image (Qwen/Qwen-Image, 20B MMDiT, 60 blocks of width 3072): a Qwen2.5-VL-7B text encoder behind a
fixed system-prompt template (its first 34 tokens are dropped), the Wan-style 3-D VAE (16 channels,
per-channel ``latents_mean``/``latents_std``), 2×2-packed latents with ``img_shapes``, real CFG through
``true_cfg_scale`` and a negative prompt.

Training follows diffusers' ``train_dreambooth_lora_qwen_image.py``: latents ``(z - mean) / std`` as 5-D
``[b, c, 1, h, w]``, density-sampled timesteps, ``noisy = (1 - σ) x + σ ε``, ``permute(0, 2, 1, 3, 4)`` then
``QwenImagePipeline._pack_latents``, ``transformer(..., encoder_hidden_states_mask, timestep / 1000,
img_shapes)``, ``_unpack_latents``, target ``ε - x``, ``compute_loss_weighting_for_sd3``; LoRA on
``to_k, to_q, to_v, to_out.0`` (the script's default ``--lora_layers``), rank 4, lr 1e-4, 512 px there.

Exports: the diffusers LoRA (``QwenImagePipeline.save_lora_weights`` with adapter metadata) and the file
ComfyUI loads: ComfyUI's QwenImage key map (``comfy/lora.py`` ``model_lora_keys_unet``) takes the model's own
module names under ``diffusion_model.`` / ``transformer.`` / bare, which are diffusers' names; it reads no
safetensors metadata, so the ComfyUI file folds ``alpha / r`` into ``lora_B`` (ΔW unchanged in every loader).

Memory (full size): transformer 20.4B, text encoder 8.3B (~16 GB bf16), VAE 0.13B. Peers (musubi-tuner):
42 GB bf16 → 30 GB fp8 → 24 GB with 16 blocks swapped → 12 GB with 45; 64 GB system RAM advised.
"""

from __future__ import annotations

import torch

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.flow import FlowMatching
from gal.families.kohya import folded_state_dict
from gal.families.memory import transformer_activations
from gal.families.tiny import bpe_vocab

QWEN_IMAGE_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the script's default --lora_layers

QWEN_IMAGE_FACTS = ExportFacts(
    variant="qwenimage",
    base_model_version="qwen_image",  # musubi-tuner's architecture name (sd-scripts defines none)
    architecture="qwen-image",
    implementation="https://github.com/QwenLM/Qwen-Image",
    implementation_full="https://github.com/QwenLM/Qwen-Image",
    license="apache-2.0",  # Qwen/Qwen-Image
    tags=("qwen-image",),
    writes_prediction_type=False,
    network_module="networks.lora_qwen_image",  # musubi-tuner's module for Qwen-Image
)

QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>", "<think>", "</think>",
]  # fmt: skip
_CORPUS = (
    "a an the of on in at with and by photo picture painting drawing style star cat dog sks <sks> person man "
    "woman toy car house tree grass stairs beach snow city street table bucket red green blue yellow black "
    "white small big old new happy close up portrait landscape view night day light dark sea sky clouds "
    "under Describe image detailing color, shape, size, texture, quantity, text, spatial relationships "
    "objects background: system user assistant"
)


def qwen_tokenizer(model_max_length: int = 1024):
    """transformers' ``Qwen2Tokenizer`` (Qwen2's own pre-tokenizer) over ``tiny.bpe_vocab``;
    ``<|endoftext|>`` is id 0 and pads."""
    from transformers import Qwen2Tokenizer

    vocab, merges = bpe_vocab(QWEN_SPECIALS, _CORPUS, ("\n", "\n\n", ":\n"))
    return Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        additional_special_tokens=QWEN_SPECIALS[1:],
        model_max_length=model_max_length,
    )


def template_tokens(tokenizer, template: str) -> int:
    """How many tokens precede the prompt in ``template`` (the pipeline drops exactly that many)."""
    head = template.split("{}")[0]
    return len(tokenizer(head).input_ids)


class QwenImageFamily(FlowMatching, Family):
    name = "qwenimage"
    label = "Qwen-Image"
    pipeline_classes = ("QwenImagePipeline",)
    single_file_transformer = "QwenImageTransformer2DModel"
    unsupported = {
        "QwenImageEditPipeline": "Qwen-Image-Edit (editing)",
        "QwenImageEditPlusPipeline": "Qwen-Image-Edit-2509 (editing)",
        "QwenImageImg2ImgPipeline": "Qwen-Image img2img",
        "QwenImageInpaintPipeline": "Qwen-Image inpainting",
        "QwenImageControlNetPipeline": "Qwen-Image ControlNet",
        "QwenImageLayeredPipeline": "Qwen-Image-Layered",
    }
    denoiser_name = "transformer"
    lora_prefix = "transformer"
    defaults = FamilyDefaults(
        resolution=1024,  # the model's native size (the script trains at 512 by default)
        learning_rate=1e-4,  # the script's default
        rank=16,  # the README's examples (the script's default is 4)
        steps=50,  # QwenImagePipeline's default
        guidance_scale=4.0,  # true_cfg_scale, the pipeline's default
        scheduler="flow-euler",
        target_modules=QWEN_IMAGE_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,
        cpu_offload=True,
        vae_tiling=True,
    )
    text_encoder_targets = []  # the script trains the transformer only
    detect_priority = 8
    # What fits a 24 GB card (musubi-tuner's published recipe: fp8 base + 16 blocks swapped, text encoder
    # cached and offloaded); the refusal in gal.families.memory sizes blocks_to_swap from the estimate.
    preset_24gb = {
        "quantize_base": "fp8",
        "blocks_to_swap": 16,
        "gradient_checkpointing": True,
        "offload_text_encoders": True,
        "optimizer": "adamw8bit",
    }

    def claims_keys(self, keys, shapes, where) -> bool:
        """``txt_norm`` + ``img_in`` + ``transformer_blocks.N.img_mod`` (what ComfyUI's model_detection and
        diffusers' single_file_utils look for), original or diffusers layout."""
        return any(k.startswith("txt_norm.") for k in keys) and any(".img_mod." in k for k in keys)

    def pipeline_class(self):
        from diffusers import QwenImagePipeline

        return QwenImagePipeline

    def build_tiny(self, seed: int = 0):
        """A random-init Qwen-Image-shaped pipeline at 32 px (diffusers' test transformer, a small
        Qwen-Image VAE, a Qwen2.5-VL text encoder with a 1,024-token offline BPE); same seed, same weights."""
        from diffusers import (
            AutoencoderKLQwenImage,
            FlowMatchEulerDiscreteScheduler,
            QwenImagePipeline,
            QwenImageTransformer2DModel,
        )
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        tokenizer = qwen_tokenizer()
        vocab = tokenizer.get_vocab()
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,  # 4 latent channels x 2x2 packing
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=16,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.1, -0.2, 0.05, 0.0],
            latents_std=[1.2, 0.9, 1.1, 1.0],
        )
        torch.manual_seed(seed + 2)
        config = Qwen2_5_VLConfig(
            text_config={
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                "rope_theta": 1000000.0,
                "vocab_size": len(tokenizer),
                "bos_token_id": vocab["<|endoftext|>"],
                "eos_token_id": vocab["<|im_end|>"],
                "pad_token_id": vocab["<|endoftext|>"],
            },
            vision_config={
                "depth": 2,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": 16,
            },
            hidden_size=16,
            vocab_size=len(tokenizer),
            vision_start_token_id=vocab["<|vision_start|>"],
            vision_end_token_id=vocab["<|vision_end|>"],
            vision_token_id=vocab["<|image_pad|>"],
            image_token_id=vocab["<|image_pad|>"],
            video_token_id=vocab["<|video_pad|>"],
        )
        text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
        scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen/Qwen-Image's scheduler config
            shift=1.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=0.9,
            base_image_seq_len=256,
            max_image_seq_len=8192,
            shift_terminal=0.02,
            time_shift_type="exponential",
        )
        pipe = QwenImagePipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
        dropped = template_tokens(tokenizer, pipe.prompt_template_encode)
        if dropped != pipe.prompt_template_encode_start_idx:
            raise RuntimeError(
                f"the tiny Qwen tokenizer makes {dropped} template tokens but QwenImagePipeline drops "
                f"{pipe.prompt_template_encode_start_idx}: system text would leak into the embeddings"
            )
        pipe.default_sample_size = 8  # 8 latent px x vae_scale_factor 4 = 32 px native
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        return [pipe.text_encoder] if pipe.text_encoder is not None else []

    def native_resolution(self, pipe) -> int:
        return int(pipe.default_sample_size) * int(pipe.vae_scale_factor)

    # -- training -----------------------------------------------------------------------------------
    def latent_dist(self, pipe, pixels):
        """The 3-D VAE takes frames: one frame per image, squeezed back to ``[b, c, h, w]``."""
        dist = pipe.vae.encode(pixels.unsqueeze(2)).latent_dist
        return dist.mean.squeeze(2), dist.std.squeeze(2)

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """``encode_prompt``: the templated prompt through Qwen2.5-VL's last hidden state, the template's 34
        tokens dropped, padded to the longest prompt with its mask (the script's cached embeddings)."""
        embeds, mask = pipe.encode_prompt(
            list(prompts), device=pipe.text_encoder.device, num_images_per_prompt=1
        )
        if mask is None:  # encode_prompt drops an all-ones mask; the script materialises it again
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return {"embeds": embeds, "mask": mask}

    def per_sample_loss(
        self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None
    ) -> torch.Tensor:
        from diffusers import QwenImagePipeline

        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        vae_cfg = pipe.vae.config
        mean = torch.tensor(vae_cfg.latents_mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(vae_cfg.latents_std, device=device).view(1, -1, 1, 1)
        x = ((latents - mean) / std).unsqueeze(2)  # the script's (z - mean) * (1 / std), [b, c, 1, h, w]
        d = self.flow_draw(scheduler, x, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        b, c, _, h, w = d.latents.shape
        packed = QwenImagePipeline._pack_latents(d.noisy.permute(0, 2, 1, 3, 4), b, c, h, w)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                hidden_states=packed.to(dtype),
                encoder_hidden_states=d.cond["embeds"],
                encoder_hidden_states_mask=d.cond["mask"],
                timestep=d.timesteps / 1000,
                img_shapes=[(1, h // 2, w // 2)] * b,
                return_dict=False,
            )[0]
        scale = int(pipe.vae_scale_factor)
        pred = QwenImagePipeline._unpack_latents(pred, h * scale, w * scale, scale)
        return self.flow_loss(cfg, d.sigmas, pred, d.noise - d.latents, d.mask)

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        """Real CFG is ``true_cfg_scale`` and needs a negative prompt: Qwen-Image's own examples pass " "."""
        negative = cfg.negative_prompt or " "
        return {
            "negative_prompt": [negative] * n if cfg.guidance_scale > 1 else None,
            "true_cfg_scale": cfg.guidance_scale,
            "num_inference_steps": cfg.steps,
        }

    # -- memory -------------------------------------------------------------------------------------
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        latent = resolution // vae_scale
        width = int(config.num_attention_heads * config.attention_head_dim)
        tokens = (latent // 2) ** 2 + 256  # image tokens + a typical prompt
        return transformer_activations(tokens, width, 2 * int(config.num_layers), batch)  # two streams

    # -- saving and export --------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                "Qwen-Image LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super().save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return QWEN_IMAGE_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        """The ComfyUI file: ``diffusion_model.<module>.lora_A/B.weight`` with ``alpha / r`` folded into
        ``lora_B`` (ComfyUI and diffusers' non-diffusers Qwen importer read it at the trained strength)."""
        return folded_state_dict(
            diffusers_state, scales, "transformer", "diffusion_model", self.label, alpha_tensors=False
        )
