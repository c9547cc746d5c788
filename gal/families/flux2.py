"""FLUX.2 (Black Forest Labs): klein 4B/9B (``Flux2KleinPipeline``, a Qwen3 text encoder) and dev 32B
(``Flux2Pipeline``, a Mistral-3 text encoder) share ``Flux2Transformer2DModel``; one family, the pipeline
class tells the variant.

Training follows diffusers' ``examples/dreambooth/train_dreambooth_lora_flux2{,_klein}.py`` (diffusers main
of 2026-08, 58eb52c): prompt embeddings are hidden states of three text-encoder layers stacked per token (the
pipeline's own ``encode_prompt``; klein taps 9/18/27, dev 10/20/30 — the pipeline's defaults, so training
and sampling see the same conditioning, where the klein script passes dev's 10/20/30); latents are
``_patchify_latents`` (2×2 patches into channels) then normalised by the VAE's BatchNorm running statistics
``(x - mean) / sqrt(var + eps)``; ``compute_density_for_timestep_sampling`` + ``noisy = (1 - σ) x + σ ε``;
the transformer gets ``_pack_latents`` tokens, ``_prepare_latent_ids``/``_prepare_text_ids`` positions,
``timestep / 1000`` and (dev, guidance-distilled) ``guidance = 3.5``; the prediction's first N tokens go back
through ``_unpack_latents_with_ids``; target ``ε - x``; ``compute_loss_weighting_for_sd3``. LoRA targets as
the scripts: ``to_k, to_q, to_v, to_out.0`` (double blocks), ``to_qkv_mlp_proj`` and
``single_transformer_blocks.{i}.attn.to_out`` (single blocks).

ComfyUI (``comfy/lora.py`` ``model_lora_keys_unet``, the ``model_base.Flux`` branch, which FLUX.2 models are;
``comfy/utils.py`` ``flux_to_diffusers``: ``attn.to_q/k/v`` -> slices of ``img_attn.qkv``,
``attn.to_qkv_mlp_proj`` -> ``linear1``, single ``attn.to_out`` -> ``linear2``) reads diffusers names under
``transformer.``; it reads no metadata and scales by ``.alpha`` tensors or 1, so the ComfyUI file folds
``alpha/r`` into ``lora_B``.
"""

from __future__ import annotations

import torch

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.flow import FlowMatching
from gal.families.kohya import folded_state_dict
from gal.families.memory import transformer_activations
from gal.families.zimage import qwen_tokenizer

# The scripts' default targets; 48 single blocks covers dev (klein 4B has 20, klein 9B 24).
FLUX2_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj"] + [
    f"single_transformer_blocks.{i}.attn.to_out" for i in range(48)
]

FLUX2_FACTS = ExportFacts(
    variant="flux2",
    # sd-scripts does not train FLUX.2; musubi-tuner, which does, names it ARCHITECTURE_FLUX_2_FULL = "flux_2"
    # (dataset/image_video_dataset.py) and its network module networks.lora_flux_2.
    base_model_version="flux_2",
    architecture="flux-2",
    implementation="https://github.com/black-forest-labs/flux2",
    implementation_full="https://github.com/black-forest-labs/flux2",
    license="other",  # klein 4B: apache-2.0; klein 9B and dev: FLUX non-commercial licences
    tags=("flux2",),
    writes_prediction_type=False,
    network_module="networks.lora_flux_2",
)
# Full-size transformer configs (the published config.json values; dev is the class default).


class Flux2Family(FlowMatching, Family):
    name = "flux2"
    label = "FLUX.2"
    pipeline_classes = ("Flux2KleinPipeline", "Flux2Pipeline")
    single_file_transformer = "Flux2Transformer2DModel"
    unsupported = {
        "Flux2KleinInpaintPipeline": "FLUX.2 klein inpainting",
        "Flux2KleinKVPipeline": "FLUX.2 klein with reference-image KV cache (editing)",
    }
    denoiser_name = "transformer"
    lora_prefix = "transformer"
    defaults = FamilyDefaults(
        resolution=1024,  # the scripts' README
        learning_rate=1e-4,  # the scripts' default
        rank=16,
        steps=50,  # the pipelines' default (distilled klein: 4 steps at guidance 1)
        guidance_scale=4.0,  # the pipelines' default (klein: CFG; dev: the distilled guidance embedding)
        scheduler="flow-euler",
        target_modules=FLUX2_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,
        cpu_offload=True,
        vae_tiling=True,
    )
    text_encoder_targets = []
    detect_priority = 8  # before FLUX.1: both have double/single blocks
    # 24 GB: int8 base + checkpointing + text encoder offloaded: klein-4B 6.3 / klein-9B 12.0 GiB estimated
    # (peers ~8 / 14 int8). FLUX.2-dev (32B) is 36.6 GiB even so: with train.blocks_to_swap left empty,
    # training sizes the swap to the card (29 blocks on 24 GB, ≈ 22.5 GiB estimated; one class serves dev
    # and klein, so no fixed swap here).
    preset_24gb = {"quantize_base": "int8", "gradient_checkpointing": True, "offload_text_encoders": True}
    shape_keys = ()

    # -- detection ----------------------------------------------------------------------------------
    def claims_keys(self, keys, shapes, where) -> bool:
        """FLUX.2 single files (BFL layout): ``double_blocks`` / ``single_blocks`` with shared modulation
        (``double_stream_modulation_img``) instead of FLUX.1's per-block ``img_mod``; diffusers layout:
        ``single_transformer_blocks.N.attn.to_qkv_mlp_proj``."""
        return any(k.startswith("double_stream_modulation_img.") for k in keys) or any(
            k.startswith("single_transformer_blocks.") and ".attn.to_qkv_mlp_proj." in k for k in keys
        )

    # -- loading ------------------------------------------------------------------------------------
    def pipeline_class(self):
        """diffusers' generic loader: a folder's ``model_index.json`` names klein or dev."""
        from diffusers import DiffusionPipeline

        return DiffusionPipeline

    def load_single_file(self, path: str, config: str, dtype):
        """FLUX.2 single files hold the transformer: the rest (and the pipeline class) from ``config``."""
        import json
        from pathlib import Path

        import diffusers

        transformer = self.transformer_from_single_file(path, config, dtype)
        cls = json.loads((Path(config) / "model_index.json").read_text())["_class_name"]
        if cls not in self.pipeline_classes:
            raise ValueError(
                f"{config} is a {cls}, not a FLUX.2 pipeline folder: pass a FLUX.2 config folder"
            )
        return getattr(diffusers, cls).from_pretrained(config, transformer=transformer, dtype=dtype)

    def build_tiny(self, seed: int = 0):
        """A random-init FLUX.2-klein-shaped pipeline at 32 px; same seed, same weights."""
        from diffusers import (
            AutoencoderKLFlux2,
            FlowMatchEulerDiscreteScheduler,
            Flux2KleinPipeline,
            Flux2Transformer2DModel,
        )
        from transformers import Qwen3Config, Qwen3ForCausalLM

        tokenizer = qwen_tokenizer(64)
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=4,  # 1 latent channel × 2×2 patch
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=48,  # 3 tapped layers × hidden 16
            timestep_guidance_channels=256,
            axes_dims_rope=[4, 4, 4, 4],
            guidance_embeds=False,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLFlux2(
            block_out_channels=(4, 8),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=1,
            norm_num_groups=1,
            layers_per_block=1,
            use_quant_conv=False,
            use_post_quant_conv=False,
            sample_size=32,
        )
        with torch.no_grad():  # BatchNorm statistics that are not the identity: the normalisation shows
            vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape) * 0.1)
            vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape) + 0.5)
        vae.eval()
        torch.manual_seed(seed + 2)
        text_encoder = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=27,  # the pipeline taps layers 9, 18, 27
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=128,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=0,
            )
        ).eval()
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential"
        )
        pipe = Flux2KleinPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
        pipe.default_sample_size = 16  # 16 latent px × vae_scale_factor 2 = 32 px
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def build_tiny_dev(self, seed: int = 0):
        """A random-init FLUX.2-dev-shaped pipeline (``Flux2Pipeline``: a Mistral-3 encoder tapped at layers
        10/20/30, a Pixtral processor as its tokenizer, guidance embedding) at 32 px; offline, seeded."""
        from diffusers import Flux2Pipeline, Flux2Transformer2DModel
        from transformers import (
            Mistral3Config,
            Mistral3ForConditionalGeneration,
            MistralConfig,
            PixtralProcessor,
            PixtralVisionConfig,
        )
        from transformers.models.pixtral.image_processing_pixtral import PixtralImageProcessor

        klein = self.build_tiny(seed)  # the same VAE and scheduler
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=48,
            timestep_guidance_channels=256,
            axes_dims_rope=[4, 4, 4, 4],
            guidance_embeds=True,
        )
        tokenizer = mistral_tokenizer(128)
        torch.manual_seed(seed + 2)
        text_encoder = Mistral3ForConditionalGeneration(
            Mistral3Config(
                text_config=MistralConfig(
                    vocab_size=len(tokenizer),
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=30,  # the pipeline taps layers 10, 20, 30
                    num_attention_heads=2,
                    num_key_value_heads=2,
                    head_dim=8,
                    max_position_embeddings=256,
                    bos_token_id=1,
                    eos_token_id=2,
                    pad_token_id=11,
                ),
                vision_config=PixtralVisionConfig(
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    head_dim=8,
                    patch_size=16,
                    image_size=64,
                ),
                image_token_index=10,
                spatial_merge_size=2,
            )
        ).eval()
        processor = PixtralProcessor(
            image_processor=PixtralImageProcessor(patch_size=16),
            tokenizer=tokenizer,
            patch_size=16,
            spatial_merge_size=2,
            chat_template=MISTRAL_CHAT_TEMPLATE,
        )
        pipe = Flux2Pipeline(
            scheduler=klein.scheduler,
            vae=klein.vae,
            text_encoder=text_encoder,
            tokenizer=processor,
            transformer=transformer,
        )
        pipe.default_sample_size = 16
        pipe.set_progress_bar_config(disable=True)
        return self.attach(pipe)

    def native_resolution(self, pipe) -> int:
        return int(pipe.default_sample_size) * int(pipe.vae_scale_factor)

    # -- training -----------------------------------------------------------------------------------
    @staticmethod
    def max_sequence_length(pipe) -> int:
        tokenizer = getattr(pipe.tokenizer, "tokenizer", pipe.tokenizer)  # dev: a processor around it
        return int(min(512, tokenizer.model_max_length))

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        embeds, _ = pipe.encode_prompt(
            prompt=list(prompts),
            device=pipe.text_encoder.device,
            max_sequence_length=self.max_sequence_length(pipe),
        )
        return {"embeds": embeds}

    def per_sample_loss(self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None):
        pipe_cls = type(pipe)
        transformer, vae = pipe.transformer, pipe.vae
        device, dtype = latents.device, transformer.dtype
        x = pipe_cls._patchify_latents(latents)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(device, torch.float32)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
            device, torch.float32
        )
        x = (x.float() - mean) / std
        d = self.flow_draw(scheduler, x, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        b = len(d.latents)
        latent_ids = pipe_cls._prepare_latent_ids(d.latents).to(device)
        packed = pipe_cls._pack_latents(d.noisy)
        embeds = d.cond["embeds"].to(device, dtype)
        text_ids = pipe_cls._prepare_text_ids(embeds).to(device)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), float(cfg.flow.guidance_scale), device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                hidden_states=packed.to(dtype),
                timestep=d.timesteps / 1000,
                guidance=guidance,
                encoder_hidden_states=embeds,
                txt_ids=text_ids,
                img_ids=latent_ids,
                return_dict=False,
            )[0]
        pred = pipe_cls._unpack_latents_with_ids(pred[:, : packed.size(1)], latent_ids)
        return self.flow_loss(cfg, d.sigmas, pred, d.noise - d.latents, d.mask)

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        if cfg.negative_prompt:
            raise ValueError(
                "FLUX.2 pipelines take no negative prompt (klein guides against the empty prompt, dev is "
                "guidance-distilled): leave it empty"
            )
        return {"num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance_scale}

    def call_kwargs(self, pipe) -> dict:
        return {"max_sequence_length": self.max_sequence_length(pipe)}

    # -- memory -------------------------------------------------------------------------------------
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        width = int(config.num_attention_heads * config.attention_head_dim)
        tokens = (resolution // vae_scale // 2) ** 2 + 512
        blocks = int(config.num_layers) * 2 + int(config.num_single_layers)  # double blocks: two streams
        return transformer_activations(tokens, width, blocks, batch)

    # -- saving and export --------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                "FLUX.2 LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super().save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return FLUX2_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        """The file ComfyUI loads: diffusers names under ``transformer.`` (its Flux branch's own key map),
        ``alpha/r`` folded into ``lora_B``."""
        return folded_state_dict(
            diffusers_state, scales, "transformer", "transformer", self.label, alpha_tensors=False
        )


# Mistral/Tekken special tokens at the ids the real vocabulary has them (FLUX.2 dev's processor and the
# Mistral-3 config refer to [IMG] = 10 and <pad> = 11); unused ids are placeholders.
_MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]",
                     "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]",
                     "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]",
                     "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]  # fmt: skip
# A minimal Mistral-3 chat template that takes list content (FLUX.2's format_input sends text parts).
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST]' + text + '[/INST]' }}"
    "{% else %}{{ text + eos_token }}{% endif %}{% endfor %}"
)


def mistral_tokenizer(model_max_length: int = 128):
    """An offline byte-level BPE ``PreTrainedTokenizerFast`` with Mistral's special-token ids, trained on
    FLUX.2's system message and a small prompt vocabulary (so the system prompt takes few tokens)."""
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from transformers import PreTrainedTokenizerFast

    from gal.families.tiny import bpe_tokenizer
    from gal.families.zimage import _CORPUS_WORDS

    tok = bpe_tokenizer(_MISTRAL_SPECIALS, _CORPUS_WORDS, (SYSTEM_MESSAGE,) * 8)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )
