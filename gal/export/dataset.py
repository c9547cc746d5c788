"""The export's dataset folder (references with captions and weights) and the model card's sample images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gal.references import mask_file
from gal.runfolder import safe_join
from gal.training import TRAINING_SET

SAMPLES = 4  # images of the exported round copied into the export for the model card's widget


def kept_captions(adapter_dir: Path) -> dict[str, str]:
    """The caption each reference file trained on in a round ({} for rounds trained before it was kept)."""
    path = adapter_dir / TRAINING_SET
    try:
        return {x["file"]: x["caption"] for x in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_dataset(
    folder: Path, run_dir: Path, references: list[dict], captions: dict[str, str], trained: set[str]
) -> None:
    """Every reference with its caption: ``metadata.jsonl`` (Hugging Face imagefolder) and a ``.txt`` beside
    each image (OneTrainer and ai-toolkit read it; kohya's sd-scripts with ``--caption_extension .txt``).
    The caption is the one the exported round trained on (``train.captions``); an image added in the last
    round (not trained on yet), or a round trained before captions were kept, has its prompt
    (``caption_kept`` false)."""
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for ref in references:
            name = Path(ref["file"]).name
            shutil.copyfile(safe_join(run_dir, ref["file"]), folder / name)
            mask = mask_file(ref["file"]).as_posix()  # a masked reference's mask, as it was given
            if safe_join(run_dir, mask).is_file():
                shutil.copyfile(safe_join(run_dir, mask), folder / Path(mask).name)
            caption = captions.get(ref["file"], ref["prompt"])
            (folder / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
            row = {
                "file_name": name,
                "prompt": ref["prompt"],
                "caption": caption,
                "caption_kept": ref["file"] in captions,
                "trained": ref["file"] in trained,
                "weight": ref["weight"],
                "round": ref["round_added"],
                "source": ref["source"],
                "sha256": ref["sha256"],
            }
            meta.write(json.dumps(row) + "\n")


def _copy_samples(staging: Path, run_dir: Path, images: list[dict], stem: str) -> list[dict]:
    """A few images of the exported round (held-out eval prompts first, one per prompt) for the card."""
    chosen, prompts = [], set()
    for im in sorted(images, key=lambda x: (x["kind"] != "eval", x["anchor_index"] or 0, x["slot"])):
        if len(chosen) == SAMPLES:
            break
        if im.get("prompt") in prompts:
            continue
        src = safe_join(run_dir, im["file"])
        if not src.is_file():
            continue
        prompts.add(im.get("prompt"))
        chosen.append((im, src))
    if not chosen:
        return []
    (staging / "samples").mkdir()
    out = []
    for i, (im, src) in enumerate(chosen):
        name = f"samples/{stem}-{i}{src.suffix or '.png'}"
        shutil.copyfile(src, staging / name)
        out.append({"file": name, "prompt": im.get("prompt") or "", "seed": im.get("seed")})
    return out
