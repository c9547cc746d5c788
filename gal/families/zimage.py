"""Z-Image (Tongyi-MAI, 6B single-stream DiT, a Qwen3-4B text encoder, the FLUX.1 VAE).

Training follows diffusers' ``examples/dreambooth/train_dreambooth_lora_z_image.py`` (diffusers main of
2026-08, 58eb52c): the prompt goes through the Qwen3 chat template (``enable_thinking=True``: no think
block), the text encoder's ``hidden_states[-2]`` is kept where the attention mask is set (a list of
variable-length embeddings; cached here padded, with their lengths); latents ``(z - shift) · scale``;
``compute_density_for_timestep_sampling`` + ``noisy = (1 - σ) x + σ ε``; the transformer takes a list of
``(C, 1, H, W)`` latents and the timestep ``(1000 - t) / 1000``, and **its prediction is negated**; target
``ε - x``; ``compute_loss_weighting_for_sd3``. LoRA targets ``to_q, to_k, to_v, to_out.0`` (the script's
default: every attention of the main layers and of both refiners).

ComfyUI (``comfy/lora.py`` ``model_lora_keys_unet``, branch ``model_base.Lumina2``, which Z-Image loads as;
``comfy/utils.py`` ``z_image_to_diffusers``) maps diffusers module names under ``transformer.`` /
``diffusion_model.`` / bare, slicing ``to_q/to_k/to_v`` into its fused ``attention.qkv``; it reads no
safetensors metadata and scales by a ``<module>.alpha`` tensor, else 1. The ComfyUI file therefore keeps
diffusers names with ``alpha/r`` folded into ``lora_B`` (scale 1 in every loader: ComfyUI, diffusers).
"""

from __future__ import annotations

import torch

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.flow import FlowMatching
from gal.families.kohya import folded_state_dict
from gal.families.memory import transformer_activations
from gal.families.tiny import bpe_vocab

ZIMAGE_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the script's default --lora_layers

ZIMAGE_FACTS = ExportFacts(
    variant="zimage",
    # sd-scripts does not train Z-Image; musubi-tuner, which does, names it ARCHITECTURE_Z_IMAGE_FULL =
    # "z_image" (dataset/image_video_dataset.py) and its network module networks.lora_zimage.
    base_model_version="z_image",
    architecture="z-image",
    implementation="https://github.com/Tongyi-MAI/Z-Image",
    implementation_full="https://github.com/Tongyi-MAI/Z-Image",
    license="apache-2.0",
    tags=("z-image",),
    writes_prediction_type=False,
    network_module="networks.lora_zimage",
)

# Qwen3 special tokens the template uses (ids 0..4 in the tiny vocabulary; <|endoftext|> also pads).
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# A minimal Qwen3 chat template: what ZImagePipeline / Flux2KleinPipeline render before tokenizing
# (the real one adds an empty think block only when thinking is turned off).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)
_CORPUS_WORDS = (
    "a an the of on in at with and photo picture painting drawing style star cat dog sks <sks> person "
    "man woman toy car house tree grass stairs beach snow city street table bucket red green blue yellow "
    "black white small big old new happy close up portrait landscape view by night day light dark "
    "user assistant system"
)


def qwen_tokenizer(model_max_length: int = 128, vocab_size: int = 1024):
    """An offline Qwen2/3 tokenizer (transformers' ``Qwen2Tokenizer`` with Qwen2's own pre-tokenizer) and
    a minimal Qwen3 chat template; ``<|endoftext|>`` is id 0 and pads."""
    from transformers import Qwen2Tokenizer

    vocab, merges = bpe_vocab(QWEN_SPECIALS, _CORPUS_WORDS, ("\n\n", "\n"), vocab_size)
    tok = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        additional_special_tokens=QWEN_SPECIALS[1:],
        model_max_length=model_max_length,
    )
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok


class ZImageFamily(FlowMatching, Family):
    name = "zimage"
    label = "Z-Image"
    pipeline_classes = ("ZImagePipeline",)
    single_file_transformer = "ZImageTransformer2DModel"
    unsupported = {
        "ZImageImg2ImgPipeline": "Z-Image img2img",
        "ZImageInpaintPipeline": "Z-Image inpainting",
        "ZImageControlNetPipeline": "Z-Image ControlNet",
        "ZImageControlNetInpaintPipeline": "Z-Image ControlNet inpainting",
        "ZImageOmniPipeline": "Z-Image Omni (editing)",
    }
    denoiser_name = "transformer"
    lora_prefix = "transformer"
    defaults = FamilyDefaults(
        resolution=1024,  # the script's README (--resolution=1024)
        learning_rate=1e-4,  # the script's default
        rank=16,
        steps=50,  # ZImagePipeline's default (Z-Image base; Turbo: 8 steps at guidance 0)
        guidance_scale=5.0,  # the README's --guidance_scale=5.0 and the pipeline's default
        scheduler="flow-euler",
        target_modules=ZIMAGE_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,
        cpu_offload=True,
        vae_tiling=True,
    )
    text_encoder_targets = []  # the Qwen3 encoder is never adapted (the script trains the transformer only)
    detect_priority = 5
    # 24 GB: int8 base + checkpointing + Qwen3-4B offloaded: 8.8 GiB estimated (bf16 with the same: 14.6);
    # the peers publish 16-24 GB at int8, 32-40 at bf16, so int8 is the recipe they fit on 24 GB.
    preset_24gb = {"quantize_base": "int8", "gradient_checkpointing": True, "offload_text_encoders": True}
    shape_keys = ("cap_embedder.1.weight",)

    # -- detection ----------------------------------------------------------------------------------
    def claims_keys(self, keys, shapes, where) -> bool:
        """Original (ComfyUI/Tongyi) layout: ``layers.N.attention.qkv``, ``noise_refiner``,
        ``context_refiner``, ``cap_embedder``; diffusers layout: the same with ``to_q/to_k/to_v``."""
        has_refiners = any(k.startswith(("noise_refiner.", "context_refiner.")) for k in keys)
        return has_refiners and any(k.startswith("cap_embedder.") for k in keys)

    # -- loading ------------------------------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import ZImagePipeline

        return ZImagePipeline

    def build_tiny(self, seed: int = 0):
        """A random-init Z-Image-shaped pipeline at 32 px; same seed, same weights."""
        from diffusers import (
            AutoencoderKL,
            FlowMatchEulerDiscreteScheduler,
            ZImagePipeline,
            ZImageTransformer2DModel,
        )
        from transformers import Qwen3Config, Qwen3Model

        from gal.families.tiny import TINY_VAE

        tokenizer = qwen_tokenizer(128)
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=16,
            dim=32,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            qk_norm=True,
            cap_feat_dim=16,
            rope_theta=256,
            t_scale=1000,
            axes_dims=[8, 4, 4],
            axes_lens=[256, 32, 32],
        )
        with torch.no_grad():  # created with torch.empty: fill them, or every build differs
            for name in ("x_pad_token", "cap_pad_token"):
                param = getattr(transformer, name, None)
                if param is not None:
                    param.copy_(torch.randn(param.shape) * 0.02)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            **{**TINY_VAE, "latent_channels": 16},
            shift_factor=0.1159,
            scaling_factor=0.3611,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        torch.manual_seed(seed + 2)
        text_encoder = Qwen3Model(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=256,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=0,
            )
        ).eval()
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        pipe = ZImagePipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def native_resolution(self, pipe) -> int:
        # ZImagePipeline draws 1024 px unless told; the tiny model is built for 32 px (no larger config).
        size = getattr(pipe.transformer.config, "dim", 0)
        return 32 if size and size < 256 else 1024

    # -- training -----------------------------------------------------------------------------------
    @staticmethod
    def max_sequence_length(pipe) -> int:
        return int(min(512, pipe.tokenizer.model_max_length))  # the script's --max_sequence_length 512

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """The pipeline's own ``encode_prompt``: a list of ``[len_i, D]`` embeddings, padded to ``[n, L, D]``
        with their lengths (the transformer gets them back as the list)."""
        embeds, _ = pipe.encode_prompt(
            list(prompts),  # a copy: encode_prompt writes the templated text into the list it gets
            device=pipe.text_encoder.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length(pipe),
        )
        lengths = torch.tensor([len(e) for e in embeds], device=embeds[0].device)
        padded = torch.nn.utils.rnn.pad_sequence(list(embeds), batch_first=True)
        return {"embeds": padded, "lengths": lengths}

    def per_sample_loss(self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None):
        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        d = self.flow_draw(scheduler, latents, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        embeds = [e[: int(n)].to(device, dtype) for e, n in zip(d.cond["embeds"], d.cond["lengths"])]
        timestep = (1000 - d.timesteps) / 1000
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                list(d.noisy.to(dtype).unsqueeze(2).unbind(0)), timestep, embeds, return_dict=False
            )[0]
        pred = -torch.stack(pred, dim=0).squeeze(2)  # Z-Image predicts x - ε: the script negates it
        return self.flow_loss(cfg, d.sigmas, pred, d.noise - d.latents, d.mask)

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        if cfg.negative_prompt and cfg.guidance_scale <= 0:
            raise ValueError(
                "a negative prompt needs classifier-free guidance: set generate.guidance_scale > 0 "
                "(Z-Image Turbo runs at 0: leave the negative prompt empty)"
            )
        return self.real_cfg_kwargs(cfg, n)

    def call_kwargs(self, pipe) -> dict:
        return {"max_sequence_length": self.max_sequence_length(pipe)}

    # -- memory -------------------------------------------------------------------------------------
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        patch = int(config.all_patch_size[0])
        tokens = (resolution // vae_scale // patch) ** 2 + 512  # image tokens + caption tokens (one stream)
        blocks = int(config.n_layers) + 2 * int(config.n_refiner_layers)
        return transformer_activations(tokens, int(config.dim), blocks, batch)

    # -- saving and export --------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                "Z-Image LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super().save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return ZIMAGE_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        """The file ComfyUI loads (see the module docstring): diffusers module names under
        ``diffusion_model.``, ``lora_A``/``lora_B`` with ``alpha/r`` folded into ``lora_B``, so the strength
        is right in loaders that read no metadata (ComfyUI) and in diffusers (which then uses scale 1)."""
        return folded_state_dict(diffusers_state, scales, "transformer", "diffusion_model", self.label)
