"""The GAL loop (paper Algorithm 1) over persisted round state, so a killed run resumes where it stopped.

A round moves through ``training -> generating -> judging -> evaluating -> review -> done``; each state
is written to SQLite before the work of the next begins, and the work of each state is idempotent
(generation skips images already on disk and in the DB). ``commit_round`` is step 5-6 of the loop
(select, weigh) and starts the next round in the same transaction.

:class:`Studio` holds the models, loaded once per process; ``ui/`` and the CLI are faces over it.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

import storage
from gal import algorithm
from gal.config import RunConfig, load_presets
from gal.evaluation import round_metrics
from gal.generation import generate, image_seed
from gal.models import (
    default_model,
    default_oracle,
    load_pipeline,
    native_resolution,
    pick_device,
    pick_dtype,
)
from gal.oracle import ClipOracle, Oracle
from gal.training import (
    Cancelled,
    TrainExample,
    adapter_state,
    load_adapter,
    remove_adapter,
    save_adapter,
    train_lora,
)

MAX_IMAGE_PIXELS = 40_000_000  # a reference larger than this is refused (decompression bombs)
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
Progress = Callable[[str, int, int, dict], None]  # (stage, done, total, info)


@dataclass
class ReferenceInput:
    """A real reference image with its prompt and the non-subject caption the model must not learn."""

    path: str | Path
    prompt: str
    non_soi_text: str | None = None  # object: prompt without the token; style: the prompt itself


def load_image(path: str | Path) -> tuple[Image.Image, bytes]:
    """Open an image file safely: refuse non-images, corrupt files and decompression bombs."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference {path} does not exist or is not a file")
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ValueError(
                        f"{path.name} is {w}×{h} ({w * h / 1e6:.0f} MP), over the {MAX_IMAGE_PIXELS / 1e6:.0f} MP "
                        "limit: downscale it first"
                    )
                probe.verify()
            image = Image.open(io.BytesIO(data))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError(f"{path.name} is too large to decode safely ({err}): downscale it first") from err
        except ValueError:
            raise
        except Exception as err:  # PIL raises several types for broken files
            raise ValueError(f"{path.name} is not a readable image ({type(err).__name__}): use a PNG, JPEG or WebP") from err
    return image.convert("RGB"), data


def safe_join(root: Path, relative: str) -> Path:
    """Resolve ``relative`` under ``root``, refusing names that try to leave it."""
    root = root.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"path {relative!r} leaves the run folder {root}: refusing it")
    return target


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}: letters, digits, '.', '_' and '-' only")
    return run_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, precision)
        self._pipes: dict[str, object] = {}
        self._oracles: dict[str, Oracle] = {}
        self._loaded_adapter: dict[str, tuple[str, int] | None] = {}
        self._job_lock = threading.Lock()  # one model job at a time (one GPU)
        self._commit_lock = threading.Lock()  # a double-click commits once; never waits on training
        self._cancel: dict[str, threading.Event] = {}
        self.jobs: dict[str, dict] = {}  # run_id -> live progress for pollers
        storage.open_db(self.db_path).close()  # create + migrate once, fail early on a bad folder

    # -- plumbing ----------------------------------------------------------------------------------
    def db(self):
        return storage.open_db(self.db_path)

    def run_dir(self, run_id: str) -> Path:
        return self.runs_root / check_run_id(run_id)

    def pipeline(self, spec: str):
        if spec not in self._pipes:
            self._pipes[spec] = load_pipeline(spec, self.device, self.dtype)
            self._loaded_adapter[spec] = None
        return self._pipes[spec]

    def oracle(self, spec: str) -> Oracle:
        if spec not in self._oracles:
            self._oracles[spec] = ClipOracle.from_spec(spec, self.device)
        return self._oracles[spec]

    def cancel(self, run_id: str) -> None:
        """Ask a running job to stop at its next step; work already saved is kept."""
        self._cancel.setdefault(run_id, threading.Event()).set()

    def _report(self, run_id: str, progress: Progress | None, stage: str, done: int, total: int, **info) -> None:
        job = self.jobs.setdefault(run_id, {})
        if job.get("stage") != stage:
            job.update(stage=stage, started=time.time())
        elapsed = time.time() - job["started"]
        eta = elapsed / done * (total - done) if done else None
        job.update(done=done, total=total, eta=eta, info=info, updated=time.time())
        if progress is not None:
            progress(stage, done, total, info)

    # -- 0. a new run --------------------------------------------------------------------------------
    def create_run(self, config: RunConfig, references: list[ReferenceInput]) -> str:
        config.model = config.model or self.default_model
        config.oracle = config.oracle or self.default_oracle
        if not config.anchors:
            config.anchors = list(load_presets()[config.task])
        if not config.eval.prompts:
            config.eval.prompts = list(load_presets()["eval"][config.task])
        config.validate()
        if not references:
            raise ValueError("no reference images: add at least one image of the subject or style")
        loaded = []
        for i, ref in enumerate(references, 1):
            prompt = " ".join(ref.prompt.split())
            if not prompt:
                raise ValueError(f"reference {i} has no prompt: describe it, e.g. 'a {config.soi_token} cat on the stairs'")
            if config.task == "object" and config.soi_token not in prompt:
                raise ValueError(
                    f"reference {i}'s prompt {prompt!r} lacks the SoI token {config.soi_token!r}: write it in"
                )
            non_soi = ref.non_soi_text
            if non_soi is None or not non_soi.strip():
                non_soi = config.oracle_text(prompt)
            image, data = load_image(ref.path)
            loaded.append((image, data, prompt, " ".join(non_soi.split())))

        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        slug = re.sub(r"[^A-Za-z0-9]+", "-", config.name or config.task).strip("-")[:32] or "run"
        run_id = f"{slug}-{stamp}-{secrets.token_hex(2)}"
        run_dir = self.run_dir(run_id)
        (run_dir / "references").mkdir(parents=True)
        (run_dir / "config.json").write_text(config.to_json())
        with self.db() as db, storage.transaction(db):
            storage.create_run(db, run_id=run_id, name=config.name or run_id, config=config.to_dict(), run_dir=str(run_dir))
            for i, (image, data, prompt, non_soi) in enumerate(loaded):
                rel = f"references/real_{i:02d}.png"
                image.save(run_dir / rel)
                storage.add_reference(
                    db, run_id=run_id, file=rel, sha256=hashlib.sha256(data).hexdigest(), prompt=prompt,
                    non_soi_text=non_soi, weight=1.0, round_added=0, source="real",
                )
            self._start_round(db, run_id, config, 1)
        return run_id

    def _start_round(self, db, run_id: str, config: RunConfig, round_index: int) -> None:
        mode = "human" if config.gal.strategy.startswith("human") else "auto"
        storage.start_round(db, run_id=run_id, round_index=round_index, mode=mode)
        in_pool = self._pool(db, run_id, config, round_index)
        storage.upsert_anchors(
            db, run_id, round_index,
            [
                {"anchor_index": i, "prompt": p, "oracle_text": t, "in_pool": bool(in_pool[i])}
                for i, (p, t) in enumerate(zip(config.anchor_prompts(), config.anchor_oracle_texts()))
            ],
        )
        storage.update_run(db, run_id, current_round=round_index, status="active")

    def _pool(self, db, run_id: str, config: RunConfig, round_index: int) -> np.ndarray:
        in_pool = np.ones(len(config.anchors), dtype=bool)
        if config.gal.remove_selected:
            for sel in storage.list_selections(db, run_id):
                if sel["round_index"] < round_index:
                    in_pool[sel["anchor_index"]] = False
        return in_pool

    # -- the loop ------------------------------------------------------------------------------------
    def advance(self, run_id: str, progress: Progress | None = None) -> dict:
        """Run rounds until one awaits review (when the run pauses for it) or the run is finished.

        Safe to call again after a crash, a kill or a cancel: it resumes from the persisted state.
        """
        check_run_id(run_id)
        with self.db() as db:
            r = storage.get_run(db, run_id)["current_round"]  # raises RunNotFound with the fix
        cancel_event = self._cancel.setdefault(run_id, threading.Event())
        cancel_event.clear()
        cancel = cancel_event.is_set
        with self._job_lock:
            self.jobs.setdefault(run_id, {}).update(running=True, updated=time.time())
            try:
                while True:
                    with self.db() as db:
                        run = storage.get_run(db, run_id)
                        config = RunConfig.from_dict(run["config"])
                        if run["status"] == "finished":
                            return run
                        r = run["current_round"]
                        state = storage.get_round(db, run_id, r)["state"]
                        if run["status"] != "active":
                            storage.update_run(db, run_id, status="active")
                    if state == "training":  # 1. train
                        self._train(run_id, config, r, progress, cancel)
                    elif state == "generating":  # 2. generate
                        self._generate(run_id, config, r, progress, cancel)
                    elif state == "judging":  # 3. judge
                        self._judge(run_id, config, r, progress)
                    elif state == "evaluating":
                        self._evaluate(run_id, config, r, progress, cancel)
                    elif state == "review":  # 4. review (a person, or straight on)
                        mode = self.round_mode(run_id)
                        if (config.gal.pause_for_review or mode == "human") and not self._exhausted(run_id, r):
                            with self.db() as db:
                                storage.update_run(db, run_id, status="awaiting_review")
                                return storage.get_run(db, run_id)
                        with self._commit_lock:
                            self._commit(run_id, config, r, mode)  # 5. select, 6. weigh
                    else:
                        raise ValueError(f"round {r} of run {run_id} is in state {state!r}, which cannot advance")
            except Cancelled as err:
                with self.db() as db:
                    storage.update_run(db, run_id, status="cancelled")
                self.jobs.setdefault(run_id, {}).update(stage="cancelled", info={"message": str(err)})
                raise
            except Exception as err:
                with self.db() as db:
                    storage.update_run(db, run_id, status="failed")
                    storage.update_round(db, run_id, r, error=f"{type(err).__name__}: {err}")
                raise
            finally:
                self.jobs.setdefault(run_id, {}).update(updated=time.time(), running=False)

    def _activate(self, run_id: str, config: RunConfig, round_index: int):
        """The pipeline with this round's adapter active (loaded from disk after a restart)."""
        pipe = self.pipeline(config.model)
        if self._loaded_adapter.get(config.model) != (run_id, round_index):
            with self.db() as db:
                adapter = storage.get_round(db, run_id, round_index)["adapter_path"]
            load_adapter(pipe, safe_join(self.run_dir(run_id), adapter))
            self._loaded_adapter[config.model] = (run_id, round_index)
        return pipe

    def _resolution(self, config: RunConfig, pipe) -> int:
        return config.train.resolution or native_resolution(pipe)

    def _train(self, run_id, config: RunConfig, r: int, progress, cancel) -> None:
        run_dir = self.run_dir(run_id)
        pipe = self.pipeline(config.model)
        with self.db() as db:
            refs = storage.list_references(db, run_id, up_to_round=r - 1)
        examples = [TrainExample(Image.open(safe_join(run_dir, x["file"])).convert("RGB"), x["prompt"], x["weight"],
                                 added=x["source"] == "synthetic") for x in refs]
        init_state = None
        if not config.train.retrain_from_base and r > 1:
            init_state = adapter_state(self._activate(run_id, config, r - 1))
        class_examples = self._class_examples(run_id, config, progress, cancel) if config.train.prior_preservation else None
        self._loaded_adapter[config.model] = None
        result = train_lora(
            pipe, examples, config.train,
            resolution=self._resolution(config, pipe),
            seed=config.seed * 1_000 + r,
            init_state=init_state,
            class_examples=class_examples,
            progress=lambda s, n, loss: self._report(run_id, progress, "train", s, n, loss=loss, round=r),
            cancel=cancel,
        )
        rel = f"rounds/r{r:02d}/adapter"
        save_adapter(pipe, run_dir / rel, config.train, {"gal.run_id": run_id, "gal.round": str(r)})
        self._loaded_adapter[config.model] = (run_id, r)
        with self.db() as db:
            self._add_timing(db, run_id, r, "train", result.seconds)
            storage.update_round(db, run_id, r, adapter_path=rel, state="generating",
                                 metrics={**self._metrics(db, run_id, r), "train_loss": float(np.mean(result.losses[-20:]))})

    def _class_examples(self, run_id, config: RunConfig, progress, cancel) -> list[TrainExample]:
        """DreamBooth's prior images: drawn once per run by the base model, kept in class_images/."""
        folder = self.run_dir(run_id) / "class_images"
        folder.mkdir(exist_ok=True)
        n = config.train.num_class_images
        existing = sorted(folder.glob("*.png"))
        if len(existing) < n:
            pipe = self.pipeline(config.model)
            remove_adapter(pipe)
            self._loaded_adapter[config.model] = None
            todo = list(range(len(existing), n))
            generate(
                pipe, [config.train.class_prompt] * len(todo), [config.seed * 7_919 + i for i in todo], config.generate,
                resolution=self._resolution(config, pipe),
                progress=lambda d, t: self._report(run_id, progress, "class images", d, t),
                cancel=cancel,
                on_batch=lambda start, ims: [im.save(folder / f"{todo[start + j]:04d}.png") for j, im in enumerate(ims)],
            )
        return [TrainExample(Image.open(p).convert("RGB"), config.train.class_prompt, config.train.prior_loss_weight)
                for p in sorted(folder.glob("*.png"))[:n]]

    def _generate(self, run_id, config: RunConfig, r: int, progress, cancel) -> None:
        run_dir = self.run_dir(run_id)
        started = time.perf_counter()
        with self.db() as db:
            anchors = [a for a in storage.list_anchors(db, run_id, r) if a["in_pool"]]
            have = {(im["anchor_index"], im["slot"]) for im in storage.list_images(db, run_id, r)
                    if (run_dir / im["file"]).exists()}
        todo = [(a, j) for a in anchors for j in range(config.gal.m) if (a["anchor_index"], j) not in have]
        if todo:
            pipe = self._activate(run_id, config, r)
            (run_dir / f"rounds/r{r:02d}/images").mkdir(parents=True, exist_ok=True)

            def save(start: int, images: list[Image.Image]) -> None:
                rows = []
                for (a, j), image in zip(todo[start : start + len(images)], images):
                    rel = f"rounds/r{r:02d}/images/a{a['anchor_index']:02d}_s{j:02d}.png"
                    image.save(run_dir / rel)
                    rows.append({"run_id": run_id, "round_index": r, "anchor_index": a["anchor_index"], "slot": j,
                                 "file": rel, "seed": image_seed(config.seed, a["anchor_index"], j),
                                 "prompt": a["prompt"], "kind": "anchor"})
                with self.db() as db:
                    storage.add_images(db, rows)

            generate(
                pipe, [a["prompt"] for a, _ in todo], [image_seed(config.seed, a["anchor_index"], j) for a, j in todo],
                config.generate, resolution=self._resolution(config, pipe),
                progress=lambda d, t: self._report(run_id, progress, "generate", d, t, round=r),
                cancel=cancel, on_batch=save,
            )
        with self.db() as db:
            self._add_timing(db, run_id, r, "generate", time.perf_counter() - started)
            storage.update_round(db, run_id, r, state="judging")

    def _non_soi_texts(self, db, run_id: str) -> list[str]:
        return list(dict.fromkeys(x["non_soi_text"] for x in storage.list_references(db, run_id) if x["source"] == "real"))

    def _judge(self, run_id, config: RunConfig, r: int, progress) -> None:
        """Eq. 8 on every image: sim(image, anchor text) vs the max over the non-SoI captions."""
        started = time.perf_counter()
        run_dir = self.run_dir(run_id)
        oracle = self.oracle(config.oracle)
        with self.db() as db:
            images = storage.list_images(db, run_id, r)
            texts = {a["anchor_index"]: a["oracle_text"] for a in storage.list_anchors(db, run_id, r)}
            non_soi = self._non_soi_texts(db, run_id)
        self._report(run_id, progress, "judge", 0, len(images), round=r)
        if not images:  # every anchor has left the pool: nothing was drawn, nothing to judge
            with self.db() as db:
                self._add_timing(db, run_id, r, "judge", time.perf_counter() - started)
                storage.update_round(db, run_id, r, state="evaluating")
            return
        pil = [Image.open(safe_join(run_dir, im["file"])).convert("RGB") for im in images]
        anchor_texts = list(dict.fromkeys(texts.values()))
        sims = oracle.text_similarities(pil, anchor_texts + non_soi)  # [n, |texts| + c]
        col = np.array([anchor_texts.index(texts[im["anchor_index"]]) for im in images])
        sim_anchor = sims[np.arange(len(images)), col]  # [n]
        sim_non_soi = sims[:, len(anchor_texts):].max(axis=1)  # [n]
        verdicts = algorithm.overfit_verdicts(sim_anchor, sim_non_soi)
        rows = [{"id": im["id"], "sim_anchor": float(a), "sim_non_soi": float(b), "oracle_verdict": int(v)}
                for im, a, b, v in zip(images, sim_anchor, sim_non_soi, verdicts)]
        with self.db() as db, storage.transaction(db):
            storage.set_similarities(db, rows)
            self._store_anchor_scores(db, run_id, r)
            self._add_timing(db, run_id, r, "judge", time.perf_counter() - started)
            storage.update_round(db, run_id, r, state="evaluating")
        self._report(run_id, progress, "judge", len(images), len(images), round=r)

    def _evaluate(self, run_id, config: RunConfig, r: int, progress, cancel) -> None:
        """TXT-ALN, IMG-ALN and OVF on held-out prompts with this round's model."""
        started = time.perf_counter()
        run_dir = self.run_dir(run_id)
        if config.eval.enabled and config.eval.prompts:
            pipe = self._activate(run_id, config, r)
            per = config.eval.images_per_prompt
            prompts = [p for p in config.eval_prompts() for _ in range(per)]
            prompt_texts = [t for t in config.eval_oracle_texts() for _ in range(per)]
            seeds = [image_seed(config.seed + 7, i // per, i % per) for i in range(len(prompts))]
            images = generate(pipe, prompts, seeds, config.generate, resolution=self._resolution(config, pipe),
                              progress=lambda d, t: self._report(run_id, progress, "evaluate", d, t, round=r),
                              cancel=cancel)
            folder = run_dir / f"rounds/r{r:02d}/eval"
            folder.mkdir(parents=True, exist_ok=True)
            rows = []
            for i, (prompt, seed, image) in enumerate(zip(prompts, seeds, images)):
                rel = f"rounds/r{r:02d}/eval/e{i:03d}.png"
                image.save(run_dir / rel)
                rows.append({"run_id": run_id, "round_index": r, "anchor_index": -1, "slot": i, "file": rel,
                             "seed": seed, "prompt": prompt, "kind": "eval"})
            oracle = self.oracle(config.oracle)
            with self.db() as db:
                non_soi = self._non_soi_texts(db, run_id)
                real = [Image.open(safe_join(run_dir, x["file"])).convert("RGB")
                        for x in storage.list_references(db, run_id) if x["source"] == "real"]
            texts = list(dict.fromkeys(prompt_texts))
            sims = oracle.text_similarities(images, texts + non_soi)
            sim_prompt = sims[np.arange(len(images)), [texts.index(t) for t in prompt_texts]]
            metrics = round_metrics(sim_prompt, sims[:, len(texts):], oracle.image_similarities(images, real))
            with self.db() as db, storage.transaction(db):
                storage.add_images(db, rows)
                storage.update_round(db, run_id, r, metrics={**self._metrics(db, run_id, r), **metrics})
        with self.db() as db:
            self._add_timing(db, run_id, r, "evaluate", time.perf_counter() - started)
            storage.update_round(db, run_id, r, state="review")

    # -- 4. review ------------------------------------------------------------------------------
    @staticmethod
    def _verdict_arrays(db, run_id: str, r: int, n_anchors: int):
        """Oracle, person and similarity matrices ``[A, m]`` (-1 / -inf where an anchor drew nothing)."""
        images = storage.list_images(db, run_id, r)
        m = max((im["slot"] for im in images), default=-1) + 1
        oracle = np.full((n_anchors, m), -1, dtype=np.int64)
        person = np.full((n_anchors, m), -1, dtype=np.int64)
        sim = np.full((n_anchors, m), -np.inf)
        ids = np.full((n_anchors, m), -1, dtype=np.int64)
        for im in images:
            a, j = im["anchor_index"], im["slot"]
            if im["oracle_verdict"] is None:
                continue
            oracle[a, j] = im["oracle_verdict"]
            person[a, j] = -1 if im["person_verdict"] is None else im["person_verdict"]
            sim[a, j] = im["sim_anchor"]
            ids[a, j] = im["id"]
        return oracle, person, sim, ids

    def _store_anchor_scores(self, db, run_id: str, r: int, selected: set[int] = frozenset()) -> None:
        anchors = storage.list_anchors(db, run_id, r)
        oracle, person, _, _ = self._verdict_arrays(db, run_id, r, len(anchors))
        final = algorithm.final_verdicts(oracle, person)
        rows = []
        for a in anchors:
            i = a["anchor_index"]
            row = {"anchor_index": i, "selected": i in selected}
            if a["in_pool"] and (final[i] >= 0).all():
                beta = float(algorithm.overfit_rate(final[i : i + 1])[0])
                row.update(overfit_rate=beta, uncertainty=float(algorithm.direction_uncertainty(np.array([beta]))[0]))
            rows.append(row)
        storage.upsert_anchors(db, run_id, r, rows)

    def round_mode(self, run_id: str, round_index: int | None = None) -> str:
        with self.db() as db:
            r = round_index or storage.get_run(db, run_id)["current_round"]
            return storage.get_round(db, run_id, r)["mode"]

    def set_round_mode(self, run_id: str, mode: str) -> None:
        """Toggle the current round between ``auto`` (oracle + overrides) and ``human`` (accepted images)."""
        if mode not in ("auto", "human"):
            raise ValueError(f"mode must be 'auto' or 'human', got {mode!r}")
        with self.db() as db:
            r = storage.get_run(db, run_id)["current_round"]
            storage.update_round(db, run_id, r, mode=mode)

    def _review_round(self, db, run_id: str) -> int:
        run = storage.get_run(db, run_id)
        r = run["current_round"]
        state = storage.get_round(db, run_id, r)["state"]
        if state != "review":
            raise ValueError(f"round {r} of run {run_id} is {state}, not in review: wait for it to finish generating")
        return r

    def decide(self, run_id: str, image_id: int, verdict: int | None) -> dict:
        """A person's verdict on one image (1 overfit/reject, 0 aligned/accept, None back to the oracle)."""
        with self.db() as db:
            r = self._review_round(db, run_id)
            image = storage.get_image(db, image_id)
            if image is None or (image["run_id"], image["round_index"], image["kind"]) != (run_id, r, "anchor"):
                raise ValueError(f"image {image_id} is not an image of run {run_id}'s round {r} under review")
            with storage.transaction(db):  # the verdict and the anchor's β/Ω land together: one commit
                storage.record_decision(db, image_id=image_id, verdict=verdict, source="person")
                self._store_anchor_scores(db, run_id, r)
        return {"image_id": image_id, "verdict": verdict}

    def decide_many(self, run_id: str, verdicts: dict[int, int | None]) -> int:
        """Several verdicts in one transaction (`gal decide`, bulk actions)."""
        with self.db() as db:
            r = self._review_round(db, run_id)
            valid = {im["id"] for im in storage.list_images(db, run_id, r)}
            bad = [i for i in verdicts if i not in valid]
            if bad:
                raise ValueError(f"images {bad[:5]} are not in run {run_id}'s round {r}: check the image ids")
            with storage.transaction(db):
                for image_id, verdict in verdicts.items():
                    storage.record_decision(db, image_id=int(image_id), verdict=verdict, source="person")
                self._store_anchor_scores(db, run_id, r)
        return len(verdicts)

    def accept_oracle(self, run_id: str) -> int:
        """Bulk: the person agrees with the oracle on every image they have not judged yet."""
        with self.db() as db:
            r = self._review_round(db, run_id)
            todo = {im["id"]: im["oracle_verdict"] for im in storage.list_images(db, run_id, r) if im["person_verdict"] is None}
        return self.decide_many(run_id, todo) if todo else 0

    def mark_below(self, run_id: str, threshold: float, verdict: int = 1) -> int:
        """Bulk: give ``verdict`` to every image whose sim(image, anchor) is below ``threshold``."""
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be a number, got {threshold!r}")
        with self.db() as db:
            r = self._review_round(db, run_id)
            todo = {im["id"]: verdict for im in storage.list_images(db, run_id, r) if im["sim_anchor"] < threshold}
        return self.decide_many(run_id, todo) if todo else 0

    def undo(self, run_id: str) -> dict | None:
        with self.db() as db:
            r = self._review_round(db, run_id)
            row = storage.undo_last_decision(db, run_id, r)
            self._store_anchor_scores(db, run_id, r)
        return row

    def review_state(self, run_id: str, round_index: int | None = None) -> dict:
        """Everything a review screen shows, computed from SQLite (so every tab sees the same)."""
        run_dir = self.run_dir(run_id)
        with self.db() as db:
            run = storage.get_run(db, run_id)
            config = RunConfig.from_dict(run["config"])
            r = round_index or run["current_round"]
            rnd = storage.get_round(db, run_id, r)
            anchors = storage.list_anchors(db, run_id, r)
            images = storage.list_images(db, run_id, r)
            references = storage.list_references(db, run_id, up_to_round=r - 1)  # what round r trained on
        by_anchor: dict[int, list[dict]] = {}
        for im in images:
            by_anchor.setdefault(im["anchor_index"], []).append({**im, "path": str(safe_join(run_dir, im["file"]))})
        out_anchors, reviewed, overrides, total = [], 0, 0, 0
        for a in anchors:
            ims = by_anchor.get(a["anchor_index"], [])
            total += len(ims)
            reviewed += sum(im["person_verdict"] is not None for im in ims)
            overrides += sum(im["person_verdict"] is not None and im["person_verdict"] != im["oracle_verdict"] for im in ims)
            out_anchors.append({**a, "images": ims})
        mixed = sum(1 for a in anchors if a["in_pool"] and (a.get("uncertainty") or 0) > 0)
        settled = sum(1 for a in anchors if a["in_pool"] and a.get("uncertainty") == 0)
        return {
            "run": run, "config": config, "round": rnd, "anchors": out_anchors,
            "counters": {"reviewed": reviewed, "total": total, "overrides": overrides, "mixed": mixed, "settled": settled,
                         # the person's references and the images earlier rounds added
                         "real_refs": sum(ref["source"] == "real" for ref in references),
                         "added_refs": sum(ref["source"] != "real" for ref in references)},
        }

    # -- 5. select, 6. weigh ----------------------------------------------------------------------
    def _strategy(self, config: RunConfig, mode: str) -> str:
        configured = config.gal.strategy
        if mode == "human":
            return configured if configured.startswith("human") else "human+balance"
        return configured if not configured.startswith("human") else "uncertainty+balance"

    @staticmethod
    def _stops(selection: algorithm.Selection, config: RunConfig, strategy: str) -> bool:
        """Eq. 10 ends auto runs early; in Human mode the person's accepted images are always used."""
        return bool(selection.stop and config.gal.adaptive_stop and not strategy.startswith("human"))

    def _selection(self, db, run_id: str, config: RunConfig, r: int, mode: str) -> tuple[algorithm.Selection, np.ndarray, str]:
        anchors = storage.list_anchors(db, run_id, r)
        oracle, person, sim, ids = self._verdict_arrays(db, run_id, r, len(anchors))
        in_pool = np.array([bool(a["in_pool"]) for a in anchors])
        if (oracle[in_pool] < 0).any():
            raise ValueError(f"round {r} has anchors without judged images: resume the run to finish judging")
        # Anchors out of the pool drew no images: give them neutral rows the pool mask then ignores.
        oracle[~in_pool] = 0
        strategy = self._strategy(config, mode)
        selection = algorithm.select(
            strategy, sim, algorithm.final_verdicts(oracle, person), k=config.gal.k, lam=config.gal.lam,
            in_pool=in_pool, person=person, rng=np.random.default_rng([config.seed, r]),
        )
        return selection, ids, strategy

    def preview_selection(self, run_id: str, mode: str | None = None) -> dict:
        """What committing now would add: anchors, images and their loss weight; and whether GAL would stop."""
        with self.db() as db:
            r = self._review_round(db, run_id)
            config = RunConfig.from_dict(storage.get_run(db, run_id)["config"])
            mode = mode or storage.get_round(db, run_id, r)["mode"]
            if self._pool_empty(db, run_id, r):
                return {"mode": mode, "strategy": self._strategy(config, mode), "round": r, "weight": 0.0,
                        "openness": 0.0, "stop": True, "last_round": True, "exhausted": True, "picks": []}
            try:
                selection, ids, strategy = self._selection(db, run_id, config, r, mode)
            except ValueError as err:
                return {"error": str(err), "picks": [], "mode": mode}
        last = r >= config.gal.max_rounds
        stop = self._stops(selection, config, strategy)
        return {
            "mode": mode, "strategy": strategy, "round": r, "weight": selection.weight, "openness": selection.openness,
            "stop": stop, "last_round": last,
            "picks": [] if last or stop else [
                {"anchor_index": int(a), "slot": int(s), "image_id": int(ids[a, s])}
                for a, s in zip(selection.anchors, selection.slots)
            ],
        }

    def commit_round(self, run_id: str, mode: str | None = None) -> dict:
        """Select and weigh from the current review, then start the next round (or finish the run).

        Touches only this run's rows and files (no model), so it does not wait for another run's training.
        """
        with self._commit_lock:
            with self.db() as db:
                r = self._review_round(db, run_id)
                config = RunConfig.from_dict(storage.get_run(db, run_id)["config"])
                mode = mode or storage.get_round(db, run_id, r)["mode"]
            self._commit(run_id, config, r, mode)
            with self.db() as db:
                return storage.get_run(db, run_id)

    @staticmethod
    def _pool_empty(db, run_id: str, r: int) -> bool:
        """Every anchor has been selected in an earlier round: this round drew nothing and ends the run."""
        return not any(a["in_pool"] for a in storage.list_anchors(db, run_id, r))

    def _exhausted(self, run_id: str, r: int) -> bool:
        with self.db() as db:
            return self._pool_empty(db, run_id, r)

    def _commit(self, run_id: str, config: RunConfig, r: int, mode: str) -> None:
        run_dir = self.run_dir(run_id)
        if self._exhausted(run_id, r):
            with self.db() as db, storage.transaction(db):
                storage.update_round(db, run_id, r, state="done", mode=mode,
                                     metrics={**self._metrics(db, run_id, r), "pool_exhausted": True})
                storage.update_run(db, run_id, status="finished")
            return
        with self.db() as db:
            selection, ids, strategy = self._selection(db, run_id, config, r, mode)
            last = r >= config.gal.max_rounds
            stop = self._stops(selection, config, strategy)
            finish = last or stop
            if not finish and strategy.startswith("human") and selection.anchors.size == 0:
                raise ValueError("no image is accepted: accept at least one image (key a) or switch the round to auto")
            images = {im["id"]: im for im in storage.list_images(db, run_id, r)}
            with storage.transaction(db):
                picked = set()
                if not finish:
                    for a, s in zip(selection.anchors, selection.slots):
                        image = images[int(ids[a, s])]
                        src = safe_join(run_dir, image["file"])
                        rel = f"references/r{r:02d}_a{int(a):02d}_s{int(s):02d}.png"
                        shutil.copyfile(src, run_dir / rel)
                        storage.record_selection(db, run_id=run_id, round_index=r, anchor_index=int(a),
                                                 image_id=image["id"], weight=selection.weight, strategy=strategy)
                        storage.add_reference(
                            db, run_id=run_id, file=rel, sha256=hashlib.sha256(src.read_bytes()).hexdigest(),
                            prompt=image["prompt"], non_soi_text=config.oracle_text(image["prompt"]),
                            weight=selection.weight, round_added=r, source="synthetic", image_id=image["id"],
                        )
                        picked.add(int(a))
                self._store_anchor_scores(db, run_id, r, selected=picked)
                storage.update_round(db, run_id, r, state="done", openness=selection.openness, mode=mode,
                                     metrics={**self._metrics(db, run_id, r), "strategy": strategy,
                                              "weight": selection.weight, "stopped_by_eq10": bool(stop and not last)})
                if finish:
                    storage.update_run(db, run_id, status="finished")
                else:
                    self._start_round(db, run_id, config, r + 1)

    # -- small helpers ---------------------------------------------------------------------------
    @staticmethod
    def _metrics(db, run_id: str, r: int) -> dict:
        return dict(storage.get_round(db, run_id, r).get("metrics") or {})

    @staticmethod
    def _add_timing(db, run_id: str, r: int, stage: str, seconds: float) -> None:
        timings = dict(storage.get_round(db, run_id, r).get("timings") or {})
        timings[stage] = round(timings.get(stage, 0.0) + seconds, 4)
        storage.update_round(db, run_id, r, timings=timings)

    def history(self, run_id: str) -> dict:
        with self.db() as db:
            rounds = storage.list_rounds(db, run_id)
            refs = storage.list_references(db, run_id)
        return {"rounds": rounds, "references": refs}

    def list_runs(self) -> list[dict]:
        with self.db() as db:
            return storage.list_runs(db)

    def export(self, run_id: str, out_dir: str | Path, formats: tuple[str, ...] | None = None, force: bool = False) -> dict:
        from gal.export import export_run

        with self._job_lock:
            return export_run(self, run_id, Path(out_dir), formats, force=force)

