"""TensorBoard event files of a run (``train.log_dir``): what ``tensorboard --logdir`` and other viewers read.

One subfolder per run (``<log_dir>/<run id>``). Training writes ``train/loss`` and ``train/lr`` per optimiser
step (the step counts on across rounds: round r's step s is ``(r - 1) · steps + s``); a committed round
writes ``round/txt_aln``, ``round/img_aln``, ``round/ovf`` and ``round/delta`` (Δ, the weight of its added
images) at step r, and ``round/samples``: a grid of the round's held-out evaluation images. SQLite stays the
record; these files are a copy for the viewers. Only the main process writes them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

# round metrics key -> TensorBoard tag
ROUND_TAGS = {
    "txt_aln": "round/txt_aln",
    "img_aln": "round/img_aln",
    "ovf": "round/ovf",
    "weight": "round/delta",
}


def run_log_dir(log_dir: str | Path, run_id: str) -> Path:
    return Path(log_dir).expanduser() / run_id


def _writer(log_dir: str | Path, run_id: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's writer needs the tensorboard package
        raise ValueError("train.log_dir needs the tensorboard package: pip install tensorboard") from err
    folder = run_log_dir(log_dir, run_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"train.log_dir {str(log_dir)!r} cannot be written ({err}): choose another folder"
        ) from err
    return SummaryWriter(log_dir=str(folder))


def log_training(
    log_dir: str | Path,
    run_id: str,
    round_index: int,
    steps_per_round: int,
    losses: list[float],
    lrs: list[float],
) -> None:
    """A round's per-step loss and learning rate."""
    writer = _writer(log_dir, run_id)
    try:
        first = (round_index - 1) * steps_per_round
        for i, loss in enumerate(losses):
            writer.add_scalar("train/loss", loss, first + i + 1)
        for i, lr in enumerate(lrs):
            writer.add_scalar("train/lr", lr, first + i + 1)
    finally:
        writer.close()


def grid(images: list[Image.Image], columns: int = 4) -> Image.Image:
    """The images side by side, ``columns`` a row, each at the first one's size."""
    if not images:
        raise ValueError("no images to lay out")
    w, h = images[0].size
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * w, rows * h))
    for i, image in enumerate(images):
        sheet.paste(image.convert("RGB").resize((w, h)), ((i % columns) * w, (i // columns) * h))
    return sheet


def log_round(
    log_dir: str | Path, run_id: str, round_index: int, metrics: dict, samples: list[Image.Image]
) -> None:
    """A committed round's metrics (those it has) and its sample grid."""
    writer = _writer(log_dir, run_id)
    try:
        for key, tag in ROUND_TAGS.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(tag, float(value), round_index)
        if samples:
            writer.add_image("round/samples", np.asarray(grid(samples)), round_index, dataformats="HWC")
    finally:
        writer.close()


def log_committed_round(db, folder, round_index: int) -> None:
    """After ``selection.commit``: the round's metrics and eval images, when the run logs to TensorBoard."""
    import storage
    from gal.config import RunConfig

    run = storage.get_run(db, folder.run_id)
    log_dir = RunConfig.from_dict(run["config"]).train.log_dir
    if not log_dir:
        return
    rnd = storage.get_round(db, folder.run_id, round_index)
    shown = storage.list_images(db, folder.run_id, round_index, kind="eval")
    if not shown:  # no held-out evaluation: the round's generated images
        shown = storage.list_images(db, folder.run_id, round_index)
    samples = [folder.open_rgb(im["file"]) for im in sorted(shown, key=lambda im: im["slot"])[:16]]
    log_round(log_dir, folder.run_id, round_index, rnd.get("metrics") or {}, samples)
