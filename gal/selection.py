"""Steps 5-6 of the loop, select and weigh: what a round adds to the references, and the next round.

A commit reads the final verdicts, lets the strategy (query × Balance, ``gal.algorithm``) pick, copies
the picks into the references with their weight, and starts the next round (or finishes the run) —
all in one write transaction (``BEGIN IMMEDIATE``) that first checks the round is still under
review, so two commits of one run, from threads or processes, commit it once.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

import storage
from gal import algorithm
from gal.algorithm import Strategy
from gal.config import RunConfig
from gal.faults import checkpoint
from gal.review import round_under_review, store_anchor_scores, verdict_arrays
from gal.runfolder import RunFolder


def round_mode(strategy: Strategy) -> str:
    """A round starts in the mode its strategy asks for: ``human`` rounds wait for the person's picks."""
    return "human" if strategy.human else "auto"


def pool(db, run_id: str, config: RunConfig, round_index: int) -> np.ndarray:
    """``[A]`` mask of anchors still to query: a selected anchor leaves the pool (official code)."""
    in_pool = np.ones(len(config.anchors), dtype=bool)
    if config.gal.remove_selected:
        for sel in storage.list_selections(db, run_id):
            if sel["round_index"] < round_index:
                in_pool[sel["anchor_index"]] = False
    return in_pool


def start_round(db, run_id: str, config: RunConfig, round_index: int) -> None:
    """Round ``round_index`` in state ``training``, with its anchors and their place in the pool."""
    storage.start_round(
        db, run_id=run_id, round_index=round_index, mode=round_mode(config.gal.parsed_strategy)
    )
    in_pool = pool(db, run_id, config, round_index)
    anchors = zip(config.anchor_prompts(), config.anchor_oracle_texts(), strict=True)
    storage.upsert_anchors(
        db,
        run_id,
        round_index,
        [
            {"anchor_index": i, "prompt": p, "oracle_text": t, "in_pool": bool(in_pool[i])}
            for i, (p, t) in enumerate(anchors)
        ],
    )
    storage.update_run(db, run_id, current_round=round_index, status="active")


def pool_empty(db, run_id: str, r: int) -> bool:
    """Every anchor has been selected in an earlier round: this round drew nothing and ends the run."""
    return not any(a["in_pool"] for a in storage.list_anchors(db, run_id, r))


def stops(selection: algorithm.Selection, config: RunConfig, strategy: Strategy) -> bool:
    """Eq. 10 ends auto runs early; in Human mode the person's accepted images are always used."""
    return bool(selection.stop and config.gal.adaptive_stop and not strategy.human)


def select(
    db, run_id: str, config: RunConfig, r: int, mode: str
) -> tuple[algorithm.Selection, np.ndarray, Strategy]:
    """The strategy's picks from round ``r``'s final verdicts, with the image ids ``[A, m]`` they index."""
    anchors = storage.list_anchors(db, run_id, r)
    oracle, person, sim, ids = verdict_arrays(db, run_id, r, len(anchors))
    in_pool = np.array([bool(a["in_pool"]) for a in anchors])
    if (oracle[in_pool] < 0).any():
        raise ValueError(f"round {r} has anchors without judged images: resume the run to finish judging")
    # Anchors out of the pool drew no images: give them neutral rows the pool mask then ignores.
    oracle[~in_pool] = 0
    strategy = config.gal.parsed_strategy.in_mode(mode)
    embeddings = _embeddings(db, run_id, r, ids) if strategy.diversity else None
    selection = algorithm.select(
        strategy,
        sim,
        algorithm.final_verdicts(oracle, person),
        k=config.gal.k,
        lam=config.gal.lam,
        in_pool=in_pool,
        person=person,
        rng=np.random.default_rng([config.seed, r]),
        embeddings=embeddings,
        images_per_anchor=config.gal.images_per_anchor,
    )
    return selection, ids, strategy


def _embeddings(db, run_id: str, r: int, ids: np.ndarray) -> np.ndarray:
    """``[A, m, d]`` oracle image embeddings of round ``r`` (saved by the judge step), zeros where no
    image."""
    folder = RunFolder(Path(storage.get_run(db, run_id)["run_dir"]).parent, run_id)
    path = folder.path(folder.embeddings_file(r))
    if not path.exists():
        raise ValueError(f"round {r} has no image embeddings ({path.name}): resume the run to judge it again")
    saved = np.load(path)
    rows = {int(i): e for i, e in zip(saved["ids"], saved["embeddings"])}
    dim = saved["embeddings"].shape[1]
    out = np.zeros((*ids.shape, dim), dtype=np.float64)
    for a, j in zip(*np.nonzero(ids >= 0)):
        if int(ids[a, j]) not in rows:
            raise ValueError(
                f"round {r}'s embeddings lack image {int(ids[a, j])}: resume the run to judge it again"
            )
        out[a, j] = rows[int(ids[a, j])]
    return out


def preview(db, run_id: str, mode: str | None = None) -> dict:
    """What committing now would add: anchors, images and their loss weight; and whether GAL would stop."""
    r = round_under_review(db, run_id)
    config = RunConfig.from_dict(storage.get_run(db, run_id)["config"])
    mode = mode or storage.get_round(db, run_id, r)["mode"]
    if pool_empty(db, run_id, r):
        strategy = config.gal.parsed_strategy.in_mode(mode)
        return {"mode": mode, "strategy": strategy.name, "round": r, "weight": 0.0, "openness": 0.0,
                "stop": True, "last_round": True, "exhausted": True, "picks": []}  # fmt: skip
    try:
        selection, ids, strategy = select(db, run_id, config, r, mode)
    except ValueError as err:
        return {"error": str(err), "picks": [], "mode": mode}
    last = r >= config.gal.max_rounds
    stop = stops(selection, config, strategy)
    picks = [
        {"anchor_index": int(a), "slot": int(s), "image_id": int(ids[a, s])}
        for a, s in zip(selection.anchors, selection.slots, strict=True)
    ]
    return {
        "mode": mode, "strategy": strategy.name, "round": r, "weight": selection.weight,
        "openness": selection.openness, "stop": stop, "last_round": last,
        "picks": [] if last or stop else picks,
    }  # fmt: skip


def _metrics(db, run_id: str, r: int) -> dict:
    return dict(storage.get_round(db, run_id, r).get("metrics") or {})


def _refuse_if_committed(db, run_id: str) -> None:
    """The loser of two commits (a double click, two terminals) hears that the round was committed, not
    that the next round "is training"."""
    run = storage.get_run(db, run_id)
    r = run["current_round"]
    current = storage.get_round(db, run_id, r)
    if current is not None and current["state"] == "review":
        return
    done = current if current is not None and current["state"] == "done" else None
    if done is None and r > 1:
        previous = storage.get_round(db, run_id, r - 1)
        done = previous if previous is not None and previous["state"] == "done" else None
    if done is not None:
        now = "the run is finished" if run["status"] == "finished" else f"round {r} is {current['state']}"
        raise ValueError(
            f"round {done['round_index']} of run {run_id} was already committed (by an earlier commit at "
            f"{done['updated_at']}, {done['mode']} mode); {now}: nothing to commit"
        )


def commit(db, folder: RunFolder, mode: str | None = None) -> dict:
    """Select and weigh round ``r`` under review, then start round ``r + 1`` (or finish the run).

    One write transaction: its first read checks the round is still in review, so a second commit
    (another click, thread or process) fails with a message instead of adding picks twice.
    Returns ``{"round", "strategy", "picked", "finished"}``.
    """
    run_id = folder.run_id
    with storage.transaction(db):
        _refuse_if_committed(db, run_id)
        r = round_under_review(db, run_id)
        config = RunConfig.from_dict(storage.get_run(db, run_id)["config"])
        mode = mode or storage.get_round(db, run_id, r)["mode"]
        if pool_empty(db, run_id, r):
            storage.update_round(db, run_id, r, state="done", mode=mode,
                                 metrics={**_metrics(db, run_id, r), "pool_exhausted": True})  # fmt: skip
            storage.update_run(db, run_id, status="finished")
            return {"round": r, "strategy": config.gal.strategy, "picked": 0, "finished": True}
        selection, ids, strategy = select(db, run_id, config, r, mode)
        last = r >= config.gal.max_rounds
        stop = stops(selection, config, strategy)
        finish = last or stop
        if not finish and strategy.human and selection.anchors.size == 0:
            raise ValueError(
                "no image is accepted: accept at least one image (key a) or switch the round to auto"
            )
        images = {im["id"]: im for im in storage.list_images(db, run_id, r)}
        picked: set[int] = set()
        if not finish:
            for a, s in zip(selection.anchors, selection.slots, strict=True):
                image = images[int(ids[a, s])]
                src = folder.path(image["file"])
                rel = RunFolder.added_reference_file(r, int(a), int(s))
                shutil.copyfile(src, folder.path(rel))
                storage.record_selection(
                    db,
                    run_id=run_id,
                    round_index=r,
                    anchor_index=int(a),
                    image_id=image["id"],
                    weight=selection.weight,
                    strategy=strategy.name,
                )
                storage.add_reference(
                    db, run_id=run_id, file=rel, sha256=hashlib.sha256(src.read_bytes()).hexdigest(),
                    prompt=image["prompt"], non_soi_text=config.oracle_text(image["prompt"]),
                    weight=selection.weight, round_added=r, source="synthetic", image_id=image["id"],
                )  # fmt: skip
                picked.add(int(a))
        store_anchor_scores(db, run_id, r, selected=picked)
        metrics = {**_metrics(db, run_id, r), "strategy": strategy.name, "weight": selection.weight,
                   "stopped_by_eq10": bool(stop and not last)}  # fmt: skip
        storage.update_round(
            db, run_id, r, state="done", openness=selection.openness, mode=mode, metrics=metrics
        )
        checkpoint("committing", r)  # inside the transaction: picks copied and recorded, not committed
        if finish:
            storage.update_run(db, run_id, status="finished")
        else:
            start_round(db, run_id, config, r + 1)
    return {"round": r, "strategy": strategy.name, "picked": len(picked), "finished": finish}
