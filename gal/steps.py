"""Steps 1-3 of the loop (train, generate, judge) and the held-out evaluation, as plain functions.

Each step takes a :class:`~gal.round.Round` (the models, the run folder, the config, where to report) and
returns a :class:`~gal.round.StepResult`: its seconds, the metrics and round fields it adds, and the rows
it stores. Its helpers: ``gal.captions`` (training captions), ``gal.previews`` (previews while training).
The loop (``gal.engine``) writes those rows and moves the round to its next state in **one**
transaction, so a kill at any instant leaves either the step undone (it runs again, overwriting its own
files) or done and recorded — never rows without the state, or the state without its rows.
Generation is the one step that saves as it goes (a batch's files and rows at a time, so a killed run
keeps what it drew); it skips what is already saved.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

import storage
from gal import judges, tblog, trainstate
from gal.captions import informative_caption, training_captions
from gal.evaluation import round_metrics
from gal.generation import generate as draw
from gal.judges import JudgeRequest
from gal.judges.clip import clip_scores
from gal.previews import draw_previews, pool_anchors, preview_interval
from gal.references import mask_file
from gal.review import store_anchor_scores
from gal.round import Round, StepResult
from gal.runfolder import RunFolder, as_disk_full, disk_full
from gal.seeds import class_image_seed, eval_image_seed, image_seed, training_seed
from gal.training import TRAINING_SET, TrainExample, adapter_state, save_adapter, train_lora

# Where they were before the helpers had their own modules (engine, tests and benches import them from here).
__all__ = ["STEPS", "Round", "StepResult", "evaluate", "generate", "informative_caption", "judge", "train"]


# -- 1. train -------------------------------------------------------------------------------------


def train(rnd: Round) -> StepResult:
    """DreamBooth-LoRA on the references up to the last round, each with its weight (Balance)."""
    config, folder, r = rnd.config, rnd.folder, rnd.index
    spec = config.model
    pipe = rnd.models.pipeline(spec)
    with rnd.db() as db:
        refs = storage.list_references(db, rnd.run_id, up_to_round=r - 1)
        previous = storage.get_round(db, rnd.run_id, r - 1) if r > 1 else None
    images = [folder.open_rgb(x["file"]) for x in refs]
    captions = training_captions(rnd, refs, images)
    examples = [
        TrainExample(image, text, x["weight"], added=x["source"] == "synthetic", mask=_stored_mask(folder, x))
        for x, image, text in zip(refs, images, captions, strict=True)
    ]
    init_state = None
    if not config.train.retrain_from_base and previous is not None:
        prev_pipe = rnd.models.with_adapter(spec, (rnd.run_id, r - 1), folder.path(previous["adapter_path"]))
        init_state = adapter_state(prev_pipe)
    class_examples = _class_examples(rnd) if config.train.prior_preservation else None
    rnd.models.mark(spec, None)  # training replaces whatever adapter was active
    preview_every = preview_interval(config.train.preview_every, rnd.models.device, config.model)
    anchors = [a for a in pool_anchors(rnd)][:2] if preview_every else []

    def on_step(step: int, total: int, loss: float) -> None:
        info = {"loss": loss, "round": r}
        if anchors and (step % preview_every == 0 or step == total):
            info["previews"] = draw_previews(rnd, pipe, anchors, step)
        rnd.report("train", step, total, **info)

    every = trainstate.interval(config.train.checkpoint_every, config.train.steps, rnd.models.device)
    state = trainstate.TrainState(
        folder.path(f"rounds/r{r:02d}/{trainstate.STATE_FILE}"),
        trainstate.fingerprint(rnd.run_id, r, config.identity_json(), examples, config.train.steps),
        every,
        writer=rnd.processes.is_main,
        round_index=r,
        on_resume=lambda k: rnd.report("train", k, config.train.steps, round=r, resumed=k),
    )
    result = train_lora(
        pipe,
        examples,
        config.train,
        resolution=rnd.resolution(pipe),
        seed=training_seed(config.seed, r),
        init_state=init_state,
        class_examples=class_examples,
        progress=on_step,
        cancel=rnd.cancel,
        processes=rnd.processes,
        state=state,
    )
    rel = RunFolder.adapter_dir(r)
    if rnd.processes.is_main:  # every process holds the same adapter; one file is written
        try:
            save_adapter(
                pipe, folder.path(rel), config.train, {"gal.run_id": rnd.run_id, "gal.round": str(r)}
            )
            save_training_set(folder, f"{rel}/{TRAINING_SET}", refs, captions)
            save_losses(folder, r, result.losses)
            state.remove()  # the round's adapter is saved: its mid-round state is spent
        except Exception as err:  # a full disk, however safetensors words it, is one OSError(ENOSPC)
            if not disk_full(err) or isinstance(err, OSError):
                raise
            raise as_disk_full(err, folder.path(rel), f"round {r}'s adapter") from err
        if config.train.log_dir:
            tblog.log_training(
                config.train.log_dir, rnd.run_id, r, config.train.steps, result.losses, result.lrs
            )
    rnd.models.mark(spec, rnd.adapter_key)
    return StepResult(
        result.seconds,
        metrics={"train_loss": float(np.mean(result.losses[-20:]))},
        fields={"adapter_path": rel},
    )


def save_losses(folder: RunFolder, round_index: int, losses: list[float]) -> None:
    """The round's loss per step (step i + 1 is ``losses[i]``), written atomically."""
    data = json.dumps({"round": round_index, "losses": [float(x) for x in losses]})
    folder.write_atomic(RunFolder.losses_file(round_index), lambda tmp: tmp.write_text(data))


def read_losses(path: Path) -> list[float] | None:
    """A round's saved losses, or None (not trained yet, or an unreadable file)."""
    try:
        data = json.loads(path.read_text())
        return [float(x) for x in data["losses"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stored_mask(folder, ref: dict):
    """A real reference's loss mask, saved beside it when the run was created; added images have none."""
    path = folder.path(mask_file(ref["file"]).as_posix())
    if ref["source"] == "synthetic" or not path.is_file():
        return None
    with Image.open(path) as mask:
        return mask.convert("L")


def _class_examples(rnd: Round) -> list[TrainExample]:
    """DreamBooth's prior images: drawn once per run by the base model, kept in class_images/."""
    config = rnd.config
    folder = rnd.folder.class_images
    folder.mkdir(exist_ok=True)
    n = config.train.num_class_images
    existing = sorted(folder.glob("*.png"))
    if len(existing) < n:
        pipe = rnd.models.base(config.model)
        todo = list(range(len(existing), n))

        def save(start: int, images: list[Image.Image]) -> None:
            for j, im in enumerate(images):
                im.save(folder / f"{todo[start + j]:04d}.png")

        draw(
            pipe,
            [config.train.class_prompt] * len(todo),
            [class_image_seed(config.seed, i) for i in todo],
            config.generate,
            resolution=rnd.resolution(pipe),
            progress=lambda d, t: rnd.report("class images", d, t),
            cancel=rnd.cancel,
            on_batch=save,
        )
    return [
        TrainExample(Image.open(p).convert("RGB"), config.train.class_prompt, config.train.prior_loss_weight)
        for p in sorted(folder.glob("*.png"))[:n]
    ]


# -- 2. generate ----------------------------------------------------------------------------------


def generate(rnd: Round) -> StepResult:
    """``m`` images per anchor in the pool, batched across anchors; image ``j`` of anchor ``i`` has the
    same seed every round. Saves each batch as it is drawn and skips what a killed run already saved."""
    config, folder, r = rnd.config, rnd.folder, rnd.index
    started = time.perf_counter()
    with rnd.db() as db:
        anchors = [a for a in storage.list_anchors(db, rnd.run_id, r) if a["in_pool"]]
        have = {(im["anchor_index"], im["slot"]) for im in storage.list_images(db, rnd.run_id, r)
                if folder.path(im["file"]).exists()}  # fmt: skip
    todo = [(a, j) for a in anchors for j in range(config.gal.m) if (a["anchor_index"], j) not in have]
    processes = rnd.processes
    mine = processes.shard(todo)  # each process draws its share; every image keeps its own seed
    drawn: list[dict] = []  # this process's rows, stored by the main process with the state change
    if mine:
        # say so before the adapter loads and the first batch is drawn (that took ~16 s of silence after
        # training's last step on 2 cores)
        rnd.report("generate", 0, len(mine), round=r)
        pipe = rnd.pipeline()

        def save(start: int, images: list[Image.Image]) -> None:
            rows = []
            for (a, j), image in zip(mine[start : start + len(images)], images, strict=True):
                rel = RunFolder.image_file(r, a["anchor_index"], j)
                folder.save(image, rel)
                rows.append(
                    {
                        "run_id": rnd.run_id,
                        "round_index": r,
                        "anchor_index": a["anchor_index"],
                        "slot": j,
                        "file": rel,
                        "seed": image_seed(config.seed, a["anchor_index"], j),
                        "prompt": a["prompt"],
                        "kind": "anchor",
                    }
                )
            if processes.many:
                drawn.extend(rows)
            else:  # one process saves each batch at once: a killed run keeps what it drew
                with rnd.db() as db:
                    storage.add_images(db, rows)

        draw(
            pipe,
            [a["prompt"] for a, _ in mine],
            [image_seed(config.seed, a["anchor_index"], j) for a, j in mine],
            config.generate,
            resolution=rnd.resolution(pipe),
            progress=lambda d, t: rnd.report("generate", d, t, round=r),
            cancel=rnd.cancel,
            on_batch=save,
        )
    rows = processes.gather(drawn)

    def write(db) -> None:
        if rows:
            storage.add_images(db, rows)

    return StepResult(time.perf_counter() - started, write=write if rows else None)


# -- 3. judge ------------------------------------------------------------------------------------


def non_soi_texts(db, run_id: str) -> list[str]:
    """The real references' non-subject captions, each once (Eq. 8 takes the max over them)."""
    refs = storage.list_references(db, run_id)
    return list(dict.fromkeys(x["non_soi_text"] for x in refs if x["source"] == "real"))


def save_embeddings(folder: RunFolder, r: int, ids: list[int], embeddings: np.ndarray) -> None:
    """The oracle's image embeddings of round ``r``'s images, by image id (re-judging overwrites them)."""
    ids, embeddings = np.asarray(ids, dtype=np.int64), np.asarray(embeddings, dtype=np.float32)
    folder.write_atomic(folder.embeddings_file(r), lambda tmp: np.savez(tmp, ids=ids, embeddings=embeddings))


def save_training_set(folder: RunFolder, relative: str, refs: list[dict], captions: list[str]) -> None:
    """What a round's adapter trained on, caption by caption (the dataset export writes these captions)."""
    rows = [
        {"file": x["file"], "caption": text, "weight": x["weight"], "source": x["source"]}
        for x, text in zip(refs, captions, strict=True)
    ]
    folder.write_atomic(relative, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)))


def judge(rnd: Round) -> StepResult:
    """Each image's verdict from the run's judge (``config.oracle``; default Eq. 8's CLIP rule: sim(image,
    anchor text) vs the max over the non-SoI captions), with its confidence, evidence and votes. The
    run's CLIP scorer's similarities are stored too (what selection, review and +diversity read)."""
    started = time.perf_counter()
    r = rnd.index
    with rnd.db() as db:
        images = storage.list_images(db, rnd.run_id, r)
        texts = {a["anchor_index"]: a["oracle_text"] for a in storage.list_anchors(db, rnd.run_id, r)}
        non_soi = non_soi_texts(db, rnd.run_id)
        real_files = [x["file"] for x in storage.list_references(db, rnd.run_id) if x["source"] == "real"]
    rnd.report("judge", 0, len(images), round=r)
    if not images:  # every anchor has left the pool: nothing was drawn, nothing to judge
        return StepResult(time.perf_counter() - started)
    mine = rnd.processes.shard(images)
    rows, embeddings = [], []
    diversity = rnd.config.gal.parsed_strategy.diversity  # the +diversity query reads the image embeddings
    if mine:
        spec = rnd.config.oracle
        oracle = rnd.models.oracle(spec)  # the run's CLIP-space scorer (the CLIP judge's own model)
        pil = [rnd.folder.open_rgb(im["file"]) for im in mine]
        anchor_texts = [texts[im["anchor_index"]] for im in mine]
        sim_anchor, sim_non_soi = clip_scores(
            oracle, pil, anchor_texts, non_soi, columns=list(dict.fromkeys(texts.values()))
        )  # [n], [n]
        if diversity:
            embeddings = list(oracle.embed_images(pil))
        judge_ = rnd.models.judge(spec)
        request = JudgeRequest(
            pil, anchor_texts, non_soi,
            references=lambda: [rnd.folder.open_rgb(f) for f in real_files],
            subject=rnd.config.anchor_subject(),
            scores={"sim_anchor": sim_anchor, "sim_non_soi": sim_non_soi}, scorer=judges.scorer_spec(spec),
        )  # fmt: skip
        judgements = judge_.judge(request)
        if len(judgements) != len(mine):
            raise ValueError(
                f"judge {judge_.name!r} returned {len(judgements)} verdicts for {len(mine)} images"
            )
        rows = [
            {"id": im["id"], "sim_anchor": float(a), "sim_non_soi": float(b),
             "oracle_verdict": int(j.verdict), "judge": judge_.name, "confidence": float(j.confidence),
             "evidence": j.evidence,
             "votes": {**j.votes, judge_.name: (int(j.verdict), float(j.confidence))}, "disagree": j.disagree}
            for im, a, b, j in zip(mine, sim_anchor, sim_non_soi, judgements, strict=True)
        ]  # fmt: skip
    rows = rnd.processes.gather(rows)
    if diversity:
        embeddings = rnd.processes.gather(embeddings)
        if rnd.processes.is_main:
            save_embeddings(rnd.folder, r, [im["id"] for im in images], np.stack(embeddings))

    def write(db) -> None:
        storage.set_similarities(db, rows)
        store_anchor_scores(db, rnd.run_id, r)

    rnd.report("judge", len(images), len(images), round=r)
    return StepResult(time.perf_counter() - started, write=write)


# -- held-out evaluation -------------------------------------------------------------------------


def evaluate(rnd: Round) -> StepResult:
    """TXT-ALN, IMG-ALN and OVF on the held-out prompts with this round's model."""
    started = time.perf_counter()
    config, folder, r = rnd.config, rnd.folder, rnd.index
    if not (config.eval.enabled and config.eval.prompts):
        return StepResult(time.perf_counter() - started)
    per = config.eval.images_per_prompt
    prompts = [p for p in config.eval_prompts() for _ in range(per)]
    prompt_texts = [t for t in config.eval_oracle_texts() for _ in range(per)]
    seeds = [eval_image_seed(config.seed, i // per, i % per) for i in range(len(prompts))]
    texts = list(dict.fromkeys(prompt_texts))
    with rnd.db() as db:
        non_soi = non_soi_texts(db, rnd.run_id)
        real_files = [x["file"] for x in storage.list_references(db, rnd.run_id) if x["source"] == "real"]
    mine = rnd.processes.shard(range(len(prompts)))  # each process draws and scores its share
    scored = []  # per image: its row, sim to its prompt, sims to the non-SoI captions, sims to the references
    if mine:
        # say so before the adapter loads and the first batch is drawn (that took ~16 s of silence after
        # training's last step on 2 cores)
        rnd.report("generate", 0, len(mine), round=r)
        pipe = rnd.pipeline()
        images = draw(
            pipe,
            [prompts[i] for i in mine],
            [seeds[i] for i in mine],
            config.generate,
            resolution=rnd.resolution(pipe),
            progress=lambda d, t: rnd.report("evaluate", d, t, round=r),
            cancel=rnd.cancel,
        )
        oracle = rnd.models.oracle(config.oracle)
        sims = oracle.text_similarities(images, texts + non_soi)
        to_real = oracle.image_similarities(images, [folder.open_rgb(f) for f in real_files])
        for k, (i, image) in enumerate(zip(mine, images, strict=True)):
            rel = RunFolder.eval_file(r, i)
            folder.save(image, rel)
            row = {"run_id": rnd.run_id, "round_index": r, "anchor_index": -1, "slot": i, "file": rel,
                   "seed": seeds[i], "prompt": prompts[i], "kind": "eval"}  # fmt: skip
            scored.append(
                (row, float(sims[k, texts.index(prompt_texts[i])]), sims[k, len(texts) :], to_real[k])
            )
    scored = rnd.processes.gather(scored)
    rows = [row for row, *_ in scored]
    metrics = round_metrics(
        np.array([s for _, s, _, _ in scored]),
        np.stack([n for *_, n, _ in scored]),
        np.stack([t for *_, t in scored]),
    )

    def write(db) -> None:
        # A database from before steps recorded their rows with the state may hold this round's eval rows.
        have = {im["slot"] for im in storage.list_images(db, rnd.run_id, r, kind="eval")}
        storage.add_images(db, [row for row in rows if row["slot"] not in have])

    return StepResult(time.perf_counter() - started, metrics=metrics, write=write)


# The round's state machine: each state's step, and the state it moves to once the step is recorded.
STEPS: dict[str, tuple[Callable[[Round], StepResult], str]] = {
    "training": (train, "generating"),  # 1. train
    "generating": (generate, "judging"),  # 2. generate
    "judging": (judge, "evaluating"),  # 3. judge
    "evaluating": (evaluate, "review"),  # held-out metrics of this round's model
}
