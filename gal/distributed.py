"""Several processes on one run (``accelerate launch`` / ``torchrun``), or just one.

A run's result does not depend on how many processes draw it, up to float rounding (README "Several
GPUs" states the tolerance; tests/test_distributed.py asserts it): every image keeps its own seed, and
training splits *one* global batch across the processes (each computes its slice of the same draw and
the LoRA gradients are summed), so N processes train the adapter one process would, only faster when the
batch has several images. Generation, judging and evaluation split
their work between the processes; only the main process writes SQLite (the others send it their
rows), so the database keeps one writer.

With ``WORLD_SIZE`` unset or 1 every method is a no-op and nothing of ``torch.distributed`` is touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


class Processes:
    def __init__(self, device: torch.device | None = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.local_rank = 0
        self.state = None
        if self.world > 1:
            from accelerate import PartialState

            cpu = device is not None and device.type == "cpu" or not torch.cuda.is_available()
            self.state = PartialState(cpu=cpu)  # gloo on CPU, nccl on CUDA
            self.rank, self.world = self.state.process_index, self.state.num_processes
            self.local_rank = self.state.local_process_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.world > 1

    def device(self, device: torch.device) -> torch.device:
        """Each process on its own GPU (``cuda:<local rank>``); CPU stays CPU."""
        if self.many and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def close(self) -> None:
        """Wait for every process, then leave the process group. Without it the main process could exit
        right after its last broadcast: a gloo send completes once buffered, not once received, so its
        closing socket reached a peer still reading that message as "Connection closed by peer"."""
        if self.many and torch.distributed.is_initialized():
            self.state.wait_for_everyone()
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.many:
            self.state.wait_for_everyone()

    def shard(self, items: Sequence) -> list:
        """This process's contiguous share of ``items`` (sizes differ by at most one)."""
        items = list(items)
        if not self.many:
            return items
        per, extra = divmod(len(items), self.world)
        start = self.rank * per + min(self.rank, extra)
        return items[start : start + per + (1 if self.rank < extra else 0)]

    def gather(self, items: list) -> list:
        """Every process's ``items`` concatenated in rank order (= the order of :meth:`shard`), on all."""
        if not self.many:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))

    def broadcast(self, value):
        """The main process's ``value`` on every process."""
        if not self.many:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def batch_slice(self, n: int) -> slice:
        """The rows of a global batch of ``n`` this process trains on (possibly none)."""
        if not self.many:
            return slice(0, n)
        per, extra = divmod(n, self.world)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (1 if self.rank < extra else 0))

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum each parameter's gradient over the processes (each holds its slice's share of the loss)."""
        if not self.many:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)

    def sum(self, value: float) -> float:
        if not self.many:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return float(t.item())

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.state.backend == "nccl" else torch.device("cpu")
