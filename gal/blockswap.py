"""Block swap: keep the frozen weights of a transformer's last N blocks on the CPU and stream each block
to the compute device only while it runs, in the forward pass and in the backward pass's recompute
(gradient checkpointing), as sd-scripts' / musubi-tuner's ``--blocks_to_swap`` and ai-toolkit's layer
offloading do. This is how the peers fit 12-20B-parameter transformers on a 24 GB card.

How: a forward pre-hook on each swapped block replaces its frozen parameters by fresh device copies of
the CPU masters (new ``Parameter`` objects, so whatever autograd saved keeps pointing at device memory);
a forward hook puts the CPU masters back. With gradient checkpointing (turned on with block swap) the
forward saves nothing of the block, so its device copy is freed as soon as the block returns; in backward
the checkpoint recomputes the block (the hooks stream it in again), its graph holds that copy until the
block's gradients are done, then it is freed. At most about two blocks' weights are on the device at a
time. LoRA parameters (``lora_`` in the name, trainable) are never moved: they stay on the device, the
same objects the optimizer holds. Copies are synchronous (pinned memory, ``non_blocking``) — no
prefetch of the next block on a side stream yet.
"""

from __future__ import annotations

import torch

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers")


def swappable_blocks(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's transformer blocks in execution order (FLUX.1/Chroma: double then single blocks;
    Qwen-Image, Krea 2, SD3: ``transformer_blocks``)."""
    blocks: list[torch.nn.Module] = []
    for name in BLOCK_LISTS:
        module_list = getattr(denoiser, name, None)
        if isinstance(module_list, torch.nn.ModuleList):
            blocks.extend(module_list)
    return blocks


def _frozen(block: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    out = []
    for module_name, module in block.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p is None or p.requires_grad or "lora_" in module_name or "lora_" in name:
                continue
            out.append((module, name))
    return out


class BlockSwap:
    """Hooks that stream the frozen weights of ``n`` blocks between ``offload`` and ``device``.

    Use as ``swap = BlockSwap(denoiser, n, device)`` … ``swap.close()`` (or a ``with`` block). ``close``
    puts the weights back on ``device`` as ordinary parameters and removes the hooks."""

    def __init__(self, denoiser: torch.nn.Module, n: int, device, offload="cpu"):
        blocks = swappable_blocks(denoiser)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"train.blocks_to_swap must be an integer >= 0, got {n!r}")
        if not blocks:
            raise ValueError(
                f"{type(denoiser).__name__} has no transformer blocks to swap: set train.blocks_to_swap=0"
            )
        if n > len(blocks):
            raise ValueError(
                f"train.blocks_to_swap={n} but {type(denoiser).__name__} has {len(blocks)} blocks: "
                f"use at most {len(blocks)}"
            )
        self.device = torch.device(device)
        self.offload = torch.device(offload)
        self.blocks = blocks[len(blocks) - n :]  # the last N, as sd-scripts and musubi swap
        pin = self.offload.type == "cpu" and self.device.type == "cuda"
        # (block index) -> [(module, name, master parameter on the offload device)]
        self.masters: list[list[tuple[torch.nn.Module, str, torch.nn.Parameter]]] = []
        self._handles = []
        self.streamed = 0  # blocks streamed in so far (forward + recompute), for tests and benches
        for block in self.blocks:
            entries = []
            for module, name in _frozen(block):
                data = module._parameters[name].detach().to(self.offload)
                if pin:
                    try:
                        data = data.pin_memory()
                    except (NotImplementedError, RuntimeError):  # a quantized tensor subclass may not pin
                        pass  # streamed from pageable memory: slower copies, the same weights
                master = torch.nn.Parameter(data, requires_grad=False)
                module._parameters[name] = master  # the device copy is dropped here
                entries.append((module, name, master))
            for buf_module in block.modules():  # buffers are small: they stay on the compute device
                for key, buf in buf_module._buffers.items():
                    if buf is not None and buf.device != self.device:
                        buf_module._buffers[key] = buf.to(self.device)
            self.masters.append(entries)
            index = len(self.masters) - 1
            self._handles.append(block.register_forward_pre_hook(self._stream_in(index)))
            self._handles.append(block.register_forward_hook(self._stream_out(index), always_call=True))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _stream_in(self, index: int):
        def hook(module, args):
            for sub, name, master in self.masters[index]:
                copy = master.detach().to(self.device, non_blocking=True, copy=True)
                sub._parameters[name] = torch.nn.Parameter(copy, requires_grad=False)
            self.streamed += 1

        return hook

    def _stream_out(self, index: int):
        def hook(module, args, output):
            for sub, name, master in self.masters[index]:
                sub._parameters[name] = master

        return hook

    def offloaded(self) -> bool:
        """True when every swapped block's frozen weights are their offload-device masters (between steps)."""
        return all(
            sub._parameters[name] is master and master.device == self.offload
            for entries in self.masters
            for sub, name, master in entries
        )

    def close(self) -> None:
        """Remove the hooks and put the swapped weights back on the compute device."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for entries in self.masters:
            for sub, name, master in entries:
                sub._parameters[name] = torch.nn.Parameter(
                    master.detach().to(self.device), requires_grad=False
                )
        self.masters = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start(denoiser: torch.nn.Module, n: int | None, device) -> BlockSwap | None:
    """A ``BlockSwap`` of ``n`` blocks, or None when ``n`` is 0/None (block swap off)."""
    if not n:
        return None
    return BlockSwap(denoiser, n, device)
