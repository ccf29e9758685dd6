"""Unlabelled photos: plain random crops (the target statistics of AdaBN) and SimCLR view pairs.

The photos come from folders of image files (:func:`read_folders`) or from photo sources' splits
with their masks ignored (:func:`from_sources`: ``--data_dir`` syntax, so a source without
``val/`` gives its train fold only, never the val fold). Crops are pure functions of
``(seed, index)``, like the labelled training crops, and rendered by the same Pillow code
(:func:`crack_tf.data.crops.render_crop`). Crops with more than ``max_padding`` near-black
padding are redrawn (a few tries), as in the photos source. TF-free.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from crack_tf.data.crops import CropOptions, render_crop
from crack_tf.data.photos import PADDING_LEVEL, load_sources, parse_sources

SALT_CROPS, SALT_VIEWS = 0xADA, 0x51C
# SimCLR's views: stronger colour changes than the supervised crops (CropOptions fields).
SIMCLR_AUGMENT = {"brightness": 0.12, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "grayscale": 0.2,
                  "gamma": 0.25, "blur": 0.3}
_TRIES = 16


@dataclasses.dataclass
class UnlabelledPhotos:
    """Decoded RGB uint8 photos, their files, and the files that could not be read."""

    images: list[np.ndarray]
    paths: list[str]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def digest(self) -> str:
        """SHA-256 over the sorted SHA-256 of every photo file (independent of paths and order)."""
        from crack_tf.inspection.scan import file_sha256

        return hashlib.sha256("\n".join(sorted(file_sha256(p) for p in self.paths)).encode()).hexdigest()


def read_folders(inputs: list[str], recursive: bool = False, max_megapixels: float | None = None) -> UnlabelledPhotos:
    """Every image file of ``inputs`` (files or folders), EXIF orientation applied; unreadable files
    are skipped by name. Raises ValueError when no photo could be read."""
    from crack_tf.inspection.photo_io import PIL_BOMB_MEGAPIXELS, PhotoError, read_photo
    from crack_tf.inspection.scan import iter_images

    out = UnlabelledPhotos([], [])
    for path, problem in iter_images(inputs, recursive):
        try:
            if problem:
                raise PhotoError(problem)
            out.images.append(read_photo(path, max_megapixels or PIL_BOMB_MEGAPIXELS))
            out.paths.append(path)
        except PhotoError as err:
            out.skipped.append((path, str(err)))
    if not out.images:
        raise ValueError(f"no readable photo in {','.join(inputs) or '(nothing given)'} "
                         f"({len(out.skipped)} skipped{', e.g. ' + out.skipped[0][1] if out.skipped else ''})"
                         + ("" if recursive else "; sub-folders need --recursive"))
    return out


def from_sources(spec: str, data_root: str = "", split: str = "train", val_fraction: float = 0.2) -> UnlabelledPhotos:
    """The photos of ``split`` of photo sources (``--data_dir`` syntax; weights ignored), masks unused."""
    sets = load_sources(parse_sources(spec, data_root), split, val_fraction, need_cracks=False)
    return UnlabelledPhotos([p.image for s in sets for p in s.photos], [p.path for s in sets for p in s.photos],
                            [item for s in sets for item in s.skipped])


def _region(images: list[np.ndarray], side_range: tuple[int, int], rng: np.random.Generator,
            max_padding: float) -> tuple[np.ndarray, int, int, int]:
    """(photo, top, left, side): a photo drawn uniformly, side log-uniform in ``side_range`` (capped
    at the photo's short side), position uniform; redrawn while it holds too much padding."""
    for _ in range(_TRIES):
        image = images[int(rng.random() * len(images))]
        h, w = image.shape[:2]
        hi = min(side_range[1], h, w)
        lo = min(side_range[0], hi)
        side = int(round(lo * (hi / lo) ** rng.random()))
        y, x = int(rng.random() * (h - side + 1)), int(rng.random() * (w - side + 1))
        padding = np.count_nonzero(image[y : y + side, x : x + side].max(axis=-1) <= PADDING_LEVEL)
        if padding <= max_padding * side * side:
            break
    return image, y, x, side


def random_crops(images: list[np.ndarray], n: int, image_size: int, crop_side: tuple[int, int] = (96, 192),
                 seed: int = 0, max_padding: float = 0.1) -> np.ndarray:
    """``n`` plain crops (no augmentation) resized to ``image_size``: uint8 [n, S, S, 3]. Crop ``i`` is
    a pure function of ``(seed, i)``, its side log-uniform in ``crop_side`` photo pixels."""
    if n < 1 or not images:
        raise ValueError(f"random_crops needs photos and n >= 1 (got {len(images)} photos, n={n})")
    options = CropOptions(image_size=image_size, crop_side=tuple(crop_side), flips=False, rot90=False,
                          brightness=0.0, contrast=0.0)
    out = np.empty((n, image_size, image_size, 3), np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, i, SALT_CROPS])
        image, y, x, side = _region(images, options.crop_side, rng, max_padding)
        out[i] = render_crop(image, y, x, side, options, rng)
    return out


class ViewSampler:
    """SimCLR batches of two augmented views per random photo region.

    Pair ``g`` (global index ``step * B/2 + j``) is a pure function of ``(seed, g)``: a region of
    ``region`` photo pixels (capped at the photo's short side), then per view a random square of
    40-100 % of its side, rendered by ``render_crop`` with ``options`` (flips, rotations and the
    photometric augmentations). Rows ``[0, B/2)`` are the first views, ``[B/2, B)`` the second
    (the order ``nt_xent`` expects); labels are zeros. Same ``batch`` interface as
    :class:`~crack_tf.data.crops.CropSampler`, so the shared-memory loader renders it in workers.
    """

    def __init__(self, images: list[np.ndarray], options: CropOptions, seed: int, region: int = 192,
                 max_padding: float = 0.1):
        if not images:
            raise ValueError("ViewSampler needs at least one photo")
        self.images, self.options, self.seed = images, options, int(seed)
        self.region, self.max_padding = int(region), max_padding

    def batch(self, step: int, batch_size: int, num_shards: int = 1, shard_index: int = 0,
              out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if batch_size % 2 or num_shards != 1:
            raise ValueError(f"SimCLR batches hold pairs on one shard: batch_size={batch_size} must be even")
        s, pairs = self.options.image_size, batch_size // 2
        images, labels = out if out is not None else (np.empty((batch_size, s, s, 3), np.uint8),
                                                      np.empty(batch_size, np.int32))
        for j in range(pairs):
            rng = np.random.default_rng([self.seed, step * pairs + j, SALT_VIEWS])
            image, y, x, side = _region(self.images, (self.region, self.region), rng, self.max_padding)
            for view in (0, 1):
                v = min(side, max(8, int(round(side * (0.4 + 0.6 * rng.random())))))
                vy, vx = y + int(rng.random() * (side - v + 1)), x + int(rng.random() * (side - v + 1))
                images[view * pairs + j] = render_crop(image, vy, vx, v, self.options, rng)
        labels[:] = 0
        return images, labels
