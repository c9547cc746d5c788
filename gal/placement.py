"""Where a pipeline's parts live when the whole pipeline does not fit on the GPU ("parts" placement).

Loading a pipeline puts every part on the compute device when its weights fit in the free memory with a
margin ("whole", the only placement there was). A 20B transformer in bf16 (Qwen-Image: 41 GB, plus a 17 GB
text encoder) does not fit a 24 GB card before any memory option can act, so such a pipeline is placed in
parts, as musubi-tuner, sd-scripts and ai-toolkit place it:

- the **VAE** goes to the device (small);
- each **text encoder** stays on the CPU and visits the device only while it runs: a forward pre-hook
  moves it and its inputs there, a forward hook moves it back and hands the outputs back on the caller's
  device — to the family's own encoding (training's prompt cache) and to the pipeline's ``encode_prompt``
  (generation) it behaves as an encoder on their device;
- the **denoiser** is placed on first use (``place_denoiser``): the last ``blocks_to_swap`` transformer
  blocks stay on the CPU as ``gal.blockswap`` masters, streamed in while they run (training and
  generation alike: the swap stays on between them), and everything else goes to the device one block at a
  time, quantized there when ``train.quantize_base`` asks (so the bf16 model is never whole on the device).
  Swapped blocks stream in their base precision (torchao's quantized tensors are not pinned and streamed).
  LoRA weights always sit on the device (``settle_adapter`` after any adapter is attached or loaded).

diffusers' ``DiffusionPipeline.device`` (0.42) names the first component that is not on the CPU — made for
pipelines split across devices — so with the VAE on the device the pipeline computes there. Nothing here
changes the arithmetic: on the CPU, "parts" trains the same adapter and draws the same images as "whole"
(tests/test_placement.py).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

LOAD_MARGIN = 3 * 2**30  # activations of a generation step, CUDA context and allocator slack


def module_bytes(module: torch.nn.Module | None, device: torch.device | None = None) -> int:
    """Bytes of a module's parameters and buffers (only those on ``device`` when given)."""
    if module is None:
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(
        t.numel() * t.element_size() for t in tensors if device is None or t.device == torch.device(device)
    )


def free_bytes(device: torch.device) -> int:
    """What this process may still allocate on a CUDA ``device``: the driver's free memory, capped by the
    process's allocator limit (``torch.cuda.set_per_process_memory_fraction``) less what it has reserved."""
    free, total = torch.cuda.mem_get_info(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if fraction is not None:
        free = min(free, int(fraction(device) * total) - torch.cuda.memory_reserved(device))
    return max(0, int(free))


def pipeline_modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def choose(total_bytes: int, free_bytes: int, margin: int = LOAD_MARGIN) -> str:
    """ "whole" when the pipeline's weights and the margin fit in the free memory, else "parts"."""
    return "whole" if total_bytes + margin <= free_bytes else "parts"


def is_parts(pipe) -> bool:
    return getattr(pipe, "_gal_placement", "whole") == "parts"


def compute_device(pipe, family=None) -> torch.device:
    """The device a pipeline computes on: its target in "parts" placement, else its denoiser's device."""
    if is_parts(pipe):
        return pipe._gal_device
    from gal.families.base import of

    return (family or of(pipe)).denoiser(pipe).device


def place(pipe, family, device: torch.device, mode: str | None = None) -> str:
    """Put a freshly loaded pipeline where it computes. ``mode`` None: "whole" on the CPU and wherever the
    pipeline fits, else "parts" (see the module doc). Returns the placement."""
    device = torch.device(device)
    if mode is None:
        if device.type != "cuda":
            mode = "whole"
        else:
            total = sum(module_bytes(m) for m in pipeline_modules(pipe).values())
            free = free_bytes(device)
            mode = choose(total, free)
            if mode == "parts":
                log.info(
                    "%s: %.1f GiB of weights, %.1f GiB free on %s: placed in parts (text encoders visit the "
                    "GPU while they run, the denoiser is placed block by block on first use)",
                    family.label,
                    total / 2**30,
                    free / 2**30,
                    device,
                )
    if mode == "whole":
        pipe.to(device)
        pipe._gal_placement = "whole"
        return mode
    if mode != "parts":
        raise ValueError(f"placement must be 'whole' or 'parts', got {mode!r}")
    pipe._gal_placement = "parts"
    pipe._gal_device = device
    pipe._gal_placed = None  # (blocks swapped, quantization) once the denoiser is placed
    pipe._gal_swap = None
    pipe.vae.to(device)
    room = free_bytes(device) if device.type == "cuda" else None
    for encoder in family.text_encoders(pipe):
        # An encoder visits whole: one larger than half the free memory (FLUX.2 dev's 48 GB Mistral, Qwen's
        # 17 GB Qwen2.5-VL next to a resident denoiser) would not fit beside the denoiser: it runs on the CPU.
        big = room is not None and module_bytes(encoder) > room // 2
        visit_while_running(encoder, torch.device("cpu") if big else device)
        if big:
            log.info("%s: %s runs on the CPU (too large to visit)", family.label, type(encoder).__name__)
    return mode


def _to(value, device):
    """``value`` with every tensor in it (tuples, lists, dicts, transformers' ModelOutput) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):  # ModelOutput is a dict: set its items in place
        for key in list(value.keys()):
            value[key] = _to(value[key], device)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def _first_device(args, kwargs) -> torch.device | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def visit_while_running(module: torch.nn.Module, device: torch.device, home="cpu") -> None:
    """Keep ``module`` on ``home`` and move it (with its inputs) to ``device`` only while it runs; its
    outputs come back on the device its inputs came from. Idempotent."""
    if getattr(module, "_gal_visiting", None) is not None:
        return
    module.to(home)
    caller: list[torch.device | None] = [None]

    def pre(mod, args, kwargs):
        caller[0] = _first_device(args, kwargs)
        mod.to(device)
        return _to(tuple(args), device), _to(dict(kwargs), device)

    def post(mod, args, kwargs, output):
        mod.to(home)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        return _to(output, caller[0]) if caller[0] is not None else output

    module._gal_visiting = (
        module.register_forward_pre_hook(pre, with_kwargs=True),
        module.register_forward_hook(post, with_kwargs=True, always_call=True),
    )


def _resident_parts(denoiser, swapped_ids: set[int]):
    """The denoiser's modules that live on the device in "parts" placement, in small pieces: each
    transformer block not swapped, and every other child module; a ModuleList of blocks is walked."""
    from gal.blockswap import BLOCK_LISTS

    for name, child in denoiser.named_children():
        if name in BLOCK_LISTS and isinstance(child, torch.nn.ModuleList):
            yield from (b for b in child if id(b) not in swapped_ids)
        else:
            yield child


def place_denoiser(pipe, family, blocks_to_swap: int, quantize: str | None) -> None:
    """Place the denoiser of a "parts" pipeline once (see the module doc); later calls keep that placement
    (a different request is logged, not applied: a placement that fits stays)."""
    from gal.blockswap import BlockSwap, swappable_blocks

    want = (int(blocks_to_swap or 0), quantize or None)
    if pipe._gal_placed is not None:
        if pipe._gal_placed != want:
            log.info("%s: the denoiser stays placed as %s (asked %s)", family.label, pipe._gal_placed, want)
        return
    device = pipe._gal_device
    denoiser = family.denoiser(pipe)
    denoiser.requires_grad_(False)
    blocks = swappable_blocks(denoiser)
    n = min(want[0], len(blocks))
    swapped = blocks[len(blocks) - n :] if n else []
    if n:
        # The masters are the CPU weights themselves (pinned on CUDA); buffers go to the device.
        pipe._gal_swap = BlockSwap(denoiser, n, device)
    config = _quantization(quantize, device) if quantize else None
    for part in _resident_parts(denoiser, {id(b) for b in swapped}):
        part.to(device)
        if config is not None:
            from torchao.quantization import quantize_

            quantize_(part, config, filter_fn=_base_linear)
    for p in denoiser._parameters.values():  # tensors held by the denoiser itself (e.g. pad tokens)
        if p is not None:
            p.data = p.data.to(device)
    for key, buf in denoiser._buffers.items():
        if buf is not None:
            denoiser._buffers[key] = buf.to(device)
    if quantize:
        pipe._gal_quantized = quantize
    pipe._gal_placed = (n, want[1])
    log.info(
        "%s: denoiser placed: %d of %d blocks streamed from the CPU%s",
        family.label,
        n,
        len(blocks),
        f", the rest {quantize} on {device}" if quantize else "",
    )


def _base_linear(module, name) -> bool:
    return isinstance(module, torch.nn.Linear) and "lora_" not in name


def _quantization(mode: str, device: torch.device):
    """torchao's weight-only config for ``mode`` (as ``gal.training.quantize_base``)."""
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError as err:
        raise ValueError(f"quantize_base={mode!r} needs torchao: pip install 'gal-studio[quant]'") from err
    if mode == "fp8":
        if torch.device(device).type != "cuda":
            raise ValueError("quantize_base='fp8' needs a CUDA GPU (compute capability >= 8.9): use 'int8'")
        return Float8WeightOnlyConfig()
    if mode == "int8":
        return Int8WeightOnlyConfig()
    raise ValueError(f"quantize_base={mode!r} is not available in parts placement: use 'int8' or 'fp8'")
