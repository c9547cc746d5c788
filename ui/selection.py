"""What committing a round would do, said before it is done: the selection preview beside the grid (images,
their loss weight, the anchors that leave the pool, Eq. 10's end), the Commit button's label and the
human-mode dilution warning."""

from __future__ import annotations

from gal.engine import dilution
from ui.render import esc, file_url, message


def preview_html(preview: dict | None, state: dict | None) -> str:
    """What 'Commit round' would add right now: anchors, images and their loss weight."""
    if preview is None or state is None:
        return (
            '<div class="gal-preview gal-muted">'
            "The selection preview appears while a round is in review.</div>"
        )
    if preview.get("error"):
        return f'<div class="gal-preview">{message(esc(preview["error"]), "error")}</div>'
    k = state["config"].gal.k
    head = (
        f'<h4>If you commit now</h4><div class="gal-muted">mode <b>{esc(preview["mode"])}</b> · strategy '
        f"<b>{esc(preview['strategy'])}</b> · openness Δ = {preview['openness']:.5f} (Eq. 9)</div>"
    )
    if preview.get("last_round"):
        text = (
            f"Round {preview['round']} is the last one: committing finishes the run (nothing is added). "
            "Export the result afterwards."
        )
        return f'<div class="gal-preview">{head}{message(text, "ok")}</div>'
    if preview.get("stop"):
        text = (
            f"Eq. 10 stops here: fewer than k = {k} anchors are still mixed, so committing finishes the run. "
            "Flip verdicts to open more anchors, or turn adaptive stop off in a new run."
        )
        return f'<div class="gal-preview">{head}{message(text, "ok")}</div>'
    picks = preview["picks"]
    if not picks:
        text = (
            "No image is accepted yet: human mode adds the images you accept (key a)."
            if preview["mode"] == "human"
            else "Nothing would be added."
        )
        return f'<div class="gal-preview">{head}{message(text, "error")}</div>'
    by_id = {im["id"]: im for a in state["anchors"] for im in a["images"]}
    prompts = {a["anchor_index"]: a["prompt"] for a in state["anchors"]}
    per_anchor: dict[int, list[dict]] = {}
    for p in picks:
        per_anchor.setdefault(p["anchor_index"], []).append(p)
    items = "".join(
        f"<li><b>#{a}</b> {esc(prompts.get(a, ''))} — {len(ps)} image{'s' if len(ps) > 1 else ''} "
        f"(slot {', '.join(str(p['slot'] + 1) for p in ps)})</li>"
        for a, ps in per_anchor.items()
    )
    thumbs = "".join(
        f'<img src="{esc(file_url(by_id[p["image_id"]]["path"]))}" '
        f'alt="anchor {p["anchor_index"]} image {p["slot"] + 1}" '
        f'title="#{p["anchor_index"]} slot {p["slot"] + 1}">'
        for p in picks
        if p["image_id"] in by_id
    )
    note = (
        dilution_note(state, len(picks)) if preview["mode"] == "human" else ""
    )  # auto adds k a round by design
    effect = pool_effect(preview, state)
    pool = pool_text(effect, preview["round"])
    if pool:
        warn = effect["empties"] or effect["eq10"]
        note = (
            f'<div data-leaving="{effect["leaving"]}" data-ends="{int(warn)}">'
            f"{message(esc(pool), 'warn') if warn else esc(pool)}</div>{note}"
        )
    return (
        f'<div class="gal-preview" data-picks="{len(picks)}">{head}'
        f"<div>Adds <b>{len(picks)}</b> image{'s' if len(picks) > 1 else ''} from <b>{len(per_anchor)}</b> "
        f"anchor{'s' if len(per_anchor) > 1 else ''}, each weighing <b>{preview['weight']:.5g}</b> "
        "in the next round's loss "
        f'(real references weigh 1).</div>{note}<ul>{items}</ul><div class="thumbs">{thumbs}</div></div>'
    )


COMMIT_NEXT = "Commit round ▶ train the next"
COMMIT_FINISH = "Commit and finish"


def pool_effect(preview: dict | None, state: dict | None) -> dict | None:
    """What committing does to the anchor pool: a picked anchor leaves it (official code). ``leaving``
    anchors go, ``left`` stay; ``finishes`` when this commit ends the run (last round, Eq. 10, empty
    pool); ``empties`` when the pool is empty afterwards (the next round draws nothing and finishes the
    run); ``eq10`` when fewer than k anchors stay, so Eq. 10 ends an auto round next."""
    if preview is None or state is None or preview.get("error"):
        return None
    finishes = bool(preview.get("last_round") or preview.get("stop"))
    leaving = len({p["anchor_index"] for p in preview.get("picks") or []})
    in_pool = sum(1 for a in state["anchors"] if a["in_pool"])
    left = max(in_pool - leaving, 0)
    gal_config = state["config"].gal
    k = gal_config.k
    empties = not finishes and leaving > 0 and left == 0
    eq10 = not finishes and not empties and leaving > 0 and left < k and bool(gal_config.adaptive_stop)
    return {"finishes": finishes, "leaving": leaving, "left": left, "in_pool": in_pool, "k": k,
            "empties": empties, "eq10": eq10}  # fmt: skip


def pool_text(effect: dict | None, round_index: int) -> str:
    """The pool effect in words ('' when committing adds nothing or finishes anyway)."""
    if not effect or effect["finishes"] or not effect["leaving"]:
        return ""
    n, left = effect["leaving"], effect["left"]
    text = (
        f"{n} anchor{'s' if n != 1 else ''} leave{'s' if n == 1 else ''} the pool "
        f"({left} of {effect['in_pool']} stay{'s' if left == 1 else ''})."
    )
    if effect["empties"]:
        text += (
            f" No anchor is left: round {round_index + 1} trains, draws nothing, and the run finishes. "
            "Accept images in fewer anchors to keep querying."
        )
    elif effect["eq10"]:
        text += (
            f" Fewer than k = {effect['k']} anchors stay, so Eq. 10 ends the run at round {round_index + 1} "
            "in auto mode. Accept images in fewer anchors to keep going."
        )
    return text


def commit_label(preview: dict | None, state: dict | None) -> str:
    effect = pool_effect(preview, state)
    return COMMIT_FINISH if effect and effect["finishes"] else COMMIT_NEXT


def dilution_note(state: dict, n_picks: int) -> str:
    """Human mode: the warning ``gal.advice.dilution`` asks for (added images would outnumber the person's
    references in the next round's batches), in words."""
    found = dilution(state, n_picks)
    if found is None:
        return ""
    real, added, share = found["real"], found["added"], found["share"]
    text = (
        f"Your {real} reference{'s' if real > 1 else ''} would fill only {share:.0%} "
        "of the next round's training "
        f"batches: the {added} added images take the other slots (pooled sampling), whatever their weight. "
        "Accept fewer images, or start the run with “Batches of added images” = real-rate, which keeps your "
        "references' round-1 share."
    )
    return message(esc(text), "warn")
