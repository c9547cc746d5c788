"""Sana (NVIDIA Efficient-Large-Model Sana 1.0: a 1.6B linear-attention DiT, a Gemma-2-2B text encoder, the
32x-compressing DC-AE).

Training follows diffusers' ``examples/dreambooth/train_dreambooth_lora_sana.py``: the pipeline's
``encode_prompt`` (Gemma-2's last hidden states and attention mask, the first token and the last
``max_sequence_length - 1`` kept, 300 by default); latents ``DC-AE(x).latent · scaling_factor`` (the DC-AE
is deterministic: no posterior to sample); ``compute_density_for_timestep_sampling``, ``σ`` from a
``FlowMatchEulerDiscreteScheduler`` table built from the model's scheduler config (Sana's ships a
DPM-Solver config without ``shift``: shift 1, as the script's ``from_pretrained`` gets), ``noisy = (1 - σ) x
+ σ ε``, the transformer takes the timestep in 0..1000 (times ``timestep_scale``, 1.0 for Sana 1.0, as the
pipeline does), target ``ε - x``, ``compute_loss_weighting_for_sd3``. LoRA targets ``to_k, to_q, to_v`` (the
script's default ``--lora_layers``), in the self- and the cross-attention of every block.

The complex human instruction: ``SanaPipeline.__call__`` prepends its default instruction to every prompt
(the script exposes it as ``--complex_human_instruction``, unset by default, and validates with the same
setting it trained with). GAL draws with the pipeline's default, so training encodes with that same
default (read from ``SanaPipeline.__call__``'s signature): the adapter learns the conditioning it is drawn
with. The negative prompt is encoded without it (the pipeline's own choice).

Generation: real classifier-free guidance (4.5 by default, 20 steps), the DPM-Solver++ flow sampler Sana
ships (``dpmsolver++``; ``flow-euler`` as an alternative), resolution binning off (GAL asks for the exact
size it trained at; a square at the native size is its own bin).

Export: the diffusers LoRA (``SanaPipeline.save_lora_weights``, the script's output). No kohya/ComfyUI file
(``ExportFacts.kohya_file`` False): ComfyUI has no Sana model (its snapshot here has no Sana key map) and
diffusers' ``load_lora_weights`` reads only the diffusers file, so the export writes none rather than a file
nothing loads, and refuses ``--format kohya`` alone.
"""

from __future__ import annotations

import inspect

import torch

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.flow import FlowMatching
from gal.families.lumina2 import GEMMA_SPECIALS
from gal.families.memory import transformer_activations
from gal.families.tiny import bpe_tokenizer, tiny_gemma2

SANA_TARGETS = ["to_k", "to_q", "to_v"]  # the script's default --lora_layers
MAX_SEQUENCE_LENGTH = 300  # the script's and the pipeline's default

SANA_FACTS = ExportFacts(
    variant="sana",
    base_model_version="sana",
    architecture="sana",
    implementation="https://github.com/NVlabs/Sana",
    implementation_full="https://github.com/NVlabs/Sana",
    license="other",  # the script's model card: license="other" (Sana's weights have their own licence)
    tags=("sana", "sana-diffusers"),  # the script's model-card tags
    writes_prediction_type=False,
    kohya_file=False,  # ComfyUI has no Sana model and diffusers reads none of a kohya file's keys
)

_CORPUS_WORDS = (
    "a an the of on in at with and photo picture painting drawing style star cat dog sks <sks> person "
    "man woman toy car house tree grass stairs beach snow city street table bucket red green blue yellow "
    "black white small big old new happy close up portrait landscape view by night day light dark sea sky "
    "clouds under"
)


def complex_human_instruction() -> list[str]:
    """``SanaPipeline.__call__``'s default complex human instruction (what every generation prepends)."""
    from diffusers import SanaPipeline

    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


def gemma_tokenizer(model_max_length: int = 32):
    """An offline byte-level BPE ``PreTrainedTokenizerFast`` with Gemma's special-token ids, trained with
    the complex human instruction in its corpus (its words are single tokens, as in Gemma's vocabulary)."""
    from transformers import PreTrainedTokenizerFast

    instruction = "\n".join(complex_human_instruction())
    tok = bpe_tokenizer(GEMMA_SPECIALS, _CORPUS_WORDS, (instruction,) * 8)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


class SanaFamily(FlowMatching, Family):
    name = "sana"
    label = "Sana"
    pipeline_classes = ("SanaPipeline",)
    unsupported = {
        "SanaSprintPipeline": "Sana Sprint (few-step distilled)",
        "SanaPAGPipeline": "Sana with perturbed-attention guidance",
        "SanaControlNetPipeline": "Sana ControlNet",
    }
    single_file_transformer = "SanaTransformer2DModel"
    denoiser_name = "transformer"
    lora_prefix = "transformer"
    defaults = FamilyDefaults(
        resolution=1024,  # Sana_1600M_1024px (the script's README trains at 1024)
        learning_rate=1e-4,  # the script's default
        rank=4,  # the script's default --rank
        steps=20,  # SanaPipeline's default
        guidance_scale=4.5,  # SanaPipeline's default
        scheduler="dpmsolver++",  # Sana's shipped DPMSolverMultistepScheduler (flow prediction)
        target_modules=SANA_TARGETS,
        offload_text_encoders=True,  # the script's --offload: Gemma leaves the GPU once prompts are cached
    )
    text_encoder_targets = []  # Gemma is never adapted (the script trains the transformer only)
    detect_priority = 6
    # 1.6B transformer + 2.6B Gemma in bf16 with Gemma offloaded after caching: nothing more to turn on
    preset_24gb = {}

    # -- detection ----------------------------------------------------------------------------------
    def claims_keys(self, keys, shapes, where) -> bool:
        """diffusers layout: ``caption_projection`` + ``transformer_blocks.N.attn2`` + the linear-attention
        block's ``ff.conv_inverted``; original (NVlabs) layout: ``blocks.N.cross_attn.kv_linear`` +
        ``y_embedder`` + ``blocks.N.mlp.inverted_conv``."""
        diffusers_layout = any(k.startswith("caption_projection.") for k in keys) and any(
            ".ff.conv_inverted." in k for k in keys
        )
        original = any(k.startswith("y_embedder.") for k in keys) and any(
            ".mlp.inverted_conv." in k for k in keys
        )
        return diffusers_layout or original

    # -- loading ------------------------------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import SanaPipeline

        return SanaPipeline

    def build_tiny(self, seed: int = 0):
        """A random-init Sana-shaped pipeline at 32 px: a three-stage DC-AE (scale 4, 4 latent channels),
        a two-block linear-attention transformer at width 16, Gemma-2 at width 16 with the offline BPE, the
        DPM-Solver++ flow scheduler Sana ships; same seed, same weights."""
        from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

        tokenizer = gemma_tokenizer(32)
        torch.manual_seed(seed)
        transformer = SanaTransformer2DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            num_cross_attention_heads=2,
            cross_attention_head_dim=8,
            cross_attention_dim=16,
            caption_channels=16,
            mlp_ratio=2.5,
            sample_size=8,  # latent px: 8 x the VAE's scale 4 = 32 px native
            patch_size=1,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderDC(
            in_channels=3,
            latent_channels=4,
            attention_head_dim=4,
            encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 16, 16),
            decoder_block_out_channels=(8, 16, 16),
            encoder_layers_per_block=(1, 1, 1),
            decoder_layers_per_block=(1, 1, 1),
            encoder_qkv_multiscales=((), (), (5,)),
            decoder_qkv_multiscales=((), (), (5,)),
            upsample_block_type="interpolate",
            downsample_block_type="Conv",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
            scaling_factor=0.41407,  # the f32c32 DC-AE's
        )
        text_encoder = tiny_gemma2(tokenizer, seed + 2, max_positions=512)
        scheduler = DPMSolverMultistepScheduler(
            flow_shift=3.0, prediction_type="flow_prediction", use_flow_sigmas=True
        )
        pipe = SanaPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def native_resolution(self, pipe) -> int:
        return int(pipe.transformer.config.sample_size) * int(pipe.vae_scale_factor)

    # -- training -----------------------------------------------------------------------------------
    @staticmethod
    def max_sequence_length(pipe) -> int:
        return int(min(MAX_SEQUENCE_LENGTH, pipe.tokenizer.model_max_length))

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """The pipeline's ``encode_prompt`` with its default complex human instruction (module docstring):
        Gemma's hidden states and the attention mask, ``max_sequence_length`` tokens."""
        embeds, mask, _, _ = pipe.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            device=pipe.text_encoder.device,
            max_sequence_length=self.max_sequence_length(pipe),
            complex_human_instruction=complex_human_instruction(),
        )
        return {"embeds": embeds, "mask": mask}

    def latent_dist(self, pipe, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The DC-AE is deterministic (``.latent``, no posterior): std 0."""
        latent = pipe.vae.encode(pixels).latent
        return latent, torch.zeros_like(latent)

    def noise_scheduler(self, pipe):
        """The script's training table: ``FlowMatchEulerDiscreteScheduler`` from the model's scheduler
        config, whose DPM-Solver keys it does not read (shift 1)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=int(pipe.scheduler.config.num_train_timesteps)
        )

    def per_sample_loss(self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None):
        """The script's arithmetic: ``(1 - σ) x + σ ε``, timestep in 0..1000 (× ``timestep_scale``), target
        ``ε - x``, the SD3 loss weighting at σ."""
        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        d = self.flow_draw(scheduler, latents, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        scale = float(getattr(transformer.config, "timestep_scale", 1.0))
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                hidden_states=d.noisy.to(dtype),
                encoder_hidden_states=d.cond["embeds"].to(dtype),
                encoder_attention_mask=d.cond["mask"],
                timestep=d.timesteps * scale,
                return_dict=False,
            )[0]
        return self.flow_loss(cfg, d.sigmas, pred, d.noise - d.latents, d.mask)

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        """Real CFG; the negative prompt as text ("" when empty: SanaPipeline encodes a string, not None)."""
        return {
            "negative_prompt": [cfg.negative_prompt or ""] * n,
            "num_inference_steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
        }

    def call_kwargs(self, pipe) -> dict:
        return {"max_sequence_length": self.max_sequence_length(pipe), "use_resolution_binning": False}

    def schedulers(self) -> tuple[str, ...]:
        return ("dpmsolver++", "flow-euler")

    def set_scheduler(self, pipe, name: str | None) -> None:
        """``dpmsolver++`` (default): Sana's DPM-Solver++ with flow sigmas; ``flow-euler``: the Euler flow
        sampler; both at the model's flow shift."""
        from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

        if name not in (None, *self.schedulers()):
            raise ValueError(
                f"{self.label} samples by flow matching: scheduler {name!r} does not apply, use one of "
                f"{', '.join(self.schedulers())}"
            )
        config = dict(pipe.scheduler.config)
        shift = float(config.get("flow_shift") or config.get("shift") or 3.0)
        if name == "flow-euler":
            pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config, shift=shift)
        else:
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(
                config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
            )

    # -- memory -------------------------------------------------------------------------------------
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        tokens = (resolution // vae_scale // int(config.patch_size)) ** 2  # image tokens (text: cross-attn)
        width = int(config.num_attention_heads) * int(config.attention_head_dim)
        return transformer_activations(tokens, width, int(config.num_layers), batch)

    # -- saving and export --------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                f"{self.label} LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super().save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return SANA_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        """None: no tool loads a kohya/ComfyUI-format Sana LoRA (``SANA_FACTS.kohya_file`` is False)."""
        raise ValueError(f"{self.label} has no kohya/ComfyUI LoRA format: use the diffusers LoRA")
