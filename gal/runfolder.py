"""A run's folder: its layout, run ids, path guards and safe image loading.

Every file a run writes lives under ``<runs_root>/<run_id>/`` at a path named here, so the engine, the
UI and export agree on the layout and no stored path can leave the folder.
"""

from __future__ import annotations

import errno
import io
import re
import secrets
import warnings
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

MAX_IMAGE_PIXELS = 40_000_000  # a reference larger than this is refused (decompression bombs)
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def disk_full(err: BaseException) -> bool:
    """A full disk or quota, however the writer reports it (safetensors raises SafetensorError
    "I/O error: No space left on device (os error 28)", not OSError)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return any(
        s in text for s in ("No space left", "StorageFull", "os error 28", "os error 122", "Disk quota")
    )


def as_disk_full(err: BaseException, path: Path | str, what: str) -> OSError:
    """``err`` (a disk-full error of any type) as ``OSError(ENOSPC)`` naming what was being written."""
    return OSError(errno.ENOSPC, f"No space left on device while writing {what}", str(path))


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}: letters, digits, '.', '_' and '-' only")
    return run_id


def new_run_id(name: str) -> str:
    """``<slug of the name>-<UTC time>-<4 hex>``: sortable, readable, and unique across processes."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:32] or "run"
    return f"{slug}-{stamp}-{secrets.token_hex(2)}"


def safe_join(root: Path, relative: str) -> Path:
    """Resolve ``relative`` under ``root``, refusing names that try to leave it."""
    root = root.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"path {relative!r} leaves the run folder {root}: refusing it")
    return target


def max_image_bytes(width: int, height: int) -> int:
    """The most bytes an image file of this size may hold: its raw RGBA pixels plus 16 MB of metadata
    (an uncompressed file is about that; anything larger hides something else)."""
    return min(width * height, MAX_IMAGE_PIXELS) * 4 + 16_000_000


def load_image(path: str | Path) -> tuple[Image.Image, bytes]:
    """Open an image file safely: refuse non-images, corrupt files and decompression bombs."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference {path} does not exist or is not a file")
    # The header first, from the file (PIL reads a few KB): a 400 MB non-image is refused before it is read
    # whole into memory, and an image's bytes are bounded by its pixels before they are read.
    try:
        with Image.open(path) as header:
            w, h = header.size
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path.name} is too large to decode safely ({err}): downscale it first") from err
    except Exception as err:  # UnidentifiedImageError, OSError, SyntaxError...: not an image PIL can read
        raise ValueError(
            f"{path.name} is not a readable image ({type(err).__name__}): use a PNG, JPEG or WebP"
        ) from err
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{path.name} is {w}×{h} ({w * h / 1e6:.0f} MP), over the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit: downscale it first"
        )
    size, most = path.stat().st_size, max_image_bytes(w, h)
    if size > most:
        raise ValueError(
            f"{path.name} is {size / 1e6:.0f} MB for a {w}×{h} image (at most {most / 1e6:.0f} MB): "
            "re-save it as a plain PNG, JPEG or WebP"
        )
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ValueError(
                        f"{path.name} is {w}×{h} ({w * h / 1e6:.0f} MP), over the "
                        f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit: downscale it first"
                    )
                probe.verify()
            image = Image.open(io.BytesIO(data))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError(
                f"{path.name} is too large to decode safely ({err}): downscale it first"
            ) from err
        except ValueError:
            raise
        except Exception as err:  # PIL raises several types for broken files
            raise ValueError(
                f"{path.name} is not a readable image ({type(err).__name__}): use a PNG, JPEG or WebP"
            ) from err
    return image.convert("RGB"), data


# Names Windows reserves in every folder, with any extension ("nul.json" too). Refused on every OS: a run
# folder or an export is copied between machines, and a file Windows cannot create breaks that copy.
WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{i}" for port in ("COM", "LPT") for i in [*"123456789", "¹", "²", "³"]]
)
MAX_NAME = 100  # characters; file systems allow 255 bytes, which UTF-8 reaches at ~64 CJK characters


def check_name(name: str, what: str = "name") -> str:
    """``name`` as one safe file or folder name, or a ValueError naming the rule it breaks: not empty,
    not ``.``/``..`` or hidden (leading dot), no path separators, NUL or control characters, no trailing
    dot or space (Windows drops them, so two names would meet), not a Windows reserved name, at most
    ``MAX_NAME`` characters."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"the {what} is empty: give it a name, e.g. my-cats")
    fix = "use letters, digits, spaces, '-', '_' and '.' inside the name"
    if name in (".", "..") or name.startswith("."):
        raise ValueError(f"the {what} {name!r} starts with a dot (., .. or a hidden file): {fix}")
    if any(sep in name for sep in ("/", "\\")):
        raise ValueError(f"the {what} {name!r} holds a path separator: one name, not a path — {fix}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"the {what} {name!r} holds a NUL or control character: {fix}")
    if name != name.rstrip(". "):
        raise ValueError(f"the {what} {name!r} ends with a dot or a space: remove it")
    if name.split(".")[0].strip().upper() in WINDOWS_RESERVED:
        raise ValueError(
            f"the {what} {name!r} is a name Windows reserves (CON, NUL, COM1, ...): choose another"
        )
    if len(name) > MAX_NAME:
        raise ValueError(f"the {what} is {len(name)} characters long: at most {MAX_NAME}")
    return name


def safe_name(root: Path, name: str, what: str = "name", *, suffix: str = "") -> Path:
    """``root / (name + suffix)`` for a name that becomes a path (a preset, an upload, an export): the name
    passes :func:`check_name`, and an existing entry there must not be a symlink (writing through one, or
    deleting what it points to, would reach outside ``root``). The path stays under ``root`` once resolved."""
    check_name(name, what)
    name = name + suffix
    target = Path(root) / name
    if target.is_symlink():
        raise ValueError(
            f"the {what} {name!r} is a symbolic link in {root}: refusing to write through it; remove the "
            "link or choose another name"
        )
    safe_join(Path(root), name)  # belt and braces: resolves inside root
    return target


class RunFolder:
    """The files of one run. Paths returned by the ``*_file`` methods are relative (what SQLite stores)."""

    def __init__(self, runs_root: Path, run_id: str):
        self.run_id = check_run_id(run_id)
        self.root = Path(runs_root) / run_id

    def path(self, relative: str) -> Path:
        """The absolute path of a stored relative path, refusing one that leaves the folder."""
        return safe_join(self.root, relative)

    def open_rgb(self, relative: str) -> Image.Image:
        with Image.open(self.path(relative)) as image:
            return image.convert("RGB")

    # -- the layout ---------------------------------------------------------------------------
    @staticmethod
    def real_reference_file(i: int) -> str:
        return f"references/real_{i:02d}.png"

    @staticmethod
    def added_reference_file(round_index: int, anchor_index: int, slot: int) -> str:
        return f"references/r{round_index:02d}_a{anchor_index:02d}_s{slot:02d}.png"

    @staticmethod
    def adapter_dir(round_index: int) -> str:
        return f"rounds/r{round_index:02d}/adapter"

    @staticmethod
    def image_file(round_index: int, anchor_index: int, slot: int) -> str:
        return f"rounds/r{round_index:02d}/images/a{anchor_index:02d}_s{slot:02d}.png"

    @staticmethod
    def preview_file(round_index: int, step: int, anchor_index: int) -> str:
        return f"rounds/r{round_index:02d}/previews/s{step:06d}_a{anchor_index:02d}.png"

    @staticmethod
    def losses_file(round_index: int) -> str:
        """A round's per-step training loss (the Progress tab draws every round's curve)."""
        return f"rounds/r{round_index:02d}/train_losses.json"

    @staticmethod
    def embeddings_file(round_index: int) -> str:
        """The oracle's image embeddings of a round's images (the judge step writes, selection reads)."""
        return f"rounds/r{round_index:02d}/embeddings.npz"

    @staticmethod
    def eval_file(round_index: int, i: int) -> str:
        return f"rounds/r{round_index:02d}/eval/e{i:03d}.png"

    @property
    def class_images(self) -> Path:
        return self.root / "class_images"

    def write_atomic(self, relative: str, write) -> Path:
        """Write ``relative`` through ``write(tmp_path)``, then move it into place: a kill leaves the old file
        or the new one, never half of one."""
        target = self.path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
        write(tmp)
        tmp.replace(target)
        return target

    def save(self, image: Image.Image, relative: str) -> None:
        target = self.path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)
