"""What the review and history views advise, as data: the UI only words and draws it.

- :func:`dilution`: in human mode under pooled sampling, whether the added images would outnumber the
  person's references in the next round's batches (each added image takes a batch slot whatever its
  weight, so the references train less: docs/bench/table1.md, accepting every aligned image doubled
  round-2 OVF). The automatic strategies add k a round by design and are not checked.
- :func:`compare_anchor`: which anchor History compares across rounds by default.
"""

from __future__ import annotations


def dilution(state: dict, n_picks: int) -> dict | None:
    """``{"real", "added", "share"}`` when the next round's added images would outnumber the real references
    under pooled sampling (``state``: ``Studio.review_state``), else None."""
    counters, train = state["counters"], state["config"].train
    real, added = counters["real_refs"], counters["added_refs"] + n_picks
    if train.reference_sampling != "pooled" or not real or added <= real:
        return None
    return {"real": real, "added": added, "share": real / (real + added)}


def compare_anchor(states: dict[int, dict], selections: list[dict], anchor: int | None) -> int | None:
    """The anchor History compares: ``anchor`` when the latest round has it; else the anchor the last
    commit picked (what changed most recently); else, before any pick, the anchor drawn in the most rounds
    (the longest side-by-side), the lowest index on a tie. ``states``: round index -> review state."""
    anchors = states[max(states)]["anchors"] if states else []
    known = {a["anchor_index"] for a in anchors}
    if anchor in known:
        return anchor
    recent = selections[-1]["anchor_index"] if selections else None
    if recent in known:
        return recent
    drawn = {
        a["anchor_index"]: sum(
            1
            for s in states.values()
            for b in s["anchors"]
            if b["anchor_index"] == a["anchor_index"] and b["images"]
        )
        for a in anchors
    }
    return max(drawn, key=lambda i: (drawn[i], -i)) if drawn else None
