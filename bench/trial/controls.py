"""The positive control (issue 29): the strategy picks its images as usual, then each pick is replaced by a
real procedural render of the subject in the picked anchor's scene — same count, same weights, same
captions — so the run shows what perfect added images would do in this world.

The swap happens after ``Studio.commit_round`` and before the next round trains: it rewrites the files of
the references the round added (files this bench's own run wrote, in its own run folder) and their
recorded sha256. No engine change is needed: training reads the reference files when the next round starts.
"""

from __future__ import annotations

import hashlib

import numpy as np

import storage
from gal.toyworld.judge import prompt_truth
from gal.toyworld.world import Scenario, Spec, render


def truth_spec(scenario: Scenario, prompt: str) -> Spec:
    """The faithful drawing of an anchor prompt: the subject (or style) in the scene the prompt names."""
    t = prompt_truth(scenario, prompt)
    if t.scene is None:
        raise ValueError(f"anchor prompt {prompt!r} names no scene; the positive control needs one")
    return Spec(t.shape, t.colour, t.pattern, t.scene)


def swap_added_for_renders(
    studio, run_id: str, scenario: Scenario, round_index: int, seed: int
) -> list[dict]:
    """Replace the references added in ``round_index`` by renders of their anchors' truth. Returns one row
    per swapped reference: ``{file, prompt, weight, spec}``."""
    folder = studio.folder(run_id)
    swapped = []
    with studio.db() as db, storage.transaction(db):
        added = [
            x
            for x in storage.list_references(db, run_id)
            if x["source"] == "synthetic" and x["round_added"] == round_index
        ]
        for i, ref in enumerate(sorted(added, key=lambda x: x["file"])):
            spec = truth_spec(scenario, ref["prompt"])
            size = folder.open_rgb(ref["file"]).size[0]
            image = render(spec, np.random.default_rng([seed, 11, round_index, i]), size)
            path = folder.path(ref["file"])
            image.save(path)
            db.execute(
                "UPDATE refs SET sha256 = ? WHERE run_id = ? AND file = ?",
                [hashlib.sha256(path.read_bytes()).hexdigest(), run_id, ref["file"]],
            )
            swapped.append(
                {"file": ref["file"], "prompt": ref["prompt"], "weight": ref["weight"], "spec": spec.__dict__}
            )
    return swapped
