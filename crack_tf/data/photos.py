"""Whole photos with crack masks: listing, validation, decoding once, and several sources.

Layout of one source (``--data_dir`` entry)::

    <source>/<split>/images/<stem>.{jpg,png,...}
    <source>/<split>/masks/<stem>.png            same stem, same size as the photo

Mask convention (channel 0 of any mode): **255 = crack**, everything else is background; 0/1
masks (maximum value 1) are read as 1 = crack. So UAV75's 204 (planking joint) counts as
background (a hard negative) and uavcrack / deepcrack's 0/255 masks are read as they are.
Near-black pixels (every channel <= ``PADDING_LEVEL``) are treated as padding (patches cut at a
photo's edge): crops and tiles with more than ``max_padding`` of it are not used.

A source without a ``val/`` folder (deepcrack ships only ``train/``) gets a **val fold**: every
source image (the ``source_image`` column of a ``MANIFEST.csv`` beside or inside the source,
else the file stem without a trailing ``-<n>``) goes to val when a hash of its name falls below
``val_fraction``. The fold never changes with the seed or the file order, and no source image
is in both folds.

Cross-validation folds: the split names ``cv<K>_<i>_val`` and ``cv<K>_<i>_train`` (e.g.
``--train_split=cv5_2_train --val_split=cv5_2_val``) pool each source's ``train/`` and ``val/``
photos, deal its source images (groups) into ``K`` folds of near-equal size by the order of their
hash (so no source image is in two folds, and the folds never change with the seed or the file
order), and take fold ``i`` as val and the other ``K - 1`` as train: a K-fold estimate over every
labelled photo of a small source (UAV75's 60) instead of one small val folder.

Bad files are skipped and counted by name (no mask, a mask of another size, an unreadable
image); an empty split or one with no crack pixel anywhere fails before training starts.
TF-free: NumPy and Pillow only.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import threading

import numpy as np

from crack_tf.data.image_np import decode_image_np
from crack_tf.data.listing import IMAGE_EXTS, report_skipped
from crack_tf.data.prep import JOINT_VALUE, read_mask

log = logging.getLogger("crack_tf.data")

CRACK_VALUE = 255
PADDING_LEVEL = 12  # a pixel whose channels are all <= this is padding (black borders of cut patches)
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One entry of ``--data_dir``: a source folder and its sampling weight."""

    name: str
    path: str
    weight: float = 1.0


def parse_sources(spec: str, root: str = "") -> list[SourceSpec]:
    """``"uav75:0.6,uavcrack:0.3,deepcrack:0.1"`` (relative paths under ``root``) -> specs.

    An entry without ``:weight`` gets weight 1; weights are normalised to sum to 1. The source
    name is the folder's base name and must be unique.
    """
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ValueError("--data_dir is empty: give a photos folder or a list like uav75:0.6,uavcrack:0.4")
    parsed = []
    for item in items:
        path, weight = item, 1.0
        head, sep, tail = item.rpartition(":")
        if sep and head and re.fullmatch(r"[0-9.eE+-]+", tail):
            path, weight = head, float(tail)
        if weight <= 0:
            raise ValueError(f"--data_dir entry {item!r}: the weight must be > 0")
        if root and not os.path.isabs(path):
            path = os.path.join(root, path)
        parsed.append((os.path.basename(os.path.normpath(path)), path, weight))
    names = [n for n, _, _ in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"--data_dir names a source twice: {names}")
    total = sum(w for _, _, w in parsed)
    return [SourceSpec(n, p, w / total) for n, p, w in parsed]


# ------------------------------------------------------------------------------------------ listing
def _manifest_groups(source: pathlib.Path) -> dict[str, str]:
    """``source_image`` per photo path (relative to the source) from a MANIFEST.csv, if any."""
    for manifest, prefix in ((source / "MANIFEST.csv", ""), (source.parent / "MANIFEST.csv", source.name + "/")):
        if manifest.is_file():
            with open(manifest, newline="", encoding="utf-8") as f:
                rows = csv.DictReader(f)
                if not rows.fieldnames or not {"path", "source_image"} <= set(rows.fieldnames):
                    continue
                return {r["path"][len(prefix):]: r["source_image"] for r in rows if r["path"].startswith(prefix)}
    return {}


def group_of(stem: str) -> str:
    """Fallback source-image id: the stem without a trailing ``-<n>`` (``11116-3`` -> ``11116``)."""
    return re.sub(r"-\d+$", "", stem)


def _group_hash(group: str) -> float:
    return int.from_bytes(hashlib.sha1(group.encode("utf-8")).digest()[:8], "big") / 2**64


def in_val_fold(group: str, val_fraction: float) -> bool:
    """Stable fold assignment of a source image: its hash, not the seed or the file order."""
    return _group_hash(group) < val_fraction


_CV_SPLIT = re.compile(r"^cv(\d+)_(\d+)_(train|val)$")


def cv_split(split: str) -> tuple[int, int, str] | None:
    """``"cv5_2_val"`` -> ``(5, 2, "val")``; None for other split names; ValueError for a bad fold."""
    m = _CV_SPLIT.match(split)
    if not m:
        return None
    k, i, part = int(m.group(1)), int(m.group(2)), m.group(3)
    if k < 2 or not 0 <= i < k:
        raise ValueError(f"split {split!r}: cross-validation needs K >= 2 and 0 <= fold < K (cv<K>_<fold>_<train|val>)")
    return k, i, part


def cv_folds(groups: list[str], k: int) -> dict[str, int]:
    """Fold of each distinct group: groups sorted by hash and dealt round-robin (sizes differ by <= 1)."""
    ordered = sorted(dict.fromkeys(groups), key=lambda g: (_group_hash(g), g))
    return {g: n % k for n, g in enumerate(ordered)}


def _list_cv(source: SourceSpec, split: str, k: int, i: int, part: str) -> PhotoListing:
    """Fold ``i`` of ``k`` (val) or the other folds (train) over the source's train/ and val/ photos
    (or, without val/, train/'s val fold and the rest: every labelled photo once)."""
    parts = [list_photos(source, "train"), list_photos(source, "val")]  # every labelled photo, once
    pairs = [pair for p in parts for pair in p.pairs]
    groups = [g for p in parts for g in p.groups]
    fold_of = cv_folds(groups, k)
    if len(fold_of) < k:
        raise ValueError(f"photos source {source.name!r}: {len(fold_of)} source images cannot make {k} folds")
    keep = [(fold_of[g] == i) == (part == "val") for g in groups]
    out = PhotoListing(source.name, [pr for pr, kp in zip(pairs, keep) if kp], [g for g, kp in zip(groups, keep) if kp],
                       [s for p in parts for s in p.skipped], f"{'fold' if part == 'val' else 'all but fold'} {i} of {k}")
    if not out.pairs:
        raise ValueError(f"photos source {source.name!r} split {split!r}: no photo in {out.fold}")
    return out


@dataclasses.dataclass
class PhotoListing:
    """Photo / mask pairs of one source split, their source-image groups and skipped files."""

    name: str
    pairs: list[tuple[str, str]]
    groups: list[str]
    skipped: list[tuple[str, str]]
    fold: str  # "folder" (the split's own folder) or "val fold of train/" / "train minus val fold"


def _find_mask(mask_dir: pathlib.Path, stem: str) -> pathlib.Path | None:
    for ext in MASK_EXTS:
        cand = mask_dir / (stem + ext)
        if cand.is_file():
            return cand
    return None


def list_photos(source: SourceSpec, split: str, val_fraction: float = 0.2) -> PhotoListing:
    """The photo / mask pairs of ``split`` of one source (see the module docstring for folds)."""
    root = pathlib.Path(source.path)
    if not root.is_dir():
        raise ValueError(f"photos source {source.name!r}: {root} is not a directory")
    cv = cv_split(split)
    if cv:
        return _list_cv(source, split, *cv)
    folder, fold = root / split, "folder"
    if split in ("val", "train") and (root / "train" / "images").is_dir() and not (root / "val").exists():
        folder, fold = root / "train", "val fold of train/" if split == "val" else "train minus val fold"
    elif not (folder / "images").is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ValueError(f"photos source {source.name!r}: {folder}/images not found (found {found}); expected "
                         f"<source>/{split}/images/* with masks in <source>/{split}/masks/")
    manifest = _manifest_groups(root)
    out = PhotoListing(source.name, [], [], [], fold)
    for p in sorted((folder / "images").iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() not in IMAGE_EXTS:
            out.skipped.append((str(p), f"not an image extension {IMAGE_EXTS}"))
            continue
        group = manifest.get(str(p.relative_to(root)), group_of(p.stem))
        if fold != "folder" and in_val_fold(group, val_fraction) != (split == "val"):
            continue
        mask = _find_mask(folder / "masks", p.stem)
        if mask is None:
            out.skipped.append((str(p), f"no mask {folder / 'masks' / (p.stem + '.png')}"))
            continue
        out.pairs.append((str(p), str(mask)))
        out.groups.append(group)
    if not out.pairs:
        raise ValueError(f"photos source {source.name!r} split {split!r} ({fold}) has no usable photo with a mask "
                         f"({len(out.skipped)} skipped): put photos in {folder}/images and masks in {folder}/masks")
    return out


# ------------------------------------------------------------------------------------------ decoding
@dataclasses.dataclass
class Photo:
    """One decoded photo: RGB uint8 pixels, the crack mask, padding, crack and joint pixel coordinates."""

    path: str
    group: str
    image: np.ndarray  # uint8 [H, W, 3]
    crack: np.ndarray  # bool [H, W]
    padding: np.ndarray | None  # bool [H, W], None when the photo has none
    crack_points: np.ndarray  # int32 [K, 2] (row, col) of crack pixels
    # int32 [J, 2] of marked hard-negative pixels: UAV75's planking joints (mask 204), none in 0/1 masks
    joint_points: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.int32))

    @property
    def shape(self) -> tuple[int, int]:
        return self.crack.shape


def crack_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean crack mask from mask channel 0 (255 = crack; in a 0/1 mask, 1 = crack)."""
    return mask == (1 if mask.max(initial=0) == 1 else CRACK_VALUE)


def load_photo(path: str, mask_path: str, group: str = "") -> Photo:
    """Decodes a photo and its mask; raises ValueError naming the problem."""
    image = decode_image_np(path)
    mask = read_mask(mask_path)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, the photo "
                         f"{image.shape[1]}x{image.shape[0]}")
    crack = crack_mask(mask)
    padding = image.max(axis=-1) <= PADDING_LEVEL
    joint = mask == JOINT_VALUE
    return Photo(path, group, image, crack, padding if padding.any() else None,
                 np.argwhere(crack).astype(np.int32), np.argwhere(joint).astype(np.int32))


@dataclasses.dataclass
class PhotoSet:
    """The decoded photos of one source split."""

    name: str
    photos: list[Photo]
    skipped: list[tuple[str, str]]
    fold: str

    @property
    def crack_pixels(self) -> int:
        return int(sum(len(p.crack_points) for p in self.photos))

    @property
    def nbytes(self) -> int:
        return int(sum(p.image.nbytes + p.crack.nbytes + p.crack_points.nbytes + p.joint_points.nbytes
                       for p in self.photos))


_LOADED: dict[tuple, PhotoSet] = {}
_LOADED_LOCK = threading.Lock()


def _signature(listing: PhotoListing) -> tuple:
    stats = []
    for image, mask in listing.pairs:
        a, b = os.stat(image), os.stat(mask)
        stats.append((a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns))
    return tuple(listing.pairs), tuple(stats)


def load_photo_set(source: SourceSpec, split: str, val_fraction: float = 0.2, threads: int = 8) -> PhotoSet:
    """Lists, validates and decodes one source split, once per process (cached by file identity)."""
    listing = list_photos(source, split, val_fraction)
    key = (os.path.abspath(source.path), split, val_fraction, _signature(listing))
    with _LOADED_LOCK:
        if key in _LOADED:
            return _LOADED[key]

    def load(i: int):
        (image, mask), group = listing.pairs[i], listing.groups[i]
        try:
            return load_photo(image, mask, group)
        except Exception as e:  # noqa: BLE001 - any decoder / size problem means "skip this photo"
            return (image, f"{type(e).__name__}: {str(e)[:160]}")

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(load, range(len(listing.pairs))))
    photos = [r for r in results if isinstance(r, Photo)]
    skipped = listing.skipped + [r for r in results if not isinstance(r, Photo)]
    where = f"photos source {source.name!r} split {split!r}"
    report_skipped(skipped, where)
    if not photos:
        raise ValueError(f"{where}: no photo could be read ({len(skipped)} skipped, e.g. {skipped[:2]})")
    out = PhotoSet(source.name, photos, skipped, listing.fold)
    with _LOADED_LOCK:
        if len(_LOADED) > 16:
            _LOADED.clear()
        _LOADED[key] = out
    return out


def load_sources(specs: list[SourceSpec], split: str, val_fraction: float = 0.2,
                 need_cracks: bool = True) -> list[PhotoSet]:
    """Every source's ``split``; fails fast when no photo of any source holds a crack pixel."""
    sets = [load_photo_set(s, split, val_fraction) for s in specs]
    if need_cracks and not any(s.crack_pixels for s in sets):
        raise ValueError(f"no crack pixel in any mask of split {split!r} of {[s.name for s in sets]}: "
                         f"masks must mark cracks with 255 (or 1 in 0/1 masks)")
    return sets
