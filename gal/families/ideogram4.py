"""Ideogram 4 (Ideogram, 2026: a 9.3B single-stream DiT over one packed ``[text | image]`` sequence, text
features from 13 tapped layers of a Qwen3-VL-8B encoder, the FLUX.2 VAE, and a second, unconditional
transformer of the same size for its asymmetric classifier-free guidance).

Training follows diffusers' ``examples/dreambooth/train_dreambooth_lora_ideogram4.py`` (diffusers main,
58eb52c): LoRA on the conditional ``transformer`` only (the ``unconditional_transformer`` stays frozen);
the pipeline's ``encode_prompt`` (the Qwen3-VL chat template, left-padded, hidden states of
``QWEN3_VL_ACTIVATION_LAYERS`` concatenated per token); latents ``vae.encode(x).latent_dist.mode()`` (no
posterior sample: ``latent_dist`` returns std 0), 2×2-patchified into tokens (the script's
``patchify_latents``) and normalised by the VAE's BatchNorm statistics ``(z - mean) / sqrt(var + eps)``;
``σ = compute_density_for_timestep_sampling(…, logit_mean = train.flow.logit_mean + ½·log(pixels / 512²))``
used directly as σ (no scheduler grid: the pipeline's resolution-aware logit-normal schedule), ``noisy =
(1 - σ) x + σ ε``; the transformer gets ``[zeros(text) | noisy]`` with the text features, the pipeline's
``_prepare_ids`` layout and the model time ``t = 1 - σ``; the prediction's image tokens against the
target ``x - ε`` ("ideogram predicts v = x0 - noise"); ``compute_loss_weighting_for_sd3``. No autocast
(the script's README: pass ``--disable_training_autocast``; bf16 autocast corrupts the forward): inputs
are cast to the transformer's dtype. The script defaults to ``weighting_scheme=logit_normal`` with
``logit_std=1.5``; GAL's ``train.flow`` defaults (``none``: uniform σ) are shared by every flow family —
set ``train.flow.weighting_scheme=logit_normal, logit_std=1.5`` for the script's exact schedule.

Text length: the pipeline left-pads every prompt to ``max_sequence_length`` (2048). Padding tokens are
their own attention segment (``segment_ids`` -1: the prompt and image never attend to them) and the text
positions count from the first real token, so the image tokens' prediction does not depend on the padding
length, and Qwen3-VL (causal, positions from each prompt's first token) gives the same features at any
padding. Training therefore encodes at the longest prompt's length (tests/test_family_ideogram4.py checks
the features and the loss are those at the full length) instead of 2048 columns of 53248 features per
prompt, and the encoder runs on tens of tokens instead of 2048; generation pads as the pipeline does.

The prompt enhancer (``prompt_enhancer_head`` + ``upsample_prompt``, an LLM rewriting a prompt into
Ideogram's JSON caption) is never run: it would change the anchor prompts GAL trains on and judges. The
head is not loaded (``load_kwargs``), and generation passes ``prompt_upsampling=False``.

Generation: 48 steps at a constant ``guidance_scale`` (7.0 by default, the main value of the pipeline's
recommended schedule, which drops to 3.0 for its last 3 steps: GAL has one guidance setting, so it draws
with the pipeline's documented constant-scale form, ``guidance_schedule=None``), the pipeline's
resolution-aware logit-normal sigmas on its flow-matching Euler scheduler. No negative prompt: the
unconditional branch is the unconditional transformer on zeroed text features.

Exports: the diffusers LoRA (``Ideogram4Pipeline.save_lora_weights``) and the ComfyUI file. ComfyUI has an
Ideogram 4 model (``comfy/ldm/ideogram4/model.py``: ``layers.N.attention.qkv`` fused, ``attention.o``,
``feed_forward.w1/w2/w3``, ``adaln_modulation``, the rest named as in diffusers) but no Ideogram branch in
``model_lora_keys_unet`` (Comfy-Org/ComfyUI@17358c8): its generic map loads ``diffusion_model.<native
module>`` keys. So the ComfyUI file is ``diffusion_model.<native module>.lora_down/lora_up.weight`` +
``.alpha``: to_q/to_k/to_v become one rank-3r LoRA on the fused ``qkv`` (the A's stacked, the B's block-
diagonal: ΔW_qkv = [ΔW_q; ΔW_k; ΔW_v] exactly), alpha/r folded into ``lora_up`` and ``alpha`` = the rank
(scale 1). That is also the layout diffusers' own importer reads (``_convert_non_diffusers_ideogram4_lora_
to_diffusers``: the ai-toolkit format, qkv chunked in thirds), which the tests use to redraw the run's
images from it in a fresh process.
"""

from __future__ import annotations

import re

import torch

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.flow import FlowDraw, FlowMatching
from gal.families.memory import transformer_activations
from gal.families.zimage import qwen_tokenizer

# The script's default target_modules: every block's attention projections and its SwiGLU MLP.
IDEOGRAM4_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"]
MAX_SEQUENCE_LENGTH = 2048  # the pipeline's and the script's default
PATCH = 2  # Ideogram4Pipeline.patch_size

IDEOGRAM4_FACTS = ExportFacts(
    variant="ideogram4",
    base_model_version="ideogram4",  # no kohya/musubi constant exists for Ideogram 4: the family name
    architecture="ideogram-4",
    implementation="https://github.com/ideogram-oss/ideogram4",
    implementation_full="https://github.com/ideogram-oss/ideogram4",
    license="other",  # the script's model card: license="other" (the Ideogram non-commercial agreement)
    tags=("ideogram4", "ideogram4-diffusers"),  # the script's model-card tags
    writes_prediction_type=False,
)


def prepare_ids(text_lengths: list[int], grid_h: int, grid_w: int, max_text: int, device):
    """``Ideogram4Pipeline._prepare_ids``: the packed ``[left pad | text | image]`` layout's MRoPE positions,
    segment ids and per-token roles."""
    from diffusers import Ideogram4Pipeline

    return Ideogram4Pipeline._prepare_ids(text_lengths, grid_h, grid_w, max_text, device)


def patchify(z: torch.Tensor) -> torch.Tensor:
    """The script's ``patchify_latents``: ``[b, c, h, w]`` -> ``[b, h/2 · w/2, 4c]`` (channels fastest)."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 3, 5, 1)
    return z.reshape(b, (h // PATCH) * (w // PATCH), PATCH * PATCH * c)


def unpatchify(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of ``patchify`` (the pipeline's decode, no BatchNorm): tokens -> ``[b, c, h, w]``."""
    b, _, d = tokens.shape
    c = d // (PATCH * PATCH)
    z = tokens.reshape(b, h // PATCH, w // PATCH, PATCH, PATCH, c).permute(0, 5, 1, 3, 2, 4)
    return z.reshape(b, c, h, w)


class Ideogram4Family(FlowMatching, Family):
    name = "ideogram4"
    label = "Ideogram 4"
    pipeline_classes = ("Ideogram4Pipeline",)
    unsupported = {}
    denoiser_name = "transformer"
    lora_prefix = "transformer"
    defaults = FamilyDefaults(
        resolution=1024,  # the script's README trains at 1024 (the model draws up to 2048)
        learning_rate=1e-4,  # the script's default and its README's
        rank=16,  # the script's README (its argparse default is 4)
        steps=48,  # Ideogram4Pipeline's default
        guidance_scale=7.0,  # the main value of the pipeline's default schedule (module docstring)
        scheduler="flow-euler",  # the pipeline's FlowMatchEulerDiscreteScheduler
        target_modules=IDEOGRAM4_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,  # the script's --offload: Qwen3-VL leaves the GPU once prompts are cached
        cpu_offload=True,
        vae_tiling=True,
    )
    text_encoder_targets = []  # Qwen3-VL is never adapted (the script trains the transformer only)
    detect_priority = 3  # its names (llm_cond_proj, embed_image_indicator) are its own
    # 9.3B transformer int8 + checkpointing, Qwen3-VL and the unconditional transformer offloaded after the
    # prompts are cached: 12.5 GiB estimated at 1024 px (bench/families.py); bf16 with the same two options is
    # 21.2 GiB, too close to 24 for an estimate of ±30 % (peers: Chroma, 8.9B, is int8 too)
    preset_24gb = {"quantize_base": "int8", "gradient_checkpointing": True, "offload_text_encoders": True}

    # -- detection ----------------------------------------------------------------------------------
    def claims_keys(self, keys, shapes, where) -> bool:
        """Both layouts (diffusers' and ComfyUI's/the original, whose attention is a fused ``qkv``) name the
        text-feature projection ``llm_cond_proj`` and the ``embed_image_indicator`` table, under any prefix
        (``conditional_transformer.`` / ``unconditional_transformer.`` in bundled files)."""
        return any(k.endswith("llm_cond_proj.weight") for k in keys) and any(
            k.endswith("embed_image_indicator.weight") for k in keys
        )

    # -- loading ------------------------------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import Ideogram4Pipeline

        return Ideogram4Pipeline

    def load_kwargs(self) -> dict:
        """The prompt enhancer's LM head is never loaded: GAL does not rewrite prompts (module docstring)."""
        return {"prompt_enhancer_head": None}

    def load_single_file(self, path: str, config: str, dtype):
        """A single transformer file (diffusers layout, or ComfyUI's/the original with ``attention.qkv``
        fused and ``attention.o``), the rest — the unconditional transformer included — from ``config``.
        diffusers 0.42 has no single-file loader for Ideogram 4, so the file is read here."""
        from diffusers import Ideogram4Transformer2DModel
        from safetensors.torch import load_file

        state = diffusers_transformer_state(load_file(path))
        transformer = Ideogram4Transformer2DModel.from_config(
            Ideogram4Transformer2DModel.load_config(config, subfolder="transformer")
        )
        transformer.load_state_dict(state, strict=True)
        transformer.to(dtype)
        return self.pipeline_class().from_pretrained(
            config, transformer=transformer, dtype=dtype, **self.load_kwargs()
        )

    def build_tiny(self, seed: int = 0):
        """A random-init Ideogram 4-shaped pipeline at 32 px: two 2-block transformers at width 16 (the
        conditional and the unconditional one), a 36-layer Qwen3-VL at width 16 (the pipeline taps layers
        0…35: 13 × 16 = 208 text features), a two-level FLUX.2 VAE with BatchNorm statistics that are not the
        identity, the offline Qwen BPE with a Qwen3 chat template; same seed, same weights."""
        from diffusers import (
            AutoencoderKLFlux2,
            FlowMatchEulerDiscreteScheduler,
            Ideogram4Pipeline,
            Ideogram4Transformer2DModel,
        )
        from diffusers.pipelines.ideogram4.pipeline_ideogram4 import QWEN3_VL_ACTIVATION_LAYERS
        from transformers import Qwen3VLConfig, Qwen3VLModel

        tokenizer = qwen_tokenizer(model_max_length=128)
        width = 16
        transformer_config = dict(
            in_channels=16,  # 4 latent channels × 2×2 patch
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            intermediate_size=32,
            adaln_dim=16,
            llm_features_dim=len(QWEN3_VL_ACTIVATION_LAYERS) * width,
            rope_theta=10_000,
            mrope_section=(2, 1, 1),  # head_dim 8: 4 frequencies (diffusers' test config)
        )
        torch.manual_seed(seed)
        transformer = Ideogram4Transformer2DModel(**transformer_config)
        # The unconditional transformer starts as the same random weights (as if both came from one base):
        # two unrelated random nets blended at guidance 5-7 extrapolate noise, and nothing would be learnt
        # from the tiny model's images. It is still a separate module that LoRA never touches.
        unconditional = Ideogram4Transformer2DModel(**transformer_config)
        unconditional.load_state_dict(transformer.state_dict())
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLFlux2(
            block_out_channels=(4, 8),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
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
        vocab = tokenizer.get_vocab()
        config = Qwen3VLConfig(
            text_config={
                "hidden_size": width,
                "intermediate_size": 32,
                "num_hidden_layers": max(QWEN3_VL_ACTIVATION_LAYERS) + 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 8,
                "vocab_size": len(tokenizer),
                "max_position_embeddings": 256,
                "rope_theta": 10_000.0,
                "bos_token_id": vocab["<|endoftext|>"],
                "eos_token_id": vocab["<|im_end|>"],
                "pad_token_id": vocab["<|endoftext|>"],
            },
            vision_config=dict(
                depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=width
            ),
            vocab_size=len(tokenizer),
        )
        text_encoder = Qwen3VLModel(config).eval()
        pipe = Ideogram4Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            unconditional_transformer=unconditional,
        )
        pipe.default_sample_size = 16  # latent px: 16 × vae_scale_factor 2 = 32 px native
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # -- parts --------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        """The frozen parts that serve drawing but not a training step: Qwen3-VL (cached once per round) and
        the unconditional transformer (the CFG branch: a second 9.3B model). Training moves both off the
        device with ``offload_text_encoders`` (the 24 GB preset needs it); generation brings them back."""
        parts = (pipe.text_encoder, getattr(pipe, "unconditional_transformer", None))
        return [m for m in parts if m is not None]

    def native_resolution(self, pipe) -> int:
        """1024 px for the full-size model (the script's README; ``default_sample_size`` 128 latent px × 8),
        32 px for the tiny one."""
        return int(getattr(pipe, "default_sample_size", 128)) * int(pipe.vae_scale_factor)

    # -- training -----------------------------------------------------------------------------------
    @staticmethod
    def max_sequence_length(pipe) -> int:
        """The pipeline's 2048 text tokens, or fewer when the tokenizer says so (the tiny one: 128)."""
        return int(min(MAX_SEQUENCE_LENGTH, pipe.tokenizer.model_max_length))

    @staticmethod
    def prompt_tokens(pipe, prompt: str) -> int:
        """How many tokens ``encode_prompt`` gives ``prompt`` (its chat template, no special tokens added)."""
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        text = pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(pipe.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        """The pipeline's ``encode_prompt`` (chat template, left padding, the 13 tapped layers per token),
        the text part of its packed sequence only, at the longest prompt's length instead of 2048 (module
        docstring; Qwen3-VL is causal and its positions start at each prompt's first token, so the features
        are the same and the encoder runs on tens of tokens, not 2048): ``embeds [n, T, features]``
        (float32, zero on padding) and ``mask [n, T]`` (1 on text)."""
        from diffusers.models.transformers.transformer_ideogram4 import LLM_TOKEN_INDICATOR

        n = min(self.max_sequence_length(pipe), max(self.prompt_tokens(pipe, p) for p in prompts))
        embeds, _, _, indicator = pipe.encode_prompt(
            prompt=list(prompts), grid_h=1, grid_w=1, max_sequence_length=n, device=pipe.text_encoder.device
        )
        mask = (indicator[:, :n] == LLM_TOKEN_INDICATOR).long()
        longest = int(mask.sum(1).max())  # n, unless the count above overshot: trim what is padding for all
        return {"embeds": embeds[:, n - longest : n], "mask": mask[:, n - longest :]}

    def latent_dist(self, pipe, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The script's ``latent_dist.mode()``: the posterior mean, std 0 (no sample is drawn)."""
        mean = pipe.vae.encode(pixels).latent_dist.mode()
        return mean, torch.zeros_like(mean)

    @staticmethod
    def normalise(pipe, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents ``[b, c, h, w]`` -> the transformer's normalised tokens ``[b, N, 4c]``."""
        vae = pipe.vae
        mean = vae.bn.running_mean.view(1, 1, -1).to(latents.device, torch.float32)
        std = torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps).view(1, 1, -1)
        return (patchify(latents.float()) - mean) / std.to(latents.device, torch.float32)

    @staticmethod
    def draw(pipe, latents, cond, generator, cfg, rows) -> FlowDraw:
        """The script's draws for the whole batch from ``generator`` (noise, then σ from the density with the
        resolution-aware logit mean), then ``rows`` of them; tokens in ``FlowDraw.latents``."""
        from diffusers.pipelines.ideogram4.pipeline_ideogram4 import _resolution_aware_mu
        from diffusers.training_utils import compute_density_for_timestep_sampling

        from gal.families.base import LOSS_MASK

        x = Ideogram4Family.normalise(pipe, latents)
        b = len(x)
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        scale = int(pipe.vae_scale_factor)
        mu = _resolution_aware_mu(latents.shape[-2] * scale, latents.shape[-1] * scale, cfg.flow.logit_mean)
        sigmas = compute_density_for_timestep_sampling(
            cfg.flow.weighting_scheme,
            b,
            logit_mean=mu,
            logit_std=cfg.flow.logit_std,
            mode_scale=cfg.flow.mode_scale,
            generator=generator,
        )
        if rows is not None:
            x, noise, sigmas = x[rows], noise[rows], sigmas[rows]
            cond = {k: v[rows] for k, v in cond.items()}
        sigmas = sigmas.to(x.device, torch.float32).view(-1, 1, 1)
        cond = dict(cond)
        mask = cond.pop(LOSS_MASK, None)
        noisy = (1.0 - sigmas) * x + sigmas * noise
        return FlowDraw(x, noise, 1.0 - sigmas.flatten(), sigmas, noisy, cond, mask)

    def per_sample_loss(self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None):
        """The script's arithmetic (module docstring); ``scheduler`` (FlowMatching's) is not read: σ is drawn
        directly, not indexed on a scheduler grid. The error is unpacked to the latent grid so the loss mask
        (``reduce_loss``) weighs each latent pixel; the plain mean is the script's. Sampling is the mixin's
        ``flow-euler``: the pipeline's own scheduler, whose logit-normal sigmas it sets at every call."""
        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        d = self.draw(pipe, latents, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        b, tokens, channels = d.noisy.shape
        h, w = latents.shape[-2:]
        embeds, text_mask = d.cond["embeds"].to(device), d.cond["mask"].to(device)
        t = embeds.shape[1]
        position_ids, segment_ids, indicator = prepare_ids(
            text_mask.sum(1).tolist(), h // PATCH, w // PATCH, t, device
        )
        hidden = torch.cat([d.noisy.new_zeros(b, t, channels), d.noisy], dim=1)
        features = torch.cat([embeds, embeds.new_zeros(b, tokens, embeds.shape[-1])], dim=1)
        # no autocast (the script's --disable_training_autocast): the inputs in the transformer's dtype
        pred = transformer(
            hidden_states=hidden.to(dtype),
            timestep=d.timesteps.to(dtype),
            encoder_hidden_states=features.to(dtype),
            position_ids=position_ids,
            segment_ids=segment_ids,
            indicator=indicator,
            return_dict=False,
        )[0][:, t:]
        target = d.latents - d.noise  # "ideogram predicts v = x0 - noise"
        sigmas = d.sigmas.view(-1, 1, 1, 1)
        return self.flow_loss(cfg, sigmas, unpatchify(pred, h, w), unpatchify(target, h, w), d.mask)

    # -- generation ---------------------------------------------------------------------------------
    def pipe_kwargs(self, cfg, n: int) -> dict:
        """A constant guidance scale (``guidance_schedule=None``: the pipeline refuses both); no negative
        prompt (the unconditional transformer guides on zeroed text)."""
        if cfg.negative_prompt:
            raise ValueError(
                "Ideogram 4 takes no negative prompt (its unconditional transformer guides on zeroed text "
                "features): leave it empty"
            )
        return {
            "num_inference_steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
            "guidance_schedule": None,
        }

    def call_kwargs(self, pipe) -> dict:
        """The prompt enhancer stays off (GAL's anchor prompts are drawn as written)."""
        return {"max_sequence_length": self.max_sequence_length(pipe), "prompt_upsampling": False}

    # -- memory -------------------------------------------------------------------------------------
    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        tokens = (resolution // vae_scale // PATCH) ** 2 + 512  # image + a long prompt (trimmed, see above)
        width = int(config.num_attention_heads * config.attention_head_dim)
        return transformer_activations(tokens, width, int(config.num_layers), batch)

    # -- saving and export --------------------------------------------------------------------------
    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                f"{self.label} LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super().save_lora(pipe, folder, layers, metadata)

    def export_facts(self, pipe) -> ExportFacts:
        return IDEOGRAM4_FACTS

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        """The ComfyUI file (module docstring): ComfyUI-native module names under ``diffusion_model.``,
        ``lora_down``/``lora_up`` with alpha/r folded into ``lora_up`` and ``alpha`` = the rank; to_q/k/v
        fused into one ``attention.qkv`` LoRA of their summed rank."""
        alpha, rank = scales.get("transformer", (None, None))
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in diffusers_state.items():
            head, _, rest = key.partition(".")
            module, _, kind = rest.rpartition(".lora_")
            if head != "transformer" or kind not in ("A.weight", "B.weight"):
                raise ValueError(f"the {self.label} LoRA holds {key!r}: only the transformer is adapted here")
            pairs.setdefault(module, {})[kind[0]] = value
        fused: dict[str, dict[str, torch.Tensor]] = {}  # layers.N.attention -> {q/k/v: (A, B·s)}
        out: dict[str, torch.Tensor] = {}
        for module, ab in sorted(pairs.items()):
            a, b = ab["A"], ab["B"]
            r = a.shape[0]
            if rank is not None and int(rank) != r:
                raise ValueError(f"{module} has rank {r} but the adapter says r={rank}: re-export the round")
            scale = (float(alpha) if alpha is not None else r) / r
            m = re.fullmatch(r"(layers\.\d+\.attention)\.to_([qkv])", module)
            if m:
                fused.setdefault(m.group(1), {})[m.group(2)] = (a, b * scale)
                continue
            name = f"diffusion_model.{native_name(module)}"
            out[f"{name}.lora_down.weight"] = a.contiguous()
            out[f"{name}.lora_up.weight"] = (b * scale).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(r))
        for attention, parts in fused.items():
            like = next(iter(parts.values()))
            hidden = like[1].shape[0]
            downs = [parts[p][0] for p in "qkv" if p in parts]
            up = like[1].new_zeros(3 * hidden, sum(d.shape[0] for d in downs))
            col = 0
            for i, p in enumerate("qkv"):
                if p in parts:
                    a, b = parts[p]
                    up[i * hidden : (i + 1) * hidden, col : col + a.shape[0]] = b
                    col += a.shape[0]
            name = f"diffusion_model.{attention}.qkv"
            out[f"{name}.lora_down.weight"] = torch.cat(downs).contiguous()
            out[f"{name}.lora_up.weight"] = up
            out[f"{name}.alpha"] = torch.tensor(float(col))
        return out


# ComfyUI's Ideogram 4 module names (comfy/ldm/ideogram4/model.py) where diffusers' differ; every other
# module (feed_forward.w1/w2/w3, adaln_modulation, input_proj, final_layer.linear, …) is named the same.
_NATIVE_SAME = re.compile(
    r"layers\.\d+\.(feed_forward\.w[123]|adaln_modulation)|input_proj|llm_cond_proj|adaln_proj"
    r"|t_embedding\.mlp_(in|out)|final_layer\.(linear|adaln_modulation)"
)


def native_name(module: str) -> str:
    """A diffusers ``Ideogram4Transformer2DModel`` linear in ComfyUI's naming (to_q/k/v are fused by the
    caller); unknown modules raise rather than being dropped."""
    m = re.fullmatch(r"(layers\.\d+\.attention)\.to_out\.0", module)
    if m:
        return f"{m.group(1)}.o"
    if _NATIVE_SAME.fullmatch(module):
        return module
    raise ValueError(f"no ComfyUI Ideogram 4 name for module {module!r}: adapt the target modules")


def diffusers_transformer_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformer state dict in diffusers' naming from a single file in either layout: the prefixes of
    bundled/ComfyUI files dropped (``model.diffusion_model.``, ``diffusion_model.``,
    ``conditional_transformer.``; an ``unconditional_transformer.`` part is left out: it comes from the
    config folder), ``attention.qkv`` split in thirds, ``attention.o`` -> ``attention.to_out.0``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("unconditional_transformer."):
            continue
        for prefix in ("model.diffusion_model.", "diffusion_model.", "conditional_transformer."):
            key = key.removeprefix(prefix)
        m = re.fullmatch(r"(layers\.\d+\.attention)\.(qkv|o)\.weight", key)
        if m and m.group(2) == "qkv":
            for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0), strict=True):
                out[f"{m.group(1)}.{part}.weight"] = chunk.contiguous()
        elif m:
            out[f"{m.group(1)}.to_out.0.weight"] = value
        else:
            out[key] = value
    return out
