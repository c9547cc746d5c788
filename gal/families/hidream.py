"""HiDream-I1 (HiDream.ai: a 17B sparse mixture-of-experts DiT, 16 double-stream and 32 single-stream blocks;
four text encoders — long CLIP-L and CLIP-G with projection for the pooled vector, T5-XXL, and
Llama-3.1-8B-Instruct, whose hidden states of every layer feed the blocks one layer each; the FLUX.1 VAE).

Training follows diffusers' ``examples/dreambooth/train_dreambooth_lora_hidream.py``: the pipeline's
``encode_prompt`` (T5's last hidden states, Llama's ``hidden_states[1:]`` stacked ``[layers, n, seq, dim]``,
both padded to ``max_sequence_length`` = 128, the script's default; the two CLIPs' projected pooled outputs
concatenated); latents ``(z - shift) · scale``; ``compute_density_for_timestep_sampling``, ``σ`` from a
``FlowMatchEulerDiscreteScheduler`` built from the model's scheduler config with ``shift=3.0`` (the script's
override: HiDream-I1-Full ships a UniPC config), ``noisy = (1 - σ) x + σ ε``, the transformer takes the
scheduler's timestep (0..1000) and its output is **negated** (``model_pred * -1``, as the pipeline does),
target ``ε - x``, ``compute_loss_weighting_for_sd3``. LoRA targets ``to_k, to_q, to_v, to_out`` (the script's
default ``--lora_layers``): the image stream's attention projections of every double- and single-stream
block (the text stream's ``*_t`` projections and the experts are not adapted).

The mixture of experts: the script loads the transformer with ``force_inference_output=True``, so training
runs the experts' inference path (``MOEFeedForwardSwiGLU.moe_infer``, which diffusers runs under
``torch.no_grad``: the routed experts add their output but pass no gradient; the shared expert and the
residual do) and the output comes back in image layout. ``attach`` does the same to every HiDream transformer
GAL loads or builds, so training is the script's. The pipeline draws at the area of its
``default_sample_size`` (hard-coded 128 latent px = the full model's ``max_resolution``) whatever size is
asked, keeping the aspect ratio; ``attach`` sets it from the transformer's ``max_resolution`` (128 for the
released models: unchanged), so the tiny model draws at its own 32 px.

Llama: the HiDream-I1 repositories ship no Llama (it is gated separately); as the script and the model card
do, ``load_kwargs`` loads ``meta-llama/Meta-Llama-3.1-8B-Instruct`` (``GAL_HIDREAM_LLAMA``: another hub id or
local folder).

Generation: real classifier-free guidance (HiDream-I1-Full: 5.0, 50 steps, the pipeline's defaults; Dev and
Fast are guidance-distilled: guidance 0, 28 / 16 steps), the sampler the model ships (``unipc``: Full's
UniPC with flow sigmas; ``flow-euler``: Dev's and Fast's).

Export: the diffusers LoRA (``HiDreamImagePipeline.save_lora_weights``, the script's output) and the ComfyUI
file: ComfyUI's HiDream model keeps diffusers' parameter names (``diffusion_model.double_stream_blocks.N.
block.attn1.to_q``…; checked against ComfyUI's own model class), and its ``model_lora_keys_unet`` maps
``diffusion_model.<module>`` (and SimpleTuner's ``transformer.<module>``) onto them; ``alpha/r`` is folded
into ``lora_B`` and no ``.alpha`` is written (scale 1 for every loader), which diffusers' own importer
(``_convert_non_diffusers_hidream_lora_to_diffusers``) also reads. Neither sd-scripts nor musubi-tuner trains
HiDream: the file carries no ``ss_base_model_version`` / ``ss_network_module`` (kohya defines none for it).
"""

from __future__ import annotations

import os

import torch

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.flow import FlowMatching
from gal.families.kohya import folded_state_dict
from gal.families.lumina2 import _CORPUS_WORDS as CORPUS_WORDS
from gal.families.memory import transformer_activations
from gal.families.tiny import TINY_CLIP_TEXT, TINY_VAE, bpe_tokenizer, clip_tokenizer, t5_tokenizer, tiny_t5

HIDREAM_TARGETS = ["to_k", "to_q", "to_v", "to_out"]  # the script's default --lora_layers
MAX_SEQUENCE_LENGTH = 128  # the script's --max_sequence_length and the pipeline's default
TRAIN_SHIFT = 3.0  # the script: FlowMatchEulerDiscreteScheduler.from_pretrained(..., shift=3.0)
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"  # the script's --pretrained_text_encoder_4_name_or_path
# Llama 3.1's special tokens (the tiny vocabulary puts them first: ids 0, 1, 2)
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]

HIDREAM_FACTS = ExportFacts(
    variant="hidream",
    base_model_version="",  # neither sd-scripts nor musubi-tuner trains HiDream: kohya defines no value
    architecture="hidream-i1",
    implementation="https://github.com/HiDream-ai/HiDream-I1",
    implementation_full="https://github.com/HiDream-ai/HiDream-I1",
    license="mit",  # the script's model card (HiDream-I1's weights are MIT)
    tags=("hidream", "hidream-diffusers"),  # the script's model-card tags
    writes_prediction_type=False,
    network_module="",  # no kohya network module trains HiDream
)


def llama_tokenizer(model_max_length: int = 32):
    """An offline byte-level BPE ``PreTrainedTokenizerFast`` with Llama 3.1's special tokens, adding
    ``<|begin_of_text|>`` in front as Llama 3.1's tokenizer does (the pipeline pads with the eos token)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = bpe_tokenizer(LLAMA_SPECIALS, CORPUS_WORDS)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 0)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        model_max_length=model_max_length,
    )


def script_moe(transformer) -> None:
    """What the script's ``from_pretrained(..., force_inference_output=True)`` sets: the experts' inference
    path in training too, and the output in image layout (module docstring)."""
    transformer.register_to_config(force_inference_output=True)
    for module in transformer.modules():
        if hasattr(module, "_force_inference_output"):
            module._force_inference_output = True


class HiDreamFamily(FlowMatching, Family):
    name = "hidream"
    label = "HiDream-I1"
    pipeline_classes = ("HiDreamImagePipeline",)
    single_file_transformer = "HiDreamImageTransformer2DModel"
    denoiser_name = "transformer"
    lora_prefix = "transformer"
    defaults = FamilyDefaults(
        resolution=1024,  # 128 latent px x 8: the pipeline's default size (the script's README: 1024)
        learning_rate=1e-4,  # the script's default
        rank=4,  # the script's default --rank
        steps=50,  # HiDreamImagePipeline's default (HiDream-I1-Full)
        guidance_scale=5.0,  # HiDreamImagePipeline's default (HiDream-I1-Full)
        scheduler="unipc",  # HiDream-I1-Full's shipped UniPC with flow sigmas
        target_modules=HIDREAM_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,  # the script's --offload: 13.6B of encoders leave once prompts are cached
    )
    text_encoder_targets = []  # no encoder is adapted (the script trains the transformer only)
    detect_priority = 3  # its block names are its own: look before the generic families
    # 17B transformer + 13.6B of encoders: int8 base, checkpointing and the encoders offloaded come to ≈ 18.5
    # GiB, too close to 24 GB for the estimate's ±30 %: 8 of the 48 blocks swapped too, as Krea 2 (estimate in
    # docs/bench/families.txt)
    preset_24gb = {
        "quantize_base": "int8",
        "blocks_to_swap": 8,
        "gradient_checkpointing": True,
        "offload_text_encoders": True,
    }

    # -- detection ----------------------------------------------------------------------------------
    def claims_keys(self, keys, shapes, where) -> bool:
        """``double_stream_blocks.N`` + ``caption_projection.N.linear``: diffusers' names, which are also
        the original and ComfyUI's (ComfyUI detects HiDream by ``caption_projection.0.linear.weight``)."""
        return any(k.startswith("double_stream_blocks.") for k in keys) and any(
            k.startswith("caption_projection.") and ".linear." in k for k in keys
        )

    # -- loading ------------------------------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import HiDreamImagePipeline

        return HiDreamImagePipeline

    def load_kwargs(self) -> dict:
        """Llama-3.1-8B-Instruct and its tokenizer (module docstring), loaded as the script loads them."""
        from transformers import AutoTokenizer, LlamaForCausalLM

        source = os.environ.get("GAL_HIDREAM_LLAMA", LLAMA)
        return {
            "tokenizer_4": AutoTokenizer.from_pretrained(source),
            "text_encoder_4": LlamaForCausalLM.from_pretrained(source, torch_dtype=torch.bfloat16),
        }

    def attach(self, pipe):
        """The script's MoE path and the draw size from the transformer's ``max_resolution`` (docstring);
        the Llama ``load_kwargs`` loads in bf16 takes the transformer's dtype (``load_pipeline`` casts a
        pipeline only when its transformer is not yet in the asked dtype, and the pipeline feeds Llama's
        states to the transformer uncast)."""
        transformer = getattr(pipe, "transformer", None)
        if transformer is not None:
            script_moe(transformer)
            pipe.default_sample_size = int(transformer.config.max_resolution[0])
            llama = getattr(pipe, "text_encoder_4", None)
            if llama is not None and llama.dtype != transformer.dtype:
                llama.to(transformer.dtype)
        return super().attach(pipe)

    def build_tiny(self, seed: int = 0):
        """A random-init HiDream-shaped pipeline at 32 px: a 2 + 2-block MoE transformer (4 routed experts,
        2 active, width 32), two 32-wide CLIPs with projection, a T5 of width 32, Llama at width 16 with 2
        layers (``llama_layers`` [0, 1, 1, 1]: the last layer repeated, as the full model repeats layer 31),
        the tiny VAE (scale 2), Full's UniPC flow scheduler; same seed, same weights."""
        from diffusers import (
            AutoencoderKL,
            HiDreamImagePipeline,
            HiDreamImageTransformer2DModel,
            UniPCMultistepScheduler,
        )
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM

        tokenizer_4 = llama_tokenizer(32)
        tokenizer_3 = t5_tokenizer(32)
        torch.manual_seed(seed)
        transformer = HiDreamImageTransformer2DModel(
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            caption_channels=[32, 16],  # [T5, Llama]
            text_emb_dim=64,  # the two CLIPs' projections
            num_routed_experts=4,
            num_activated_experts=2,
            axes_dims_rope=(8, 4, 4),
            max_resolution=(16, 16),  # latent px: 16 x the VAE's scale 2 = 32 px native
            llama_layers=[0, 1, 1, 1],
        )  # force_inference_output as released (False): ``attach`` sets it, as for a loaded model
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE, shift_factor=0.1159, scaling_factor=0.3611)  # the FLUX.1 VAE's

        def clip(s: int):
            torch.manual_seed(s)
            return CLIPTextModelWithProjection(CLIPTextConfig(**TINY_CLIP_TEXT)).eval()

        text_encoder, text_encoder_2 = clip(seed + 2), clip(seed + 3)
        text_encoder_3 = tiny_t5(tokenizer_3, d_model=32, seed=seed + 4)
        torch.manual_seed(seed + 5)
        text_encoder_4 = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer_4),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=8,
                max_position_embeddings=128,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        ).eval()
        scheduler = UniPCMultistepScheduler(
            flow_shift=3.0, prediction_type="flow_prediction", use_flow_sigmas=True
        )
        pipe = HiDreamImagePipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
            text_encoder_2=text_encoder_2,
            tokenizer_2=clip_tokenizer(),
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
            text_encoder_4=text_encoder_4,
            tokenizer_4=tokenizer_4,
            transformer=transformer,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # -- parts --------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4")
        return [m for m in (getattr(pipe, n, None) for n in names) if m is not None]

    def native_resolution(self, pipe) -> int:
        return int(pipe.transformer.config.max_resolution[0]) * int(pipe.vae_scale_factor)

    # -- training -----------------------------------------------------------------------------------
    @staticmethod
    def max_sequence_length(pipe) -> int:
        lengths = (pipe.tokenizer_3.model_max_length, pipe.tokenizer_4.model_max_length)
        return int(min(MAX_SEQUENCE_LENGTH, *lengths))

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """The pipeline's ``encode_prompt``: T5 ``[n, seq, d]``, Llama's layers ``[n, layers, seq, d]``
        (batch first, so every conditioning tensor is indexed by prompt), the pooled CLIPs ``[n, d]``."""
        t5, _, llama, _, pooled, _ = pipe.encode_prompt(
            prompt=list(prompts),
            do_classifier_free_guidance=False,
            device=pipe.text_encoder_4.device,
            max_sequence_length=self.max_sequence_length(pipe),
        )
        return {"t5": t5, "llama3": llama.transpose(0, 1), "pooled": pooled}

    def image_cond(self, pipe, originals: list, crops: list, targets: list) -> dict[str, torch.Tensor]:
        """None (HiDream has no image micro-conditioning); with aspect buckets, a bucket the transformer can
        not take is refused here, before training: a non-square latent is padded to ``max_seq`` tokens
        (``max_resolution`` / patch², 4096 at 1024 px), so a bucket with more image tokens than that fails
        inside diffusers' ``patchify`` (buckets reach 1.2 × the native area)."""
        patch = int(pipe.vae_scale_factor) * int(pipe.transformer.config.patch_size)
        for h, w in targets:
            tokens = (int(h) // patch) * (int(w) // patch)
            if h != w and tokens > pipe.transformer.max_seq:
                raise ValueError(
                    f"{self.label} takes at most {pipe.transformer.max_seq} image tokens for a non-square "
                    f"image; the {w}x{h} bucket has {tokens}: turn train.bucketing off or lower "
                    "train.resolution"
                )
        return {}

    def noise_scheduler(self, pipe):
        """The script's training table: ``FlowMatchEulerDiscreteScheduler`` from the model's scheduler config
        with ``shift=3.0``."""
        import inspect

        from diffusers import FlowMatchEulerDiscreteScheduler

        known = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
        config = {k: v for k, v in pipe.scheduler.config.items() if k in known and k != "shift"}
        return FlowMatchEulerDiscreteScheduler(**config, shift=TRAIN_SHIFT)

    def per_sample_loss(self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None):
        """The script's arithmetic: ``(1 - σ) x + σ ε``, the scheduler's timestep, the prediction negated,
        target ``ε - x``, the SD3 loss weighting at σ."""
        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        d = self.flow_draw(scheduler, latents, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                hidden_states=d.noisy.to(dtype),
                timesteps=d.timesteps,
                encoder_hidden_states_t5=d.cond["t5"].to(dtype),
                encoder_hidden_states_llama3=d.cond["llama3"].transpose(0, 1).to(dtype),
                pooled_embeds=d.cond["pooled"].to(dtype),
                return_dict=False,
            )[0]
        return self.flow_loss(cfg, d.sigmas, -pred, d.noise - d.latents, d.mask)

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        return self.real_cfg_kwargs(cfg, n)

    def call_kwargs(self, pipe) -> dict:
        return {"max_sequence_length": self.max_sequence_length(pipe)}

    def schedulers(self) -> tuple[str, ...]:
        return ("unipc", "flow-euler")

    def set_scheduler(self, pipe, name: str | None) -> None:
        """``unipc``: UniPC with flow sigmas (HiDream-I1-Full's); ``flow-euler``: the Euler flow sampler
        (Dev's, Fast's); both at the model's shift. None keeps the sampler the model ships when it is one of
        them (Full: UniPC; Dev, Fast: Euler), else UniPC."""
        from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

        if name not in (None, *self.schedulers()):
            raise ValueError(
                f"{self.label} samples by flow matching: scheduler {name!r} does not apply, use one of "
                f"{', '.join(self.schedulers())}"
            )
        config = dict(pipe.scheduler.config)
        if name is None:
            if isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
                name = "flow-euler"
            else:
                name = "unipc"
        shift = float(config.get("flow_shift") or config.get("shift") or TRAIN_SHIFT)
        if name == "flow-euler":
            pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config, shift=shift)
        else:
            pipe.scheduler = UniPCMultistepScheduler.from_config(
                config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
            )

    # -- memory -------------------------------------------------------------------------------------
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        """Every block sees the image tokens and three text sequences (T5, the first Llama layer carried
        through the double blocks, the block's own Llama layer), ``MAX_SEQUENCE_LENGTH`` each."""
        config = denoiser.config
        tokens = (resolution // vae_scale // int(config.patch_size)) ** 2 + 3 * MAX_SEQUENCE_LENGTH
        width = int(config.num_attention_heads) * int(config.attention_head_dim)
        blocks = int(config.num_layers) + int(config.num_single_layers)
        return transformer_activations(tokens, width, blocks, batch)

    # -- saving and export --------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                f"{self.label} LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super().save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return HIDREAM_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        """The ComfyUI file (module docstring): ``diffusion_model.<diffusers module>.lora_A/B.weight``,
        ``alpha/r`` folded into ``lora_B``, no ``.alpha`` tensors (scale 1 everywhere)."""
        return folded_state_dict(
            diffusers_state, scales, "transformer", "diffusion_model", self.label, alpha_tensors=False
        )
