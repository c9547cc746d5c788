"""FLUX.1: CLIP pooled + T5 sequence, a flow-matching MMDiT on packed 2×2 latent patches with image ids,
a distilled guidance embedding (dev). Training follows diffusers' ``train_dreambooth_lora_flux.py``:
``compute_density_for_timestep_sampling`` (weighting_scheme "none" = uniform, or "logit_normal"),
``noisy = (1 - σ) x + σ ε``, target ``ε - x``, ``compute_loss_weighting_for_sd3``."""

from __future__ import annotations

import torch

from gal.families.base import ExportFacts, Family, FamilyDefaults
from gal.families.flow import FlowMatching
from gal.families.memory import transformer_activations
from gal.families.tiny import t5_tokenizer  # noqa: F401  (re-exported: benches build FLUX's tokenizer)

# The modules diffusers' Flux DreamBooth-LoRA script adapts by default.
FLUX_TARGETS = [
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]  # fmt: skip

FLUX_FACTS = ExportFacts(
    variant="flux",
    base_model_version="flux1",  # sd-scripts library/flux_utils MODEL_VERSION_FLUX_V1
    architecture="flux-1-dev",
    implementation="https://github.com/black-forest-labs/flux",
    implementation_full="https://github.com/black-forest-labs/flux",
    license="other",
    tags=("flux",),
    writes_prediction_type=False,
    network_module="networks.lora_flux",  # what sd-scripts' flux_train_network writes
)


class FluxFamily(FlowMatching, Family):
    name = "flux"
    label = "FLUX.1"
    pipeline_classes = ("FluxPipeline",)
    single_file_transformer = "FluxTransformer2DModel"
    denoiser_name = "transformer"
    lora_prefix = "transformer"
    defaults = FamilyDefaults(
        resolution=1024,
        learning_rate=1e-4,
        rank=16,
        steps=28,
        guidance_scale=3.5,
        scheduler="flow-euler",
        target_modules=FLUX_TARGETS,
        gradient_checkpointing=True,
        offload_text_encoders=True,
        cpu_offload=True,
        vae_tiling=True,
    )
    text_encoder_targets = []  # the T5 is never adapted here
    unsupported = {
        "FluxFillPipeline": "FLUX.1 Fill (inpainting)",
        "FluxImg2ImgPipeline": "FLUX.1 img2img",
        "FluxKontextPipeline": "FLUX.1 Kontext (editing)",
    }
    detect_priority = 10
    # 24 GB: the 11.9B transformer is ~22 GiB in bf16 alone, so an int8 base (~11 GiB) + checkpointing +
    # T5/CLIP offloaded (bench/families.py; the peers train FLUX.1 LoRAs at int8/fp8 on 24 GB cards).
    preset_24gb = {"quantize_base": "int8", "gradient_checkpointing": True, "offload_text_encoders": True}
    shape_keys = ("x_embedder.weight", "img_in.weight")

    def claims_keys(self, keys, shapes, where) -> bool:
        if not (
            any(k.startswith(("double_blocks.", "single_blocks.")) for k in keys)
            or any(k.startswith("single_transformer_blocks.") for k in keys)
        ):
            return False
        if any("img_in" in k or "x_embedder" in k for k in keys):
            width = next(
                (s[1] for k, s in shapes.items() if k.endswith(("img_in.weight", "x_embedder.weight"))), 64
            )
            if width != 64 and width > 16:  # FLUX.1 takes 16 ch × 2×2 patches; Fill/Depth/Kontext take more
                raise ValueError(
                    f"{where} is a FLUX.1 variant with {width} input channels (Fill/Depth/Redux?), "
                    "which GAL Studio cannot train"
                )
        return True

    def pipeline_class(self):
        from diffusers import FluxPipeline

        return FluxPipeline

    def build_tiny(self, seed: int = 0):
        """A random-init FLUX.1-dev-shaped pipeline at 32 px (the notes' recipe); same seed, same weights."""
        from diffusers import (
            AutoencoderKL,
            FlowMatchEulerDiscreteScheduler,
            FluxPipeline,
            FluxTransformer2DModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel

        from gal.families.tiny import TINY_CLIP_TEXT, TINY_VAE, clip_tokenizer, tiny_t5

        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            **TINY_VAE,
            shift_factor=0.0609,
            scaling_factor=1.5035,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_CLIP_TEXT)).eval()
        tokenizer_2 = t5_tokenizer(32)
        text_encoder_2 = tiny_t5(tokenizer_2, d_model=32, seed=seed + 3)
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        pipe = FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
        pipe.default_sample_size = 16  # 16 latent px × vae_scale_factor 2 = 32 px native
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def native_resolution(self, pipe) -> int:
        return int(pipe.default_sample_size) * int(pipe.vae_scale_factor)

    @staticmethod
    def max_sequence_length(pipe) -> int:
        return int(min(512, pipe.tokenizer_2.model_max_length))

    def encode_with_grad(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        embeds, pooled, _ = pipe.encode_prompt(
            prompts,
            prompt_2=None,
            device=pipe.text_encoder_2.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length(pipe),
        )
        return {"embeds": embeds, "pooled": pooled}

    @torch.no_grad()
    def encode(self, pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
        return self.encode_with_grad(pipe, prompts, resolution)

    def per_sample_loss(
        self, pipe, scheduler, latents, cond, generator, cfg, autocast, rows=None
    ) -> torch.Tensor:
        from diffusers import FluxPipeline

        transformer = pipe.transformer
        device, dtype = latents.device, transformer.dtype
        d = self.flow_draw(scheduler, latents, cond, generator, cfg, rows)
        if d.empty:
            return latents.new_zeros(0)
        b, c, h, w = d.latents.shape
        packed = FluxPipeline._pack_latents(d.noisy, b, c, h, w)
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        text_ids = torch.zeros(d.cond["embeds"].shape[1], 3, device=device, dtype=dtype)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = transformer(
                hidden_states=packed.to(dtype),
                timestep=d.timesteps / 1000,
                encoder_hidden_states=d.cond["embeds"],
                txt_ids=text_ids,
                img_ids=image_ids,
                return_dict=False,
                **self.conditioning(pipe, d, packed, cfg),
            )[0]
        scale = int(pipe.vae_scale_factor)
        pred = FluxPipeline._unpack_latents(pred, height=h * scale, width=w * scale, vae_scale_factor=scale)
        return self.flow_loss(cfg, d.sigmas, pred, d.noise - d.latents, d.mask)

    def conditioning(self, pipe, d, packed: torch.Tensor, cfg) -> dict:
        """The transformer's inputs beyond latents, text and ids: FLUX.1's pooled CLIP projection and, for
        guidance-distilled checkpoints, the distilled guidance (Chroma overrides: a text mask instead)."""
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            b = packed.shape[0]
            guidance = torch.full((b,), float(cfg.flow.guidance_scale), device=packed.device)
        return {"guidance": guidance, "pooled_projections": d.cond["pooled"]}

    def pipe_kwargs(self, cfg, n: int) -> dict:
        if cfg.negative_prompt:
            raise ValueError("FLUX.1-dev is guidance-distilled and ignores negative prompts: leave it empty")
        return {"num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance_scale}

    def call_kwargs(self, pipe) -> dict:
        return {"max_sequence_length": self.max_sequence_length(pipe)}

    def save_lora(self, pipe, folder, layers, metadata) -> None:
        if set(layers) != {"transformer"}:
            raise ValueError(
                f"{self.label} LoRA here adapts the transformer only: turn train.train_text_encoder off"
            )
        super().save_lora(pipe, folder, layers, metadata)

    def kohya_state_dict(self, diffusers_state, scales, pipe=None) -> dict[str, torch.Tensor]:
        """The BFL/kohya layout ComfyUI's and kohya's FLUX.1 loaders read (diffusers has no exporter)."""
        alpha, _ = scales.get("transformer", (None, None))
        if alpha is None:
            raise ValueError("the FLUX.1 kohya export needs the transformer adapter's alpha")
        return bfl_state_dict(diffusers_state, alpha)

    def export_facts(self, pipe) -> ExportFacts:
        return FLUX_FACTS

    def activations(self, denoiser, resolution: int, batch: int, vae_scale: int) -> tuple[float, float]:
        config = denoiser.config
        latent = resolution // vae_scale
        width = int(config.num_attention_heads * config.attention_head_dim)
        tokens = (latent // 2) ** 2 + 512
        blocks = int(config.num_layers) * 2 + int(config.num_single_layers)  # double blocks carry two streams
        return transformer_activations(tokens, width, blocks, batch)


# BFL (original checkpoint) names of the diffusers double-block modules that are not fused.
_DOUBLE_SINGLE = {
    "attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp_0", "ff.net.2": "img_mlp_2",
    "ff_context.net.0.proj": "txt_mlp_0", "ff_context.net.2": "txt_mlp_2",
}  # fmt: skip
_DOUBLE_FUSED = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}  # fmt: skip


def bfl_state_dict(diffusers_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A diffusers Flux LoRA (``transformer.<module>.lora_A/B.weight``) in the kohya/BFL layout that ComfyUI,
    Forge, sd-scripts and diffusers' own kohya importer read (``lora_unet_double_blocks_0_img_attn_qkv…``).

    BFL fuses q, k, v (and, in single blocks, the MLP input) into one linear: a rank-r LoRA on each of
    q, k, v is exactly a rank-3r LoRA on the fused layer with ``down = cat(A_q, A_k, A_v)`` and
    ``up = block_diag(B_q, B_k, B_v)`` (zero rows for the single blocks' MLP part), and ``alpha = 3·alpha``
    keeps the scale alpha / r. Modules the mapping does not know raise, rather than being dropped.
    """
    import re

    groups: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for key in diffusers_state:
        m = re.fullmatch(r"transformer\.(.+)\.lora_A\.weight", key)
        if not m:
            if not key.endswith(".lora_B.weight"):
                raise ValueError(
                    f"unexpected key {key!r} in a Flux LoRA: expected transformer.<module>.lora_A/B"
                )
            continue
        module = m.group(1)
        blk = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", module)
        if not blk:
            raise ValueError(f"no BFL name for Flux module {module!r}: adapt only transformer blocks")
        a = diffusers_state[key]
        b = diffusers_state[f"transformer.{module}.lora_B.weight"]
        groups.setdefault(f"{blk.group(1)}.{blk.group(2)}", {})[blk.group(3)] = (a, b)

    out: dict[str, torch.Tensor] = {}

    def put(name: str, down: torch.Tensor, up: torch.Tensor, a: float) -> None:
        out[f"lora_unet_{name}.lora_down.weight"] = down.contiguous()
        out[f"lora_unet_{name}.lora_up.weight"] = up.contiguous()
        out[f"lora_unet_{name}.alpha"] = torch.tensor(float(a))

    for block, mods in groups.items():
        kind, index = block.split(".")
        mods = dict(mods)
        if kind == "transformer_blocks":
            prefix = f"double_blocks_{index}"
            for fused, parts in _DOUBLE_FUSED.items():
                present = [p for p in parts if p in mods]
                if not present:
                    continue
                if len(present) != 3:
                    raise ValueError(
                        f"{block}: {fused} needs LoRA on all of {', '.join(parts)} (BFL fuses them)"
                    )
                down = torch.cat([mods[p][0] for p in parts])
                up = torch.block_diag(*[mods[p][1] for p in parts])
                put(f"{prefix}_{fused}", down, up, 3 * alpha)
                for p in parts:
                    mods.pop(p)
            for module, bfl in _DOUBLE_SINGLE.items():
                if module in mods:
                    a, b = mods.pop(module)
                    put(f"{prefix}_{bfl}", a, b, alpha)
        else:
            prefix = f"single_blocks_{index}"
            parts = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
            present = [p for p in parts if p in mods]
            if present:
                if not all(p in mods for p in parts[:3]):
                    raise ValueError(
                        f"{block}: linear1 needs LoRA on all of to_q, to_k, to_v (BFL fuses them)"
                    )
                hidden = mods["attn.to_q"][1].shape[0]
                ups = [mods[p][1] for p in present]
                downs = [mods[p][0] for p in present]
                up = torch.block_diag(*ups)
                if "proj_mlp" not in mods:  # linear1 also computes the MLP input: zero rows for it
                    mlp = 4 * hidden
                    up = torch.cat([up, up.new_zeros(mlp, up.shape[1])])
                put(f"{prefix}_linear1", torch.cat(downs), up, len(present) * alpha)
                for p in present:
                    mods.pop(p)
            if "proj_out" in mods:
                a, b = mods.pop("proj_out")
                put(f"{prefix}_linear2", a, b, alpha)
        if mods:
            raise ValueError(f"no BFL name for {block} modules {', '.join(sorted(mods))}")
    return uniform_rank(out)


def uniform_rank(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every module at the file's largest rank R: ``down`` padded with zero rows, ``up`` with zero columns and
    ``alpha`` scaled by R / r, so ΔW = up·down·alpha/rank is unchanged and kohya's one ``ss_network_dim`` /
    ``ss_network_alpha`` are true of every module (tools that read the header, not each tensor, agree)."""
    names = [k.removesuffix(".lora_down.weight") for k in state if k.endswith(".lora_down.weight")]
    if not names:
        return state
    top = max(state[f"{n}.lora_down.weight"].shape[0] for n in names)
    out = dict(state)
    for n in names:
        down, up = state[f"{n}.lora_down.weight"], state[f"{n}.lora_up.weight"]
        r = down.shape[0]
        if r == top:
            continue
        out[f"{n}.lora_down.weight"] = torch.cat([down, down.new_zeros(top - r, down.shape[1])]).contiguous()
        out[f"{n}.lora_up.weight"] = torch.cat([up, up.new_zeros(up.shape[0], top - r)], dim=1).contiguous()
        out[f"{n}.alpha"] = torch.tensor(float(state[f"{n}.alpha"]) * top / r)
    return out
