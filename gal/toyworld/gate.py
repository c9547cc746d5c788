"""The "known" scenarios' gate: are a round's aligned drawings of the subject (or style) as close to the
references as real renders of it in those scenes are? (Self-generated images can only teach if they are.)

IMG-ALN (the mean CLIP image-image cosine to the real references) of

- ``generated``: round r's anchor images the oracle judged aligned (Eq. 8 Φ = 0), and of
- ``real``: procedural renders of the references' subject (same shape, colour, pattern) in the anchors'
  scenes, or for a style its colour and pattern on the anchors' shapes in their scenes
  (:func:`gal.toyworld.world.truth_specs`), ``n`` each — what a faithful drawing there would look like.

The gate passes when ``generated >= real``; ``ratio`` = generated / real.
"""

from __future__ import annotations

import numpy as np

import storage
from gal.toyworld.world import Scenario, subject_renders, truth_specs


def subject_gate(
    studio, run_id: str, scenario: Scenario, round_index: int = 1, n: int = 8, seed: int = 0
) -> dict:
    """Measure the gate on a run's round ``round_index`` (judged) of ``scenario``."""
    folder = studio.folder(run_id)
    state = studio.review_state(run_id, round_index)
    aligned = [
        folder.open_rgb(im["file"])
        for a in state["anchors"]
        for im in a["images"]
        if im["final_verdict"] == 0
    ]
    with studio.db() as db:
        config = storage.get_run(db, run_id)["config"]
        refs = [
            folder.open_rgb(x["file"]) for x in storage.list_references(db, run_id) if x["source"] == "real"
        ]
    real = subject_renders(truth_specs(scenario), n, seed=seed)
    oracle = studio.oracle(config["oracle"])
    gen = float(np.mean(oracle.image_similarities(aligned, refs))) if aligned else float("nan")
    truth = float(np.mean(oracle.image_similarities(real, refs)))
    n_images = sum(len(a["images"]) for a in state["anchors"])
    return {
        "generated": gen,
        "real": truth,
        "ratio": gen / truth if truth else float("nan"),
        "aligned": len(aligned),
        "images": n_images,
        "passes": bool(aligned) and gen >= truth,
    }
