"""The models a process has loaded, once each, and which round's adapter is active in each pipeline.

Loading a pipeline costs seconds to minutes; switching a LoRA costs milliseconds. So a process keeps
one pipeline per model spec and one oracle per oracle spec, and remembers which (run, round) adapter
each pipeline carries, loading another from disk only when a step needs a different one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gal import judges
from gal.models import load_pipeline, pick_device, pick_dtype
from gal.oracle import Oracle
from gal.training import load_adapter, remove_adapter

AdapterKey = tuple[str, int]  # (run id, round index)


class LoadedModels:
    def __init__(self, device: str | None = None, precision: str = "auto", placement: str | None = None):
        self.device: torch.device = pick_device(device)
        self.placement = placement  # gal.placement: None = whole where the pipeline fits, else parts
        self.dtype: torch.dtype = pick_dtype(self.device, precision)
        self._pipes: dict[str, object] = {}
        self._oracles: dict[str, Oracle] = {}
        self._judges: dict[str, judges.Judge] = {}
        self._active: dict[str, AdapterKey | None] = {}

    def pipeline(self, spec: str):
        """The pipeline of ``spec`` (loaded on first use), with whatever adapter it carries."""
        if spec not in self._pipes:
            self._pipes[spec] = load_pipeline(spec, self.device, self.dtype, placement=self.placement)
            self._active[spec] = None
        return self._pipes[spec]

    def register(self, spec: str, pipe) -> None:
        """Use an already built pipeline for ``spec`` (benchmarks build full-size random-weight models)."""
        from gal.families import family_of

        family_of(pipe).attach(pipe)  # a load site: the pipeline carries its family from here on
        self._pipes[spec] = pipe
        self._active[spec] = None

    def has(self, spec: str) -> bool:
        """Whether ``spec`` is already loaded or registered in memory (nothing to look up on disk or hub)."""
        return spec in self._pipes

    def oracle(self, spec: str) -> Oracle:
        """The CLIP-space model that measures a run judged by ``spec`` (a CLIP judge's own model)."""
        spec = judges.scorer_spec(spec)
        if spec not in self._oracles:
            self._oracles[spec] = judges.load_scorer(spec, self.device)
        return self._oracles[spec]

    def judge(self, spec: str) -> judges.Judge:
        """The judge ``spec`` names (gal.judges), sharing this process's CLIP models."""
        if spec not in self._judges:
            self._judges[spec] = judges.load_judge(spec, self.device, scorer=self.oracle)
        return self._judges[spec]

    def with_adapter(self, spec: str, key: AdapterKey, folder: Path):
        """The pipeline with the adapter saved in ``folder`` (round ``key``) active."""
        pipe = self.pipeline(spec)
        if self._active.get(spec) != key:
            load_adapter(pipe, folder)
            self._active[spec] = key
        return pipe

    def base(self, spec: str):
        """The pipeline with no adapter (class images of prior preservation are drawn by the base)."""
        pipe = self.pipeline(spec)
        remove_adapter(pipe)
        self._active[spec] = None
        return pipe

    def mark(self, spec: str, key: AdapterKey | None) -> None:
        """Record what training left active: ``None`` while an adapter is being trained, else its round."""
        self._active[spec] = key
