"""The GAL loop (paper Algorithm 1) over persisted round state, so a killed run resumes where it stopped.

A round moves ``training -> generating -> judging -> evaluating -> review -> done``. ``advance`` runs
the step of the round's state (``gal.steps.STEPS``), records what it did and the next state in one
transaction, and goes on until a round awaits a person or the run is finished; ``commit`` (steps 5-6,
``gal.selection``) selects, weighs and starts the next round.

The rooms: ``gal.loaded`` (models loaded once, the active adapter), ``gal.runfolder`` (a run's files),
``gal.steps`` (train / generate / judge / evaluate), ``gal.review`` (verdicts), ``gal.selection``
(select + commit), ``gal.jobs`` (progress, cancel), ``gal.export``. :class:`Studio` is the small facade
the UI and the CLI use.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import torch

import storage
from gal import review, selection, tblog
from gal.advice import compare_anchor, dilution
from gal.config import RunConfig, load_presets
from gal.distributed import Processes
from gal.faults import checkpoint
from gal.jobs import Jobs, Progress
from gal.loaded import LoadedModels
from gal.models import default_model, default_oracle, pick_device, resolve_model_path
from gal.presets import Presets
from gal.references import ReferenceInput, is_mask, load_mask, mask_file, pair_masks
from gal.runfolder import RunFolder, check_run_id, load_image, new_run_id
from gal.steps import STEPS, Round, read_losses
from gal.training import Cancelled


def check_model_spec(spec: str) -> None:
    """Fail fast, naming the fix, when a generator spec cannot be loaded (``tiny`` is built in)."""
    if spec != "tiny":
        resolve_model_path(spec)


def _timings(rnd: dict, stage: str, seconds: float) -> dict:
    timings = dict(rnd.get("timings") or {})
    timings[stage] = round(timings.get(stage, 0.0) + seconds, 4)
    return timings


class Studio:
    """Models loaded once; every method opens its own DB connection (handlers run in many threads)."""

    def __init__(
        self,
        runs_root: str | Path = "runs",
        *,
        model: str | None = None,
        oracle: str | None = None,
        device: str | None = None,
        precision: str = "auto",
    ):
        self.runs_root = Path(runs_root).resolve()
        self.db_path = self.runs_root / "gal.db"
        self.default_model = model or default_model()
        self.default_oracle = oracle or default_oracle()
        # Several processes (`accelerate launch -m gal run …`) split each round; one is the usual case.
        self.processes = Processes(torch.device(device) if device else None)
        self.models = LoadedModels(str(self.processes.device(pick_device(device))), precision)
        self.jobs = Jobs()
        self._job_lock = threading.Lock()  # one model job at a time (one GPU)
        storage.open_db(self.db_path).close()  # create + migrate once, fail early on a bad folder

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def device(self):
        return self.models.device

    def db(self):
        return storage.open_db(self.db_path)

    def folder(self, run_id: str) -> RunFolder:
        return RunFolder(self.runs_root, run_id)

    def run_dir(self, run_id: str) -> Path:
        return self.folder(run_id).root

    def pipeline(self, spec: str):
        return self.models.pipeline(spec)

    def oracle(self, spec: str):
        return self.models.oracle(spec)

    def cancel(self, run_id: str) -> None:
        """Ask a running job to stop at its next step; work already saved is kept."""
        self.jobs.cancel(run_id)

    # -- 0. a new run --------------------------------------------------------------------------
    def create_run(self, config: RunConfig, references: list[ReferenceInput]) -> str:
        config.model = config.model or self.default_model
        config.oracle = config.oracle or self.default_oracle
        if not config.anchors:
            config.anchors = list(load_presets()[config.task])
        if not config.eval.prompts:
            config.eval.prompts = list(load_presets()["eval"][config.task])
        config.validate()
        if not self.models.has(config.model):  # a registered in-memory model has nothing to look up
            check_model_spec(
                config.model
            )  # a model that cannot be found fails here, before any row or folder
        if not references:
            raise ValueError("no reference images: add at least one image of the subject or style")
        loaded = []
        for i, ref in enumerate(references, 1):
            prompt = " ".join(ref.prompt.split())
            if not prompt:
                raise ValueError(
                    f"reference {i} has no prompt: describe it, e.g. 'a {config.soi_token} cat on the stairs'"
                )
            if config.task == "object" and config.soi_token not in prompt:
                raise ValueError(
                    f"reference {i}'s prompt {prompt!r} lacks the SoI token {config.soi_token!r}: write it in"
                )
            non_soi = ref.non_soi_text
            if non_soi is None or not non_soi.strip():
                non_soi = config.oracle_text(prompt)
            image, data = load_image(ref.path)
            mask = load_mask(ref.path, ref.mask)  # its alpha channel or NAME.mask.png, checked here
            loaded.append((image, data, prompt, " ".join(non_soi.split()), mask))

        folder = self.folder(new_run_id(config.name or config.task))
        (folder.root / "references").mkdir(parents=True)
        (folder.root / "config.json").write_text(config.to_json())
        run_id = folder.run_id
        with self.db() as db, storage.transaction(db):
            storage.create_run(
                db,
                run_id=run_id,
                name=config.name or run_id,
                config=config.to_dict(),
                run_dir=str(folder.root),
            )
            for i, (image, data, prompt, non_soi, mask) in enumerate(loaded):
                rel = RunFolder.real_reference_file(i)
                folder.save(image, rel)
                if mask is not None:  # beside its image in the run folder, as the person gave it
                    folder.save(mask, mask_file(rel).as_posix())
                storage.add_reference(
                    db, run_id=run_id, file=rel, sha256=hashlib.sha256(data).hexdigest(), prompt=prompt,
                    non_soi_text=non_soi, weight=1.0, round_added=0, source="real",
                )  # fmt: skip
            selection.start_round(db, run_id, config, 1)
        return run_id

    # -- the loop ------------------------------------------------------------------------------
    def advance(self, run_id: str, progress: Progress | None = None) -> dict:
        """Run rounds until one awaits review (when the run pauses for it) or the run is finished.

        Safe to call again after a crash, a kill or a cancel: it resumes from the persisted state.
        """
        folder = self.folder(run_id)
        main = self.processes.is_main  # only the main process writes SQLite; the others follow its state
        with self.db() as db:
            r = storage.get_run(db, run_id)["current_round"]  # raises RunNotFound with the fix
        with self._job_lock:
            # One process works on a run at a time: a second `gal run --resume` is refused, naming the first.
            owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
            if main:
                with self.db() as db:
                    storage.acquire_lease(db, run_id, owner)
            cancel = self.jobs.start(run_id)
            report = self.jobs.reporter(run_id, progress if main else None)
            if main:
                report = self._heartbeat(run_id, owner, report)
            try:
                while True:
                    # The main process reads the state and hands it to the others (reading it themselves, they
                    # could see it half-way through one of the main process's writes).
                    run, rnd = self.processes.broadcast(self._snapshot(run_id) if main else None)
                    if run["status"] == "finished":
                        return run
                    config = RunConfig.from_dict(run["config"])
                    r = run["current_round"]
                    state = rnd["state"]
                    if state in STEPS:  # 1. train, 2. generate, 3. judge, then evaluate on held-out prompts
                        step, next_state = STEPS[state]
                        done = step(
                            Round(self.models, folder, config, r, self.db, report, cancel, self.processes)
                        )
                        checkpoint(f"{state}.done", r)  # the step's work exists, nothing recorded yet
                        if main:
                            self._record(run_id, r, state, next_state, done)
                    elif state == "review":  # 4. review: a person's turn, or straight on
                        with self.db() as db:
                            waits = not selection.pool_empty(db, run_id, r) and (
                                config.gal.pause_for_review or rnd["mode"] == "human"
                            )
                            if waits:
                                if main:
                                    storage.update_run(db, run_id, status="awaiting_review")
                                return self.processes.broadcast(storage.get_run(db, run_id) if main else None)
                            if main:
                                selection.commit(db, folder)  # 5. select, 6. weigh, and the next round
                                tblog.log_committed_round(db, folder, r)
                        checkpoint("committed", r)
                    else:
                        raise ValueError(
                            f"round {r} of run {run_id} is in state {state!r}, which cannot advance"
                        )
            except Cancelled as err:
                if main:
                    with self.db() as db:
                        storage.update_run(db, run_id, status="cancelled")
                self.jobs.stop(run_id, stage="cancelled", info={"message": str(err)})
                raise
            except Exception as err:
                if main:
                    with self.db() as db:
                        storage.update_run(db, run_id, status="failed")
                        storage.update_round(db, run_id, r, error=f"{type(err).__name__}: {err}")
                raise
            finally:
                self.jobs.stop(run_id)
                if main:
                    with self.db() as db:
                        storage.release_lease(db, run_id, owner)

    def _snapshot(self, run_id: str) -> tuple[dict, dict]:
        """The run and its current round, in one read transaction; an interrupted run is active again."""
        with self.db() as db, storage.transaction(db):
            run = storage.get_run(db, run_id)
            if run["status"] not in ("active", "finished"):
                storage.update_run(db, run_id, status="active")
                run = storage.get_run(db, run_id)
            return run, storage.get_round(db, run_id, run["current_round"])

    def _heartbeat(self, run_id: str, owner: str, report, every: float = 5.0):
        """``report`` that also renews the run's lease every ``every`` seconds of work."""
        last = time.monotonic()

        def beat(*args, **info) -> None:
            nonlocal last
            report(*args, **info)
            if time.monotonic() - last > every:
                with self.db() as db:
                    storage.renew_lease(db, run_id, owner)
                last = time.monotonic()

        return beat

    def _record(self, run_id: str, r: int, state: str, next_state: str, done) -> None:
        """A step's rows, timings, metrics and the round's next state: one transaction."""
        with self.db() as db, storage.transaction(db):
            rnd = storage.get_round(db, run_id, r)
            if rnd["state"] != state:  # another process moved the round on meanwhile
                raise ValueError(f"round {r} of run {run_id} moved from {state} to {rnd['state']} meanwhile")
            if done.write is not None:
                done.write(db)
            checkpoint(f"{state}.recording", r)  # inside the transaction: rows written, not committed
            stage = {
                "training": "train",
                "generating": "generate",
                "judging": "judge",
                "evaluating": "evaluate",
            }
            storage.update_round(
                db, run_id, r, state=next_state, timings=_timings(rnd, stage[state], done.seconds),
                metrics={**(rnd.get("metrics") or {}), **done.metrics}, **done.fields,
            )  # fmt: skip

    # -- 4. review (gal.review) ----------------------------------------------------------------
    def review_state(self, run_id: str, round_index: int | None = None) -> dict:
        with self.db() as db:
            return review.review_state(db, self.folder(run_id), round_index)

    def decide(self, run_id: str, image_id: int, verdict: int | None) -> dict:
        with self.db() as db:
            return review.decide(db, run_id, image_id, verdict)

    def decide_many(self, run_id: str, verdicts: dict[int, int | None], label: str = "") -> int:
        with self.db() as db:
            return review.decide_many(db, run_id, verdicts, label)

    def apply_decisions(self, run_id: str, decisions: dict[int, int | None], *, force: bool = False) -> dict:
        with self.db() as db:
            return review.apply_decisions(db, run_id, decisions, force=force)

    def accept_oracle(self, run_id: str, *, overwrite: bool = False) -> int:
        with self.db() as db:
            return review.accept_oracle(db, run_id, overwrite=overwrite)

    def mark_below(self, run_id: str, threshold: float, verdict: int = 1, *, overwrite: bool = False) -> int:
        with self.db() as db:
            return review.mark_below(db, run_id, threshold, verdict, overwrite=overwrite)

    def undo(self, run_id: str) -> dict | None:
        with self.db() as db:
            return review.undo(db, run_id)

    def redo(self, run_id: str) -> dict | None:
        with self.db() as db:
            return review.redo(db, run_id)

    def review_queue(
        self, run_id: str, round_index: int | None = None, order: str = "disagreement", **filters
    ) -> list[dict]:
        """The round's images, judges' disagreements first, then the least confident (``review.review_order``;
        filters ``disagree_only``, ``max_confidence``, ``unreviewed``)."""
        with self.db() as db:
            return review.review_queue(db, run_id, round_index, order, **filters)

    def judge_agreement(self, run_id: str | None = None) -> list[dict]:
        """Per judge, how often the person agreed with it (this run, or every run): choose a judge by it."""
        with self.db() as db:
            return storage.judge_agreement(db, run_id)

    def round_mode(self, run_id: str, round_index: int | None = None) -> str:
        with self.db() as db:
            r = round_index or storage.get_run(db, run_id)["current_round"]
            return storage.get_round(db, run_id, r)["mode"]

    def set_round_mode(self, run_id: str, mode: str) -> None:
        with self.db() as db:
            review.set_mode(db, run_id, mode)

    # -- 5. select, 6. weigh (gal.selection) ---------------------------------------------------
    def preview_selection(self, run_id: str, mode: str | None = None) -> dict:
        with self.db() as db:
            return selection.preview(db, run_id, mode)

    def commit_round(self, run_id: str, mode: str | None = None) -> dict:
        """Select and weigh from the current review, then start the next round (or finish the run).

        Touches only this run's rows and files (no model), so it never waits for another run's training;
        it is one write transaction, so a second commit of the round (a double click, another process)
        is refused instead of adding picks twice.
        """
        with self.db() as db:
            done = selection.commit(db, self.folder(run_id), mode)
            tblog.log_committed_round(db, self.folder(run_id), done["round"])
            return storage.get_run(db, run_id)

    # -- reading --------------------------------------------------------------------------------
    def history(self, run_id: str) -> dict:
        with self.db() as db:
            return {
                "rounds": storage.list_rounds(db, run_id),
                "references": storage.list_references(db, run_id),
            }

    def list_runs(self) -> list[dict]:
        with self.db() as db:
            return storage.list_runs(db)

    # -- what the UI reads (ui/ talks to the Studio only, never to storage) ----------------------
    def snapshot(self, run_id: str) -> tuple[dict, dict | None]:
        """The run and its current round (None before round 1), read only (``_snapshot`` also marks an
        interrupted run active: that is the engine's, before it advances)."""
        with self.db() as db:
            run = storage.get_run(db, run_id)
            rnd = storage.get_round(db, run_id, run["current_round"]) if run["current_round"] else None
        return run, rnd

    def revision(self, run_id: str, round_index: int) -> int:
        """The round's latest decision id: a larger number means the verdicts changed since."""
        with self.db() as db:
            return storage.review_revision(db, run_id, round_index)

    def selections(self, run_id: str, round_index: int | None = None) -> list[dict]:
        with self.db() as db:
            return storage.list_selections(db, run_id, round_index)

    def loss_curves(self, run_id: str) -> dict[int, list[float]]:
        """Every trained round's loss per step (``rounds/rNN/train_losses.json``), by round index: the
        Progress tab draws the running round over the earlier ones."""
        check_run_id(run_id)
        folder = self.folder(run_id)
        with self.db() as db:
            rounds = [r["round_index"] for r in storage.list_rounds(db, run_id)]
        curves = {r: read_losses(folder.path(RunFolder.losses_file(r))) for r in rounds}
        return {r: c for r, c in curves.items() if c}

    def job(self, run_id: str) -> dict | None:
        """The run's live job (stage, done/total, ETA, losses, log), or its last one after it ended."""
        return self.jobs.live.get(run_id)

    def keep_open(self):
        """An idle connection to hold for an app's life: SQLite checkpoints the WAL (an fsync) whenever the
        *last* connection closes, and every call here opens and closes its own, so holding one open halves
        a click's write time (27 -> 13 ms measured). Never run a statement on it."""
        return storage.open_db(self.db_path)

    @property
    def presets(self) -> Presets:
        """Named set-ups under ``<runs>/presets``."""
        return Presets(self.runs_root / "presets")

    @staticmethod
    def model_defaults(spec: str) -> tuple[str, object | None]:
        """The model family's label and its defaults (resolution, learning_rate, rank, steps,
        guidance_scale, scheduler) for a full-size model; None for the built-in tiny and toy models,
        which keep the settings they were made for. ValueError for a spec that is no model."""
        from gal.families import TINY, defaults
        from gal.models import model_family

        family = model_family(spec)
        return family.label, (None if spec in TINY or spec == "toy" else defaults(family.name))

    def judges(self) -> list[str]:
        """Judge specs the app offers for the oracle (issue 27): this Studio's oracle, then each judge kind
        (built-in with its default argument, then installed ``gal.judges`` plug-ins); any other spec is
        still typed."""
        from gal.judges import available

        offered = [self.default_oracle]
        for kind in available():
            spec = "ensemble:clip+dino" if kind == "ensemble" else ("" if kind == "clip" else kind)
            if spec and spec not in offered:
                offered.append(spec)
        return offered

    @staticmethod
    def model_recipe(spec: str) -> str:
        """The model family's 24 GB recipe in words (``Family.preset_24gb``: applied on CUDA to the memory
        options left unset). ValueError for a spec that is no model."""
        from gal.families.base import describe_preset
        from gal.models import model_family

        return describe_preset(model_family(spec).preset_24gb)

    @staticmethod
    def export_formats() -> tuple[str, ...]:
        """The formats Export writes when none are chosen."""
        from gal.export import DEFAULT_FORMATS

        return tuple(DEFAULT_FORMATS)

    def demo(self, task: str = "object") -> tuple[RunConfig, list[ReferenceInput]]:
        """The toy-world scenario's config and references (with this Studio's model and oracle)."""
        from gal.demo import demo_scenario

        config, refs = demo_scenario(self.runs_root / "_demo", task, self.default_model)
        config.oracle = self.default_oracle
        return config, refs

    # -- export ---------------------------------------------------------------------------------
    def export(
        self, run_id: str, out_dir: str | Path, formats: tuple[str, ...] | None = None, force: bool = False
    ) -> dict:
        from gal.export import ExportSource, export_run

        check_run_id(run_id)
        with self._job_lock:  # the fused export uses the shared pipeline
            source = ExportSource(self.db, self.runs_root, self.models)
            return export_run(source, run_id, Path(out_dir), formats, force=force)


# What the UI uses besides the Studio: the verdict words, the cancelled-job signal, the advice (gal.advice).
parse_verdict = review.parse_verdict
__all__ = [
    "Cancelled",
    "ReferenceInput",
    "Studio",
    "compare_anchor",
    "dilution",
    "is_mask",
    "pair_masks",
    "parse_verdict",
]
