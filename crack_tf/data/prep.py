"""Dataset preparation helpers (NumPy only): tiling, blur score, mask labels, split by photo.

Used by ``tools/prepare_tiles.py``; every function is pure so the tool is deterministic.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
from PIL import Image

from crack_tf.data.listing import IMAGE_EXTS

CRACK_VALUE = 255  # uav75 masks, channel 0: 255 = crack, 204 = planking joint (background), 0 = background
JOINT_VALUE = 204  # uav75 masks: a planking joint, background that looks like a crack (a hard negative)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def laplacian_variance(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the luma (OpenCV ``Laplacian(ksize=1).var()``).
    Low values mean few edges: blurred (or featureless) tiles."""
    img = np.asarray(image, dtype=np.float64)
    gray = img @ np.array([0.299, 0.587, 0.114]) if img.ndim == 3 else img
    lap = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]
    return float(lap.var()) if lap.size else 0.0


def tile_origins(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the ``size`` x ``size`` tiles on a ``stride`` grid fully inside the image."""
    if size < 1 or stride < 1:
        raise ValueError(f"tile size ({size}) and stride ({stride}) must be positive")
    return [(y, x) for y in range(0, height - size + 1, stride) for x in range(0, width - size + 1, stride)]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Mask channel 0 as uint8 [H, W] (RGBA / RGB / L masks alike)."""
    with Image.open(path) as m:
        arr = np.asarray(m)
    return arr[..., 0] if arr.ndim == 3 else arr


def mask_label(mask_tile: np.ndarray, min_crack_pct: float, min_crack_pixels: int = 1) -> int | None:
    """1 = crack (>= ``min_crack_pct`` % and >= ``min_crack_pixels`` crack pixels), 0 = background
    (no crack pixel; planking joints allowed), None = ambiguous (some crack pixels, too few)."""
    n = int((mask_tile == CRACK_VALUE).sum())
    if n == 0:
        return 0
    if n >= max(min_crack_pixels, 1) and 100.0 * n / mask_tile.size >= min_crack_pct:
        return 1
    return None


def split_by_photo(photo_ids: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Assigns each photo (not tile) to one split: a seeded permutation of the sorted ids cut by
    ``fractions`` (normalised; rounding favours the earlier splits). Same seed -> same split."""
    ids = sorted(set(photo_ids))
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be >= 0 with a positive sum, got {fractions}")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    out, start, acc = {}, 0, 0.0
    names = list(fractions)
    for k, name in enumerate(names):
        acc += fractions[name] / total
        stop = len(ids) if k == len(names) - 1 else int(round(acc * len(ids)))
        for pid in order[start:stop]:
            out[pid] = name
        start = stop
    return out


def find_photos(input_dirs: list[str]) -> list[pathlib.Path]:
    """Image files under the input folders (recursive, sorted), excluding any ``masks`` folder."""
    photos = []
    for d in input_dirs:
        root = pathlib.Path(d)
        if not root.is_dir():
            raise ValueError(f"--input_dir {d!r} is not a directory")
        photos += [
            p
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS and "masks" not in p.relative_to(root).parts
        ]
    return photos


def find_mask(photo: pathlib.Path, mask_dirs: list[str]) -> pathlib.Path | None:
    """Same-stem mask in ``mask_dirs`` or, uav75-style, in ``../masks/`` next to ``images/``."""
    dirs = [pathlib.Path(d) for d in mask_dirs] + [photo.parent.parent / "masks", photo.parent / "masks"]
    for d in dirs:
        for ext in (".png", ".PNG", ".bmp", ".tif", ".jpg"):
            cand = d / (photo.stem + ext)
            if cand.is_file():
                return cand
    return None
