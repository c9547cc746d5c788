"""Krea 2 (2026): a single-stream MMDiT whose text conditioning is a stack of hidden states tapped from
12 layers of a Qwen3-VL-4B encoder (``text_encoder_select_layers``), fused by a small text transformer;
the Qwen-Image VAE and its chat template, padded in the middle (``[prefix | prompt | PAD | suffix]``), the
first 34 tokens dropped; 2×2 patches; real CFG through ``guidance_scale`` (4.5, 28 steps; the distilled turbo
checkpoint: 8 steps at 0).

Training follows diffusers' ``train_dreambooth_lora_krea2.py``: latents ``(z - mean) / std`` as 5-D, density-
sampled timesteps, ``noisy = (1 - σ) x + σ ε``, the script's inlined 2×2 packing, ``Krea2Pipeline.
prepare_position_ids(text_len, h/2, w/2)``, ``transformer(..., timestep / 1000, position_ids,
encoder_attention_mask)``, unpacking to ``[b, c, 1, h, w]``, target ``ε - x``,
``compute_loss_weighting_for_sd3``; its 15 default LoRA targets (attention, gate, MLP and the input/output,
text and time projections), rank 32, lr 3e-4, 512 px.

Exports: the diffusers LoRA (``Krea2Pipeline.save_lora_weights`` via ``Krea2LoraLoaderMixin``) and the
original-layout file (``diffusion_model.blocks.N.attn.wq…``, krea-ai/krea-2's module names, alpha/r folded
into ``lora_B``), the layout diffusers' ``_convert_non_diffusers_krea2_lora_to_diffusers`` documents as the
Krea 2 reference trainer's and ComfyUI's; ``original_name`` inverts that converter's map. The file is checked
by diffusers' importer (a fresh process redraws the run's images from it) and by ComfyUI's own Krea 2 key map
(``krea2_to_diffusers`` + its ``model_lora_keys_unet`` branch, run from ``.comfy/`` by the tests: 0 keys
dropped, ΔW = B·A·alpha/r at alpha = r and alpha ≠ r).
"""

from __future__ import annotations

import torch

from gal.families.base import ExportFacts, FamilyDefaults
from gal.families.kohya import folded_state_dict
from gal.families.memory import transformer_activations
from gal.families.qwenimage import QwenImageFamily, qwen_tokenizer, template_tokens

KREA2_TARGETS = [
    "img_in",
    "final_layer.linear",
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "to_gate",
    "ff.up",
    "ff.down",
    "text_fusion.projector",
    "txt_in.linear_1",
    "txt_in.linear_2",
    "time_embed.linear_1",
    "time_embed.linear_2",
    "time_mod_proj",
]  # fmt: skip  (the script's default target_modules)

KREA2_FACTS = ExportFacts(
    variant="krea2",
    base_model_version="krea2",  # no kohya constant exists for Krea 2: the family name
    architecture="krea-2",
    implementation="diffusers",
    implementation_full="diffusers",
    license="other",  # Krea 2's own licence
    tags=("krea-2",),
    writes_prediction_type=False,
    network_module="networks.lora",
)


class Krea2Family(QwenImageFamily):
    name = "krea2"
    label = "Krea 2"
    pipeline_classes = ("Krea2Pipeline",)
    single_file_transformer = "Krea2Transformer2DModel"
    unsupported = {}
    defaults = FamilyDefaults(
        resolution=1024,  # the pipeline's default size (the script trains at 512)
        learning_rate=3e-4,  # the script's default
        rank=32,  # the script's default
        steps=28,  # Krea2Pipeline's default
        guidance_scale=4.5,  # Krea2Pipeline's default
        scheduler="flow-euler",
        target_modules=KREA2_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,
        cpu_offload=True,
        vae_tiling=True,
    )
    detect_priority = 7
    preset_24gb = {
        "quantize_base": "int8",
        "blocks_to_swap": 8,
        "gradient_checkpointing": True,
        "offload_text_encoders": True,
    }

    def claims_keys(self, keys, shapes, where) -> bool:
        """Krea 2's text-fusion stage (``text_fusion.``/``txtfusion.``) is its own."""
        return any(k.startswith(("text_fusion.", "txtfusion.")) for k in keys)

    def pipeline_class(self):
        from diffusers import Krea2Pipeline

        return Krea2Pipeline

    def build_tiny(self, seed: int = 0):
        """A random-init Krea 2-shaped pipeline at 32 px: diffusers' test transformer, a small Qwen-Image
        VAE, a 2-layer Qwen3-VL encoder tapped at layers (0, 1, 2), the offline 34-token-template BPE."""
        from diffusers import (
            AutoencoderKLQwenImage,
            FlowMatchEulerDiscreteScheduler,
            Krea2Pipeline,
            Krea2Transformer2DModel,
        )
        from transformers import Qwen3VLConfig, Qwen3VLModel

        tokenizer = qwen_tokenizer(model_max_length=64)
        vocab = tokenizer.get_vocab()
        torch.manual_seed(seed)
        transformer = Krea2Transformer2DModel(
            in_channels=16,  # 4 latent channels x 2x2 patches
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=32,
            timestep_embed_dim=8,
            text_hidden_dim=16,
            num_text_layers=3,
            text_num_attention_heads=2,
            text_num_key_value_heads=1,
            text_intermediate_size=16,
            num_layerwise_text_blocks=1,
            num_refiner_text_blocks=1,
            axes_dims_rope=(4, 2, 2),
            rope_theta=1000.0,
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
        config = Qwen3VLConfig(
            text_config={
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "head_dim": 8,
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
            vocab_size=len(tokenizer),
            image_token_id=vocab["<|image_pad|>"],
            video_token_id=vocab["<|video_pad|>"],
            vision_start_token_id=vocab["<|vision_start|>"],
            vision_end_token_id=vocab["<|vision_end|>"],
        )
        text_encoder = Qwen3VLModel(config).eval()
        scheduler = FlowMatchEulerDiscreteScheduler(  # diffusers' Krea 2 test scheduler
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=6400,
        )
        pipe = Krea2Pipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            text_encoder_select_layers=(0, 1, 2),
        )
        prefix = template_tokens(tokenizer, pipe.prompt_template_encode_prefix + "{}")
        suffix = len(tokenizer(pipe.prompt_template_encode_suffix).input_ids)
        expected = (pipe.prompt_template_encode_start_idx, pipe.prompt_template_encode_num_suffix_tokens)
        if (prefix, suffix) != expected:
            raise RuntimeError(
                f"the tiny Qwen tokenizer makes a {prefix}-token prefix and {suffix}-token suffix; "
                f"Krea2Pipeline assumes {expected[0]} and {expected[1]}: system text would leak"
            )
        pipe.default_sample_size = 8  # 8 latent px x vae_scale_factor 4 = 32 px native
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def native_resolution(self, pipe) -> int:
        # Krea2Pipeline has no default_sample_size (it draws 1024 px = 128 latent px x 8 by default)
        return int(getattr(pipe, "default_sample_size", 128)) * int(pipe.vae_scale_factor)

    @staticmethod
    def max_sequence_length(pipe) -> int:
        """The pipeline's 512 text tokens, or fewer when the tokenizer says so (the tiny one: 64)."""
        return int(min(512, pipe.tokenizer.model_max_length))

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """``encode_prompt``: the fixed-length layout, 12 (tiny: 3) tapped layers ``[n, L, layers, d]``, the
        34-token prefix dropped, and the boolean mask."""
        embeds, mask = pipe.encode_prompt(
            list(prompts), device=pipe.text_encoder.device, max_sequence_length=self.max_sequence_length(pipe)
        )
        return {"embeds": embeds, "mask": mask}

    def per_sample_loss(
        self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None
    ) -> torch.Tensor:
        from diffusers import Krea2Pipeline

        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        vae_cfg = pipe.vae.config
        mean = torch.tensor(vae_cfg.latents_mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(vae_cfg.latents_std, device=device).view(1, -1, 1, 1)
        x = ((latents - mean) / std).unsqueeze(2)  # [b, c, 1, h, w]
        d = self.flow_draw(scheduler, x, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        b, c, _, h, w = d.latents.shape
        p = 2  # the script's inlined Krea2Pipeline._pack_latents (patch_size 2)
        packed = (
            d.noisy.view(b, c, h // p, p, w // p, p)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(b, (h // p) * (w // p), c * p * p)
        )
        position_ids = Krea2Pipeline.prepare_position_ids(d.cond["embeds"].shape[1], h // p, w // p, device)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                hidden_states=packed.to(dtype),
                encoder_hidden_states=d.cond["embeds"],
                timestep=d.timesteps / 1000,
                position_ids=position_ids,
                encoder_attention_mask=d.cond["mask"],
                return_dict=False,
            )[0]
        pred = pred.view(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, 1, h, w)
        return self.flow_loss(cfg, d.sigmas, pred, d.noise - d.latents, d.mask)

    def pipe_kwargs(self, cfg, n: int) -> dict:
        return {
            "negative_prompt": [cfg.negative_prompt] * n if cfg.negative_prompt else None,
            "guidance_scale": cfg.guidance_scale,
            "num_inference_steps": cfg.steps,
        }

    def call_kwargs(self, pipe) -> dict:
        return {"max_sequence_length": self.max_sequence_length(pipe)}

    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        latent = resolution // vae_scale
        width = int(config.num_attention_heads * config.attention_head_dim)
        tokens = (latent // 2) ** 2 + 512  # single stream: image + the fixed-length text
        return transformer_activations(tokens, width, int(config.num_layers), batch)

    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                "Krea 2 LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super(QwenImageFamily, self).save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return KREA2_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        """The original-layout file (see the module docstring), alpha/r folded into ``lora_B``."""
        folded = folded_state_dict(
            diffusers_state, scales, "transformer", "transformer", self.label, alpha_tensors=False
        )
        out = {}
        for key, value in folded.items():
            module, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
            out[f"diffusion_model.{original_name(module)}.lora_{kind}"] = value
        return out


_ATTN = {"to_q": "wq", "to_k": "wk", "to_v": "wv", "to_out.0": "wo", "to_gate": "gate"}
_FF = {"ff.gate": "mlp.gate", "ff.up": "mlp.up", "ff.down": "mlp.down"}
_STANDALONE = {
    "img_in": "first", "final_layer.linear": "last.linear", "time_embed.linear_1": "tmlp.0",
    "time_embed.linear_2": "tmlp.2", "time_mod_proj": "tproj.1", "txt_in.linear_1": "txtmlp.1",
    "txt_in.linear_2": "txtmlp.3", "text_fusion.projector": "txtfusion.projector",
}  # fmt: skip


def original_name(module: str) -> str:
    """A ``Krea2Transformer2DModel`` module path in krea-ai/krea-2's naming (the inverse of diffusers'
    ``_convert_non_diffusers_krea2_lora_to_diffusers``); unknown modules raise rather than being dropped."""
    import re

    if module in _STANDALONE:
        return _STANDALONE[module]
    m = re.fullmatch(
        r"(transformer_blocks|text_fusion\.layerwise_blocks|text_fusion\.refiner_blocks)\.(\d+)\.(.+)", module
    )
    if m:
        where, index, rest = m.groups()
        head = {"transformer_blocks": "blocks"}.get(where, where.replace("text_fusion.", "txtfusion."))
        if rest.startswith("attn.") and rest[5:] in _ATTN:
            return f"{head}.{index}.attn.{_ATTN[rest[5:]]}"
        if rest in _FF:
            return f"{head}.{index}.{_FF[rest]}"
    raise ValueError(f"no Krea 2 original name for module {module!r}: adapt the script's target modules")
