"""The caption each reference trains on (``train.captions``): its prompt ("plain"), the prompt naming its
non-SoI content ("informative", SID's seed) or the VLM judge's description of what surrounds the subject
("vlm")."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gal import judges
from gal.round import Round


def informative_caption(prompt: str, non_soi_text: str) -> str:
    """A real reference's caption that names its non-SoI content (SID seed): the prompt, then the words of
    the non-SoI caption after its longest prefix the prompt already holds in order.

    ``("a <sks> star", "a star on stairs")`` -> ``"a <sks> star on stairs"``; a prompt that already names
    it (``"a <sks> star on stairs"``) is returned unchanged.
    """
    words, extra = prompt.split(), non_soi_text.split()
    at = 0  # how many leading non-SoI words the prompt holds, in order
    pos = 0
    lowered = [w.lower() for w in words]
    while at < len(extra):
        try:
            pos = lowered.index(extra[at].lower(), pos) + 1
        except ValueError:
            break
        at += 1
    return " ".join(words + extra[at:])


def training_captions(rnd: Round, refs: list[dict], images: list[Image.Image]) -> list[str]:
    """The caption each reference trains on (``train.captions``): its prompt ("plain"), or ("informative")
    real references' prompts naming their non-SoI content and added images captioned by what the oracle
    sees — the generator prompt of the anchor (or reference) text the oracle scores highest."""
    config = rnd.config
    if config.train.captions == "vlm":
        return vlm_captions(rnd, refs, images)
    if config.train.captions != "informative":
        return [x["prompt"] for x in refs]
    real = [x for x in refs if x["source"] == "real"]
    captions = [
        informative_caption(x["prompt"], x["non_soi_text"]) if x["source"] == "real" else None for x in refs
    ]
    added = [i for i, x in enumerate(refs) if x["source"] != "real"]
    if added:
        # what the oracle can read, each with the prompt that would draw it
        readings = dict(zip(config.anchor_oracle_texts(), config.anchor_prompts(), strict=True))
        for x in real:
            readings.setdefault(x["non_soi_text"], informative_caption(x["prompt"], x["non_soi_text"]))
        texts = list(readings)
        sims = rnd.models.oracle(config.oracle).text_similarities([images[i] for i in added], texts)  # [n, t]
        for i, row in zip(added, sims, strict=True):
            captions[i] = readings[texts[int(np.argmax(row))]]
    return captions


def vlm_captions(rnd: Round, refs: list[dict], images: list[Image.Image]) -> list[str]:
    """``train.captions: vlm``: each reference's prompt, then what the run's VLM judge says surrounds the
    subject in its image (SID: the class name and the non-subject content, not the subject's details)."""
    name = judges.uses_vlm(rnd.config.oracle)
    if name is None:
        raise ValueError(
            f"train.captions vlm needs a VLM judge; oracle is {rnd.config.oracle!r}: use vlm:tiny"
        )
    top = rnd.models.judge(rnd.config.oracle)
    vlm = next((m for m in getattr(top, "members", [top]) if m.name == name), None) or rnd.models.judge(name)
    subject = rnd.config.anchor_subject()
    captions = []
    for i, (x, image) in enumerate(zip(refs, images, strict=True)):
        rnd.report("captions", i, len(refs), round=rnd.index)
        words = vlm.describe(image, subject)
        captions.append(f"{x['prompt']}, {words}" if words else x["prompt"])
    return captions
