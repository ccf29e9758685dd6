"""Lists and validates image files so no pipeline ever meets an undecodable file.

Layout: ``<root>/<split>/{crack,background}/**/*.{png,jpg,jpeg,bmp,tif,tiff,gif,webp}`` (any case).
Labels come from ``crack_tf.CLASS_NAMES`` (background = 0, crack = 1), never from folder order.
Bad files are skipped with a reason (``skipped``) and a logged warning naming them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import warnings

from PIL import Image

from crack_tf.choices import CLASS_NAMES
from crack_tf.data.config import DataConfig, check_two_classes, class_counts

log = logging.getLogger("crack_tf.data")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
TF_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")  # formats tf.io.decode_image reads like PIL does
_MAX_LOGGED = 20


@dataclasses.dataclass
class FileCheck:
    reason: str | None  # None = usable
    needs_pil: bool = False  # TF cannot decode it natively (TIFF, palette BMP...): decode with PIL
    size: tuple[int, int] = (0, 0)  # (width, height)


@dataclasses.dataclass
class Listing:
    paths: list[str]
    labels: list[int]
    needs_pil: list[bool]
    skipped: list[tuple[str, str]]


def _jpeg_complete(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        tail = f.read().rstrip(b"\x00\r\n ")
    return tail.endswith(b"\xff\xd9")


def check_file(path: str | os.PathLike, config: DataConfig | None = None) -> FileCheck:
    """Cheap validation: header, size limits, PNG CRCs (verify), JPEG end marker; full decode only
    when the cheap checks are inconclusive, for non-TF formats or with ``validate="full"``."""
    config = config or DataConfig()
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            return FileCheck("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                fmt, mode, (w, h) = img.format, img.mode, img.size
                if min(w, h) < config.min_side:
                    return FileCheck(f"too small ({w}x{h} < min_side={config.min_side})", size=(w, h))
                if w * h > config.max_pixels:
                    return FileCheck(f"too large ({w}x{h} > max_pixels={config.max_pixels})", size=(w, h))
                needs_pil = fmt not in TF_FORMATS and not (fmt == "BMP" and mode in ("RGB", "RGBA"))
                full = config.validate == "full" or needs_pil
                if fmt == "JPEG" and not full:
                    full = not _jpeg_complete(path)
                if fmt == "PNG" and not full:
                    img.verify()  # walks all chunks and checks CRCs: catches truncation
            if full:
                with Image.open(path) as img:
                    img.load()
    except Exception as e:  # noqa: BLE001 - any decoder error means "skip this file"
        return FileCheck(f"unreadable image ({type(e).__name__}: {str(e)[:120]})")
    return FileCheck(None, needs_pil=needs_pil, size=(w, h))


_REPORTED: set[tuple[str, str]] = set()


def report_skipped(skipped: list[tuple[str, str]], where: str) -> None:
    """Logs skipped files (at most _MAX_LOGGED by name) once: a re-listing of the same folder
    (the trainer's next epoch) with nothing new skipped logs nothing."""
    if not skipped or _REPORTED.issuperset(skipped):
        return
    _REPORTED.update(skipped)
    for path, reason in skipped[:_MAX_LOGGED]:
        log.warning("skipped %s: %s", path, reason)
    if len(skipped) > _MAX_LOGGED:
        log.warning("... and %d more skipped files", len(skipped) - _MAX_LOGGED)
    if skipped:
        log.warning("%s: skipped %d bad file(s)", where, len(skipped))


def split_dir(root: str | os.PathLike, split: str) -> pathlib.Path:
    root = pathlib.Path(root)
    if not str(root) or not root.is_dir():
        raise ValueError(f"data path {str(root)!r} is not a directory; set DataConfig.path / --data_path")
    d = root / split
    if not d.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ValueError(f"split folder {d} not found (found {found}); expected <path>/{split}/{{crack,background}}")
    present = {p.name for p in d.iterdir() if p.is_dir()}
    missing = [c for c in CLASS_NAMES if c not in present]
    if missing:
        raise ValueError(
            f"missing class folder(s) {[str(d / m) for m in missing]} (found {sorted(present)}); "
            f"create {split}/{{{','.join(CLASS_NAMES)}}} and put the images of each class there"
        )
    return d


def candidate_files(class_dir: pathlib.Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files under ``class_dir`` (sorted) and non-image files as skipped entries."""
    files, skipped = [], []
    for p in sorted(class_dir.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() in IMAGE_EXTS:
            files.append(str(p))
        else:
            skipped.append((str(p), f"not an image extension {IMAGE_EXTS}"))
    return files, skipped


#: Results of check_file by (path, size, mtime_ns, validation settings): the trainer lists a
#: split again every epoch, and re-reading every header of a large folder would cost seconds.
#: A changed file (size or mtime) is checked again. Bounded: cleared when it reaches the limit.
_CHECKED: dict[tuple, FileCheck] = {}
_CHECKED_MAX = 2_000_000


def _check_key(path: str, config: DataConfig) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # let check_file report it
    return (path, st.st_size, st.st_mtime_ns, config.validate, config.min_side, config.max_pixels)


def check_files(paths: list[str], config: DataConfig, threads: int = 8) -> list[FileCheck]:
    """check_file of every path (threaded); files unchanged since an earlier call are not re-read."""
    keys = [_check_key(p, config) for p in paths]
    todo = [p for p, k in zip(paths, keys) if k is None or k not in _CHECKED]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        fresh = dict(zip(todo, pool.map(lambda p: check_file(p, config), todo)))
    out = [fresh[p] if p in fresh else _CHECKED[k] for p, k in zip(paths, keys)]
    if len(_CHECKED) + len(fresh) > _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED.update((k, chk) for k, chk in zip(keys, out) if k is not None)
    return out


def list_folder(root: str | os.PathLike, split: str, config: DataConfig | None = None) -> Listing:
    """Validated (path, label) listing of ``<root>/<split>``; raises ValueError with a fix if the
    split is missing, a class folder is missing, or a class ends up with no usable image."""
    config = config or DataConfig()
    d = split_dir(root, split)
    out = Listing([], [], [], [])
    for label, name in enumerate(CLASS_NAMES):
        files, skipped = candidate_files(d / name)
        out.skipped += skipped
        for path, chk in zip(files, check_files(files, config)):
            if chk.reason:
                out.skipped.append((path, chk.reason))
            else:
                out.paths.append(path)
                out.labels.append(label)
                out.needs_pil.append(chk.needs_pil)
    report_skipped(out.skipped, f"{d}")
    if not out.paths:
        raise ValueError(f"no usable images under {d}/{{{','.join(CLASS_NAMES)}}} ({len(out.skipped)} skipped)")
    check_two_classes(class_counts(out.labels), str(d))
    return out
