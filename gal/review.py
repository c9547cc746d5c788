"""Step 4 of the loop, review: a person's verdicts on a round's images, and what a review screen shows.

Verdicts are append-only rows in SQLite (the latest wins); each write recomputes the round's β (Eq. 7)
and Ω (Eq. 6) per anchor in the same transaction, so every reader sees verdicts and scores agree.
The CLI and the UI both parse verdict words and decision files here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

import storage
from gal import algorithm
from gal.config import RunConfig
from gal.runfolder import RunFolder

SKIP = storage.SEEN  # "seen, no opinion": counts as reviewed, the final verdict stays the oracle's
VERDICT_WORDS = {
    "1": 1, "overfit": 1, "reject": 1, "x": 1,
    "0": 0, "aligned": 0, "accept": 0, "a": 0,
    "": None, "clear": None, "none": None, "oracle": None,
    "s": SKIP, "skip": SKIP, "seen": SKIP, "2": SKIP,
}  # fmt: skip


def parse_verdict(value) -> int | str | None:
    """``1`` overfit/reject, ``0`` aligned/accept, ``None`` clear (back to the oracle), ``SKIP``
    skip/seen/s/2 (seen, no opinion: the oracle's verdict stands, the image counts as reviewed)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
        return SKIP if value == 2 else value
    word = str(value).strip().lower()
    if word not in VERDICT_WORDS:
        raise ValueError(
            f"unknown verdict {value!r}: use overfit/reject/1, aligned/accept/0, skip/s, or clear"
        )
    return VERDICT_WORDS[word]


def person_state(image: dict):
    """What the person said about an image: 0, 1, ``SKIP`` or None (nothing)."""
    if image.get("person_verdict") is not None:
        return image["person_verdict"]
    return SKIP if image.get("person_seen") else None


def judged(image: dict) -> bool:
    """The person has said something about the image (a verdict, or skip)."""
    return person_state(image) is not None


MAX_DECISION_FILE = 20_000_000  # bytes: a round of 18 anchors × 10 images is ~20 KB; refuse runaway files


class Decisions(dict):
    """``image_id -> verdict`` read from a file, with the round and revision a ``gal images`` file carries."""

    def __init__(self, verdicts=(), *, round_index: int | None = None, revision: int | None = None):
        super().__init__(verdicts)
        self.round_index = round_index
        self.revision = revision


def _whole_number(value, what: str, path: Path) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{path}: {what} must be a whole number, got {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{path}: {what} must be a whole number, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{path}: {what} must be >= 0, got {number}")
    return number


class _Pairs(list):
    """A JSON object as its ``(key, value)`` pairs, repeated keys included."""


def read_decisions(path: str | Path, *, clear_blank: bool = False) -> Decisions:
    """A CSV (``image_id,verdict``, as ``gal images`` writes it) or JSON (``{"12": "overfit"}`` or
    ``[{"image_id": 12, "verdict": 1}]``).

    A blank CSV verdict means *no change* (``clear_blank``: clear it back to the oracle's), so a file
    filled in part never erases verdicts given elsewhere; ``clear`` always clears.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"decisions file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_DECISION_FILE:
        raise ValueError(
            f"decisions file {path} is {size / 1e6:.0f} MB, over the {MAX_DECISION_FILE / 1e6:.0f} MB limit: "
            "a round's verdicts fit in kilobytes — is it the right file?"
        )
    text = path.read_text()
    rounds, revisions = set(), set()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_Pairs)  # keeps a repeated key, to refuse a conflict
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} is not valid JSON ({err.msg} at line {err.lineno}): fix or re-export it"
            ) from None
        except RecursionError:
            raise ValueError(
                f'{path} nests too deeply to be a verdict file: write {{"12": "overfit"}} or a CSV'
            ) from None
        if isinstance(data, _Pairs):
            items = [(key, value, f"key {key!r}") for key, value in data]
        elif isinstance(data, list) and all(isinstance(d, _Pairs) and "image_id" in dict(d) for d in data):
            rows = [dict(d) for d in data]
            items = [(d["image_id"], d.get("verdict"), f"row {i}") for i, d in enumerate(rows, 1)]
        else:
            raise ValueError(
                f'{path} must hold an object {{"12": "overfit"}} or a list of '
                f'{{"image_id": 12, "verdict": 1}} rows, got {type(data).__name__}'
                + (" with rows lacking image_id" if isinstance(data, list) else "")
            )
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"image_id", "verdict"} <= set(reader.fieldnames):
            raise ValueError(f"{path} needs a header with image_id and verdict columns")
        items = []
        for row in reader:
            line = reader.line_num
            if row.get(None):  # more fields than the header names: text after the verdict
                raise ValueError(
                    f"{path} line {line}: {row[None]!r} after the last column ({reader.fieldnames[-1]}): "
                    "one verdict per row, no trailing text (quote a field that holds a comma)"
                )
            if row.get("round"):
                rounds.add(_whole_number(row["round"], "round", path))
            if row.get("revision"):
                revisions.add(_whole_number(row["revision"], "revision", path))
            verdict = row["verdict"]
            if verdict is None or not verdict.strip():
                if not clear_blank:
                    continue  # blank: no change
                verdict = "clear"
            items.append((row["image_id"], verdict, f"line {line}"))
    if len(rounds) > 1 or len(revisions) > 1:
        raise ValueError(f"{path} mixes rows of several gal images exports: use one file per export")
    out = Decisions(round_index=min(rounds, default=None), revision=min(revisions, default=None))
    where: dict[int, tuple[str, object]] = {}
    for image_id, verdict, label in items:
        try:
            if str(verdict).strip() == "2" and not isinstance(verdict, bool):
                raise ValueError("2 is not a verdict in a file: write skip (seen, no opinion), 0 or 1")
            number, value = _whole_number(image_id, "image_id", path), parse_verdict(verdict)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{path} {label}: bad row image_id={image_id!r} verdict={verdict!r}: {err}"
            ) from err
        if number in out and out[number] != value:  # the same verdict twice is harmless; two are not
            first_label, first_verdict = where[number]
            raise ValueError(
                f"{path}: image {number} has two different verdicts, {first_verdict!r} ({first_label}) and "
                f"{verdict!r} ({label}): keep one row per image"
            )
        out[number] = value
        where.setdefault(number, (label, verdict))
    return out


# -- the round's verdicts as arrays -----------------------------------------------------------------


def verdict_arrays(db, run_id: str, r: int, n_anchors: int):
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


def store_anchor_scores(db, run_id: str, r: int, selected: frozenset[int] | set[int] = frozenset()) -> None:
    """β (Eq. 7) and Ω (Eq. 6) of every judged anchor in the pool, from the final verdicts."""
    anchors = storage.list_anchors(db, run_id, r)
    oracle, person, _, _ = verdict_arrays(db, run_id, r, len(anchors))
    final = algorithm.final_verdicts(oracle, person)
    rows = []
    for a in anchors:
        i = a["anchor_index"]
        row = {"anchor_index": i, "selected": i in selected}
        if a["in_pool"] and (final[i] >= 0).all():
            beta = float(algorithm.overfit_rate(final[i : i + 1])[0])
            row.update(
                overfit_rate=beta, uncertainty=float(algorithm.direction_uncertainty(np.array([beta]))[0])
            )
        rows.append(row)
    storage.upsert_anchors(db, run_id, r, rows)


# -- a person's verdicts ------------------------------------------------------------------------------


def round_under_review(db, run_id: str) -> int:
    """The current round's index; raises unless it is in review."""
    run = storage.get_run(db, run_id)
    r = run["current_round"]
    state = storage.get_round(db, run_id, r)["state"]
    if state != "review":
        raise ValueError(
            f"round {r} of run {run_id} is {state}, not in review: wait for it to finish generating"
        )
    return r


def _record(db, run_id: str, r: int, verdicts: dict, label: str) -> int | None:
    action = storage.record_action(db, run_id, r, verdicts, label)
    if action is not None:
        store_anchor_scores(db, run_id, r)
    return action


def decide(db, run_id: str, image_id: int, verdict) -> dict:
    """A person's verdict on one image (1 overfit/reject, 0 aligned/accept, ``SKIP`` seen/no opinion,
    None back to the oracle): one action, so one undo step."""
    with storage.transaction(db):  # the check, the verdict and the anchor's β/Ω land together
        r = round_under_review(db, run_id)
        image = storage.get_image(db, image_id)
        if image is None or (image["run_id"], image["round_index"], image["kind"]) != (run_id, r, "anchor"):
            raise ValueError(f"image {image_id} is not an image of run {run_id}'s round {r} under review")
        word = {0: "aligned", 1: "overfit", SKIP: "skip", None: "clear"}[verdict]
        _record(db, run_id, r, {image_id: verdict}, f"{word} image {image_id}")
    return {"image_id": image_id, "verdict": verdict}


def decide_many(db, run_id: str, verdicts: dict[int, int | None], label: str = "") -> int:
    """Several verdicts in one transaction and one action (`gal decide`, bulk actions): one undo step."""
    with storage.transaction(db):
        r = round_under_review(db, run_id)
        valid = {im["id"] for im in storage.list_images(db, run_id, r)}
        bad = [i for i in verdicts if i not in valid]
        if bad:
            raise ValueError(f"images {bad[:5]} are not in run {run_id}'s round {r}: check the image ids")
        _record(db, run_id, r, {int(i): v for i, v in verdicts.items()}, label or f"{len(verdicts)} verdicts")
    return len(verdicts)


def apply_decisions(db, run_id: str, decisions: dict[int, int | None], *, force: bool = False) -> dict:
    """A verdict file's verdicts, in one transaction and one action: only those that change something are
    recorded (an unchanged row adds nothing to the undo history). A file from ``gal images`` carries its
    round and revision: one of another round is refused, and so is one whose images got newer person
    verdicts since it was written, unless ``force``. Returns ``{"recorded", "unchanged"}``."""
    with storage.transaction(db):
        r = round_under_review(db, run_id)
        round_index = getattr(decisions, "round_index", None)
        revision = getattr(decisions, "revision", None)
        if round_index is not None and round_index != r:
            raise ValueError(
                f"this verdict file is of round {round_index}, but run {run_id} is reviewing round {r}: "
                f"export the current round with gal images {run_id}"
            )
        if revision is not None and not force:
            newer = sorted(storage.judged_since(db, run_id, r, revision) & set(decisions))
            if newer:
                raise ValueError(
                    f"{len(newer)} image(s) of this file (e.g. image {newer[0]}) got newer verdicts "
                    "after the file "
                    f"was written: re-export with gal images {run_id}, or pass --force to overwrite them"
                )
        current = {im["id"]: person_state(im) for im in storage.list_images(db, run_id, r)}
        bad = [i for i in decisions if i not in current]
        if bad:
            raise ValueError(f"images {bad[:5]} are not in run {run_id}'s round {r}: check the image ids")
        changed = {i: v for i, v in decisions.items() if current[i] != v}
        _record(db, run_id, r, changed, f"verdict file ({len(changed)} images)")
    return {"recorded": len(changed), "unchanged": len(decisions) - len(changed)}


def accept_oracle(db, run_id: str, *, overwrite: bool = False) -> int:
    """Bulk, one undo step: the person agrees with the oracle on every image they have not judged yet
    (``overwrite``: on every image, replacing their own verdicts and skips too). Returns how many changed."""
    with storage.transaction(db):
        r = round_under_review(db, run_id)
        images = storage.list_images(db, run_id, r)
        todo = {
            im["id"]: im["oracle_verdict"]
            for im in images
            if im["oracle_verdict"] is not None
            and (overwrite or not judged(im))
            and person_state(im) != im["oracle_verdict"]
        }
        _record(db, run_id, r, todo, "accept the oracle" + (" (also yours)" if overwrite else ""))
    return len(todo)


def mark_below(db, run_id: str, threshold: float, verdict: int = 1, *, overwrite: bool = False) -> int:
    """Bulk, one undo step: give ``verdict`` to every image the person has not judged whose
    sim(image, anchor) is below ``threshold`` (``overwrite``: to their own verdicts too)."""
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    with storage.transaction(db):
        r = round_under_review(db, run_id)
        images = storage.list_images(db, run_id, r)
        todo = {
            im["id"]: verdict
            for im in images
            if im["sim_anchor"] is not None
            and im["sim_anchor"] < threshold
            and (overwrite or not judged(im))
            and person_state(im) != verdict
        }
        word = {0: "aligned", 1: "overfit"}[verdict]
        _record(
            db, run_id, r, todo, f"mark under {threshold:g} {word}" + (" (also yours)" if overwrite else "")
        )
    return len(todo)


def undo(db, run_id: str) -> dict | None:
    """Undo the round's last action (a click, a key, a bulk action) as a whole; None: nothing to undo.
    Decisions recorded before actions existed (no action id) are undone one at a time, after them."""
    with storage.transaction(db):
        r = round_under_review(db, run_id)
        row = storage.undo_action(db, run_id, r)
        if row is None:
            legacy = storage.undo_last_decision(db, run_id, r, legacy_only=True)
            row = (
                None
                if legacy is None
                else {"undone": legacy["undoes"], "label": "", "images": [legacy["image_id"]]}
            )
        store_anchor_scores(db, run_id, r)
    return row


def redo(db, run_id: str) -> dict | None:
    """Redo the round's last undone action; None: nothing to redo (a new action clears what can be redone)."""
    with storage.transaction(db):
        r = round_under_review(db, run_id)
        row = storage.redo_action(db, run_id, r)
        store_anchor_scores(db, run_id, r)
    return row


def set_mode(db, run_id: str, mode: str) -> None:
    """Toggle the current round between ``auto`` (oracle + overrides) and ``human`` (accepted images)."""
    if mode not in ("auto", "human"):
        raise ValueError(f"mode must be 'auto' or 'human', got {mode!r}")
    r = storage.get_run(db, run_id)["current_round"]
    storage.update_round(db, run_id, r, mode=mode)


# -- disagreement first --------------------------------------------------------------------------------

REVIEW_ORDERS = ("anchor", "disagreement")


def review_order(
    images: list[dict],
    order: str = "disagreement",
    *,
    disagree_only: bool = False,
    max_confidence: float | None = None,
    unreviewed: bool = False,
) -> list[dict]:
    """The images a person should see, in order. ``disagreement``: images the judges disagreed on first,
    then by the judge's confidence, lowest first (no confidence counts as 1), then anchor and slot;
    ``anchor``: anchor, slot. Filters: ``disagree_only`` (an ensemble's members differed),
    ``max_confidence`` (the judge's confidence at most this), ``unreviewed`` (the person has said nothing)."""
    if order not in REVIEW_ORDERS:
        raise ValueError(f"review order must be one of {', '.join(REVIEW_ORDERS)}, got {order!r}")
    if max_confidence is not None and not (
        isinstance(max_confidence, int | float) and 0 <= max_confidence <= 1
    ):
        raise ValueError(f"max_confidence must be a number in [0, 1], got {max_confidence!r}")
    kept = [
        im
        for im in images
        if (not disagree_only or im.get("disagree"))
        and (
            max_confidence is None
            or (im.get("confidence") is not None and im["confidence"] <= max_confidence)
        )
        and (not unreviewed or not judged(im))
    ]
    place = lambda im: (im["anchor_index"], im["slot"])  # noqa: E731
    if order == "anchor":
        return sorted(kept, key=place)
    return sorted(
        kept,
        key=lambda im: (
            not im.get("disagree"),
            1.0 if im.get("confidence") is None else im["confidence"],
            *place(im),
        ),
    )


def review_queue(
    db, run_id: str, round_index: int | None = None, order: str = "disagreement", **filters
) -> list[dict]:
    """The round's images (default: the current round) in :func:`review_order` — what Human mode shows
    first: where the judges disagree, then where the judge is least sure."""
    r = round_index or storage.get_run(db, run_id)["current_round"]
    return review_order(storage.list_images(db, run_id, r), order, **filters)


# -- what a review screen shows -----------------------------------------------------------------------


def review_state(db, folder: RunFolder, round_index: int | None = None) -> dict:
    """Everything a review screen shows, computed from SQLite (so every tab sees the same)."""
    run_id = folder.run_id
    run = storage.get_run(db, run_id)
    config = RunConfig.from_dict(run["config"])
    r = round_index or run["current_round"]
    rnd = storage.get_round(db, run_id, r)
    anchors = storage.list_anchors(db, run_id, r)
    images = storage.list_images(db, run_id, r)
    references = storage.list_references(db, run_id, up_to_round=r - 1)  # what round r trained on
    revision = storage.review_revision(db, run_id, r)
    by_anchor: dict[int, list[dict]] = {}
    for im in images:
        by_anchor.setdefault(im["anchor_index"], []).append({**im, "path": str(folder.path(im["file"]))})
    out_anchors, reviewed, overrides, total, skipped = [], 0, 0, 0, 0
    disagreements = sum(bool(im.get("disagree")) for im in images)
    for a in anchors:
        ims = by_anchor.get(a["anchor_index"], [])
        total += len(ims)
        reviewed += sum(judged(im) for im in ims)
        skipped += sum(im["person_verdict"] is None and bool(im["person_seen"]) for im in ims)
        overrides += sum(
            im["person_verdict"] is not None and im["person_verdict"] != im["oracle_verdict"] for im in ims
        )
        out_anchors.append({**a, "images": ims})
    mixed = sum(1 for a in anchors if a["in_pool"] and (a.get("uncertainty") or 0) > 0)
    settled = sum(1 for a in anchors if a["in_pool"] and a.get("uncertainty") == 0)
    can_undo, can_redo = storage.undo_redo_labels(db, run_id, r)
    return {
        "run": run,
        "config": config,
        "round": rnd,
        "anchors": out_anchors,
        "revision": revision,  # the round's latest decision id: what a verdict file was written against
        "undo": can_undo,  # the label of the action undo would take back (None: nothing)
        "redo": can_redo,
        "counters": {
            "reviewed": reviewed,
            "total": total,
            "overrides": overrides,
            "skipped": skipped,
            "disagreements": disagreements,  # images the judges disagreed on (an ensemble's members)
            "mixed": mixed,
            "settled": settled,
            # the person's references and the images earlier rounds added
            "real_refs": sum(ref["source"] == "real" for ref in references),
            "added_refs": sum(ref["source"] != "real" for ref in references),
        },
    }
