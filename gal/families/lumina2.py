"""Lumina 2 (Alpha-VLLM Lumina-Image 2.0: a 2.6B NextDiT, a Gemma-2-2B text encoder, the FLUX.1 VAE).

Training follows diffusers' ``examples/dreambooth/train_dreambooth_lora_lumina2.py``: the prompt goes in
behind the pipeline's system prompt (``encode_prompt(..., system_prompt=None)``: the pipeline's own), Gemma's
``hidden_states[-2]`` padded to ``max_sequence_length`` with its attention mask; latents
``(z - shift) · scale``; ``compute_density_for_timestep_sampling``, ``σ`` from the scheduler's table at
the drawn timestep and **the reversed lerp** ``noisy = (1 - σ) ε + σ x`` (σ = 1 is the clean image); the
transformer takes ``t / 1000`` and the text mask; target ``x - ε``; ``compute_loss_weighting_for_sd3``.
LoRA targets ``to_k, to_q, to_v, to_out.0`` (the script's default), alpha = rank there.

Export: the diffusers LoRA (``Lumina2Pipeline.save_lora_weights``) and the ComfyUI file in NextDiT's own
names (``diffusion_model.layers.N.attention.qkv``…), which ComfyUI's ``model_lora_keys_unet`` maps for its
``Lumina2`` model (checked with ComfyUI's own code); ``alpha/r`` folded into ``lora_B``. diffusers' importer
of such files (``_convert_non_diffusers_lumina2_lora_to_diffusers``) hard-codes the full model's qkv split
(2304/768/768) and expects sd-scripts' feed-forward and norm adapters too: it cannot load a tiny model's
file, nor an attention-only one.
"""

from __future__ import annotations

import torch

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.flow import FlowMatching
from gal.families.kohya import folded_state_dict
from gal.families.memory import transformer_activations
from gal.families.tiny import bpe_tokenizer, tiny_gemma2

LUMINA2_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the script's default --lora_layers
GEMMA2_WIDTH = 2304  # google/gemma-2-2b's hidden size: Lumina 2's caption embedder input

LUMINA2_FACTS = ExportFacts(
    variant="lumina2",
    base_model_version="lumina2",  # sd-scripts' lumina_train_network.py (networks.lora_lumina)
    architecture="lumina-2",
    implementation="https://github.com/Alpha-VLLM/Lumina-Image-2.0",
    implementation_full="https://github.com/Alpha-VLLM/Lumina-Image-2.0",
    license="apache-2.0",
    tags=("lumina2",),
    writes_prediction_type=False,
    network_module="networks.lora_lumina",
)

# Gemma's special tokens at Gemma's ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3).
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
_CORPUS_WORDS = (
    "a an the of on in at with and photo picture painting drawing style star cat dog sks <sks> person "
    "man woman toy car house tree grass stairs beach snow city street table bucket red green blue yellow "
    "black white small big old new happy close up portrait landscape view by night day light dark sea sky "
    "clouds under"
)
# Lumina2Pipeline's default system prompt and the separator it puts before the prompt: trained as text
# so the template takes a few tokens of the tiny model's short sequence.
SYSTEM_PROMPT = (
    "You are an assistant designed to generate superior images with the superior degree of image-text "
    "alignment based on textual prompts or user prompts. <Prompt Start> "
)


def gemma_tokenizer(model_max_length: int = 64):
    """An offline byte-level BPE ``PreTrainedTokenizerFast`` with Gemma's special-token ids."""
    from transformers import PreTrainedTokenizerFast

    tok = bpe_tokenizer(GEMMA_SPECIALS, _CORPUS_WORDS, (SYSTEM_PROMPT,) * 8)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


class Lumina2Family(FlowMatching, Family):
    name = "lumina2"
    label = "Lumina 2"
    pipeline_classes = ("Lumina2Pipeline", "Lumina2Text2ImgPipeline")
    single_file_transformer = "Lumina2Transformer2DModel"
    denoiser_name = "transformer"
    lora_prefix = "transformer"
    defaults = FamilyDefaults(
        resolution=1024,  # the script's README (--resolution=1024)
        learning_rate=1e-4,  # the script's default
        rank=4,  # the script's default --rank
        steps=30,  # Lumina2Pipeline's default
        guidance_scale=4.0,  # Lumina2Pipeline's default
        scheduler="flow-euler",
        target_modules=LUMINA2_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,
    )
    text_encoder_targets = []  # Gemma is never adapted (the script trains the transformer only)
    detect_priority = 4  # before Z-Image, whose single files share the NextDiT names
    shape_keys = ("cap_embedder.1.weight",)
    # 2.6B transformer + 2.6B Gemma: checkpointing and the encoder offloaded fit bf16 on 24 GB (estimate
    # in docs/bench/families.txt)
    preset_24gb = {"gradient_checkpointing": True, "offload_text_encoders": True}

    # -- detection ----------------------------------------------------------------------------------
    def claims_keys(self, keys, shapes, where) -> bool:
        """diffusers layout: NextDiT refiners + ``time_caption_embed``. Original layout: the refiners and
        ``cap_embedder`` are Z-Image's names too (ComfyUI loads both as its Lumina2 model); a Lumina 2 file
        has no pad tokens and a caption embedder fed by Gemma-2-2B (input width 2304, Z-Image's Qwen3: 2560).
        An original-layout file without shapes stays Z-Image's (the later, more common model)."""
        has_refiners = any(k.startswith(("noise_refiner.", "context_refiner.")) for k in keys)
        if not has_refiners:
            return False
        if any(k.startswith("time_caption_embed.") for k in keys):
            return True
        if any(k in ("x_pad_token", "cap_pad_token") for k in keys):
            return False
        width = next((s for k, s in shapes.items() if k.endswith("cap_embedder.1.weight")), None)
        return width is not None and len(width) == 2 and int(width[1]) == GEMMA2_WIDTH

    # -- loading ------------------------------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import Lumina2Pipeline

        return Lumina2Pipeline

    def build_tiny(self, seed: int = 0):
        """A random-init Lumina 2-shaped pipeline at 32 px: the pipeline fixes the VAE's scale at 8, so the
        tiny VAE has four blocks; Gemma-2 at width 16 with the offline BPE; same seed, same weights."""
        from diffusers import (
            AutoencoderKL,
            FlowMatchEulerDiscreteScheduler,
            Lumina2Pipeline,
            Lumina2Transformer2DModel,
        )

        tokenizer = gemma_tokenizer(64)
        torch.manual_seed(seed)
        transformer = Lumina2Transformer2DModel(
            sample_size=4,  # latent px: 4 x the pipeline's vae_scale_factor 8 = 32 px native
            patch_size=2,
            in_channels=4,
            hidden_size=32,
            num_layers=2,
            num_refiner_layers=1,
            num_attention_heads=2,
            num_kv_heads=2,
            multiple_of=16,
            norm_eps=1e-5,
            scaling_factor=1.0,
            axes_dim_rope=(8, 4, 4),
            axes_lens=(64, 16, 16),
            cap_feat_dim=16,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            block_out_channels=(16, 16, 16, 16),
            layers_per_block=1,
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
            shift_factor=0.0609,
            scaling_factor=1.5035,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        text_encoder = tiny_gemma2(tokenizer, seed + 2, max_positions=128)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0)
        pipe = Lumina2Pipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def native_resolution(self, pipe) -> int:
        return int(pipe.default_sample_size) * int(pipe.vae_scale_factor)

    # -- training -----------------------------------------------------------------------------------
    @staticmethod
    def max_sequence_length(pipe) -> int:
        return int(min(256, pipe.tokenizer.model_max_length))  # the script's --max_sequence_length 256

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """The pipeline's ``encode_prompt`` (its system prompt, Gemma's second-to-last hidden states padded
        to ``max_sequence_length``) and the attention mask."""
        embeds, mask, _, _ = pipe.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            device=pipe.text_encoder.device,
            max_sequence_length=self.max_sequence_length(pipe),
        )
        return {"embeds": embeds, "mask": mask}

    def per_sample_loss(self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None):
        """The script's arithmetic: the reversed lerp ``(1 - σ) ε + σ x``, timestep ``t / 1000``, target
        ``x - ε`` (no negation), the SD3 loss weighting at σ."""
        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        d = self.flow_draw(scheduler, latents, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        noisy = (1.0 - d.sigmas) * d.noise + d.sigmas * d.latents
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                hidden_states=noisy.to(dtype),
                timestep=d.timesteps / 1000,
                encoder_hidden_states=d.cond["embeds"].to(dtype),
                encoder_attention_mask=d.cond["mask"],
                return_dict=False,
            )[0]
        return self.flow_loss(cfg, d.sigmas, pred, d.latents - d.noise, d.mask)

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        return self.real_cfg_kwargs(cfg, n)

    def call_kwargs(self, pipe) -> dict:
        return {"max_sequence_length": self.max_sequence_length(pipe)}

    # -- memory -------------------------------------------------------------------------------------
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        tokens = (resolution // vae_scale // int(config.patch_size)) ** 2 + 256  # image + caption tokens
        blocks = int(config.num_layers) + 2 * int(config.num_refiner_layers)
        return transformer_activations(tokens, int(config.hidden_size), blocks, batch)

    # -- saving and export --------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                f"{self.label} LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super().save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return LUMINA2_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        """The ComfyUI file (module docstring): NextDiT's own names (``diffusion_model.layers.N.``
        ``attention.qkv`` / ``.out``, ``feed_forward.wI``, ``adaLN_modulation.1``), ``alpha/r`` folded into
        ``lora_B``. The separate q/k/v adapters become one rank-3r adapter of the fused ``qkv``:
        ``A = cat(A_q, A_k, A_v)``, ``B = block_diag(B_q, B_k, B_v)`` (ΔW per slice unchanged), ``.alpha`` =
        its rank (scale 1)."""
        folded = folded_state_dict(
            diffusers_state, scales, "transformer", "transformer", self.label, alpha_tensors=False
        )
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in folded.items():
            module, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
            pairs.setdefault(module, {})[kind[0]] = value
        out: dict[str, torch.Tensor] = {}

        def put(name: str, down: torch.Tensor, up: torch.Tensor) -> None:
            out[f"diffusion_model.{name}.lora_A.weight"] = down.contiguous()
            out[f"diffusion_model.{name}.lora_B.weight"] = up.contiguous()
            out[f"diffusion_model.{name}.alpha"] = torch.tensor(float(down.shape[0]))

        fused: dict[str, dict[str, dict]] = {}
        for module, ab in pairs.items():
            block, _, leaf = module.partition(".attn.")
            if leaf in ("to_q", "to_k", "to_v"):
                fused.setdefault(block, {})[leaf] = ab
            elif leaf == "to_out.0":
                put(f"{block}.attention.out", ab["A"], ab["B"])
            elif ".feed_forward.linear_" in module:
                put(module.replace(".feed_forward.linear_", ".feed_forward.w"), ab["A"], ab["B"])
            elif module.endswith(".norm1.linear"):
                put(module.replace(".norm1.linear", ".adaLN_modulation.1"), ab["A"], ab["B"])
            else:
                raise ValueError(
                    f"{self.label}: {module} has no NextDiT (ComfyUI) name: adapt attention/FFN only"
                )
        for block, parts in fused.items():
            if set(parts) != {"to_q", "to_k", "to_v"}:
                raise ValueError(
                    f"{self.label}: {block} adapts {sorted(parts)} of q/k/v: the fused qkv needs all"
                )
            downs = [parts[k]["A"] for k in ("to_q", "to_k", "to_v")]
            ups = [parts[k]["B"] for k in ("to_q", "to_k", "to_v")]
            put(f"{block}.attention.qkv", torch.cat(downs, 0), torch.block_diag(*ups))
        return out
