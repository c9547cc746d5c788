"""A round as the steps see it (:class:`Round`: the models, the run's folder and config, where to report)
and what a step returns (:class:`StepResult`), for ``gal.steps`` and the helpers it calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import storage
from gal.config import RunConfig
from gal.distributed import Processes
from gal.loaded import LoadedModels
from gal.models import native_resolution, set_scheduler
from gal.runfolder import RunFolder


@dataclass
class Round:
    """What a step needs: the models, the run's folder and config, the round, and where to report."""

    models: LoadedModels
    folder: RunFolder
    config: RunConfig
    index: int
    db: Callable[[], object]  # opens a connection (one per call: steps run in worker threads)
    report: Callable[..., None]  # report(stage, done, total, **info)
    cancel: Callable[[], bool]
    processes: Processes  # one, or several splitting the round's work (only the main one writes SQLite)

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    @property
    def adapter_key(self) -> tuple[str, int]:
        return (self.run_id, self.index)

    def pipeline(self):
        """The generator with this round's adapter active (loaded from disk after a restart) and the run's
        sampler (the pipeline is shared by every run of this model)."""
        with self.db() as db:
            adapter = storage.get_round(db, self.run_id, self.index)["adapter_path"]
        pipe = self.models.with_adapter(self.config.model, self.adapter_key, self.folder.path(adapter))
        set_scheduler(pipe, self.config.generate.scheduler)
        return pipe

    def resolution(self, pipe) -> int:
        return self.config.train.resolution or native_resolution(pipe)


@dataclass
class StepResult:
    seconds: float
    metrics: dict = field(default_factory=dict)  # merged into rounds.metrics
    fields: dict = field(default_factory=dict)  # other round columns (adapter_path)
    write: Callable[[object], None] | None = None  # stores the step's rows, with the state change
