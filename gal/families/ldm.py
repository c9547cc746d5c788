"""The original (LDM) single-file layout of SD 1.x/2.x: UNet, VAE and text-encoder key conversion, as
diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py does it (generalised to any block count).
A1111, ComfyUI and Forge load it from their checkpoints folder; diffusers with ``from_single_file``."""

from __future__ import annotations

import re

import torch


def _unet_prefix_map(config) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) for a UNet2DConditionModel of any block count, generalising
    diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py (written for SD's 4 x 2 blocks)."""
    n = len(config.block_out_channels)
    layers = config.layers_per_block
    layers = [layers] * n if isinstance(layers, int) else list(layers)
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    idx = 1
    for i, kind in enumerate(config.down_block_types):
        for j in range(layers[i]):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{idx}.0."))
            if "CrossAttn" in kind:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{idx}.1."))
            idx += 1
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{idx}.0.op."))
            idx += 1
    idx = 0
    rev = list(reversed(layers))
    for i, kind in enumerate(config.up_block_types):
        for j in range(rev[i] + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{idx}.0."))
            if "CrossAttn" in kind:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{idx}.1."))
            idx += 1
        if i < n - 1:
            pairs.append(
                (
                    f"up_blocks.{i}.upsamplers.0.",
                    f"output_blocks.{idx - 1}.{2 if 'CrossAttn' in kind else 1}.",
                )
            )
    return pairs


_RESNET = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def _rename(key: str, pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    best = None
    for hf, sd in pairs:
        if key.startswith(hf) and (best is None or len(hf) > len(best[0])):
            best = (hf, sd)
    return best


def convert_unet_to_ldm(state: dict, config) -> dict:
    pairs = _unet_prefix_map(config)
    out = {}
    for key, value in state.items():
        hit = _rename(key, pairs)
        if hit is None:
            raise ValueError(
                f"UNet weight {key!r} has no place in the original SD layout: this UNet is not SD-1/2 shaped"
            )
        hf, sd = hit
        rest = key[len(hf) :]
        if ".resnets." in hf:
            for a, b in _RESNET:
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
                    break
        out["model.diffusion_model." + sd + rest] = value
    return out


def convert_vae_to_ldm(state: dict, config) -> dict:
    """diffusers AutoencoderKL -> LDM ``first_stage_model.*`` (diffusers' script, any block count)."""
    n = len(config.block_out_channels)
    layers = config.layers_per_block
    pairs = [
        ("encoder.mid_block.attentions.0.", "encoder.mid.attn_1."),
        ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1."),
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
    ]
    for part in ("encoder", "decoder"):
        for i in range(2):
            pairs.append((f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}."))
    for i in range(n):
        for j in range(layers):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        for j in range(layers + 1):
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}."))
        if i < n - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    attn = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
        ("query.", "q."),
        ("key.", "k."),
        ("value.", "v."),
        ("proj_attn.", "proj_out."),
    ]
    out = {}
    for key, value in state.items():
        hit = _rename(key, pairs)
        new = key if hit is None else hit[1] + key[len(hit[0]) :]
        if hit is not None and ".resnets." in hit[0]:
            new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if hit is not None and "attentions" in hit[0]:
            rest = key[len(hit[0]) :]
            for a, b in attn:
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
                    break
            new = hit[1] + rest
            if rest.split(".")[0] in ("q", "k", "v", "proj_out") and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # linear -> 1x1 conv, as SD stores them
        out["first_stage_model." + new] = value
    return out


def convert_text_encoder_to_ldm(state: dict, family: str) -> dict:
    """SD1: HF CLIP keys under ``cond_stage_model.transformer.text_model.`` (put back: transformers 5 has
    no ``text_model.`` level). SD2: OpenCLIP ``cond_stage_model.model.*`` with fused in_proj (diffusers'
    script ``convert_text_enc_state_dict_v20``)."""
    flat = {(k[len("text_model.") :] if k.startswith("text_model.") else k): v for k, v in state.items()}
    if family == "sd1":
        return {f"cond_stage_model.transformer.text_model.{k}": v for k, v in flat.items()}
    if family != "sd2":
        raise ValueError(f"no single-file text-encoder layout for {family}")
    out, qkv_w, qkv_b = {}, {}, {}
    for k, v in flat.items():
        m = re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            (qkv_w if m[3] == "weight" else qkv_b).setdefault(m[1], {})[m[2]] = v
            continue
        new = k
        for a, b in [
            ("encoder.layers.", "transformer.resblocks."),
            (".self_attn.out_proj.", ".attn.out_proj."),
            (".layer_norm1.", ".ln_1."),
            (".layer_norm2.", ".ln_2."),
            (".mlp.fc1.", ".mlp.c_fc."),
            (".mlp.fc2.", ".mlp.c_proj."),
            ("final_layer_norm.", "ln_final."),
            ("embeddings.token_embedding.weight", "token_embedding.weight"),
            ("embeddings.position_embedding.weight", "positional_embedding"),
        ]:
            new = new.replace(a, b)
        if new == "embeddings.position_ids":
            continue
        out[f"cond_stage_model.model.{new}"] = v
    for store, suffix in ((qkv_w, "in_proj_weight"), (qkv_b, "in_proj_bias")):
        for layer, parts in store.items():
            out[f"cond_stage_model.model.transformer.resblocks.{layer}.attn.{suffix}"] = torch.cat(
                [parts["q"], parts["k"], parts["v"]]
            )
    return out


def sd_single_file(fused, variant: str) -> dict[str, torch.Tensor]:
    """The fused SD pipeline's weights in the original layout (``variant``: sd1 or sd2)."""
    state = {}
    state.update(convert_unet_to_ldm(fused.unet.state_dict(), fused.unet.config))
    state.update(convert_vae_to_ldm(fused.vae.state_dict(), fused.vae.config))
    state.update(convert_text_encoder_to_ldm(fused.text_encoder.state_dict(), variant))
    return state
