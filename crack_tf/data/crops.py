"""Random labelled crops of whole photos (training) and fixed grid tiles (evaluation).

Training crop ``index`` of ``epoch`` is a pure function of ``(seed, epoch, index)``: its label
(crack with probability ``crack_fraction``), its source (by the source weights), its photo,
position and side (log-uniform in ``crop_side`` photo pixels, at most the photo's shorter side),
and its augmentation all come from ``np.random.default_rng([seed, epoch, index, SALT])``. So a
resumed run (or another loader, thread count or machine) sees exactly the same crops.

Labels come from the mask inside the crop: **crack** when it holds at least
``min_crack_pixels * (side / reference)**2`` crack pixels (``min_crack_pixels`` counts crack
pixels per ``reference`` x ``reference`` photo pixels, the rule of the fixed tiles), **background**
when it holds none, and anything in between is redrawn. A crop with more than ``max_padding`` of
black padding is redrawn too. Crack crops are drawn around a random crack pixel, so they are
found at once. With ``hard_negatives`` = h, a background crop is, with probability h, a hard one:
around a marked joint pixel (UAV75's planking joints, mask 204) or beside a crack (its nearest edge
1 px to half a side from a crack pixel, no crack pixel inside), where a model's false alarms are; when 64 draws fail (a photo covered in cracks has few crack-free crops) a crop of
a small fixed pool found at start-up is used instead, so a batch never fails mid-epoch.

The crop is cut from the uint8 photo, resized with Pillow (bilinear, antialiased when shrinking),
then flipped / rotated and colour-jittered; Pillow runs these in C without the GIL, so worker
threads render batches in parallel.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import special

from crack_tf.data.photos import Photo, PhotoSet
from crack_tf.data.prep import tile_origins

SALT = 0x5EED
_ATTEMPTS = 64
_POOL = 8
_ROTATIONS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
# the standard normal's quantiles at the midpoints of 2**16 equal steps: a uniform 16-bit draw through
# this table is Gaussian (std 0.999999, tails cut at 4.3) and costs a fifth of rng.normal (DATA.md)
_NORMAL_QUANTILES = special.ndtri((np.arange(2**16) + 0.5) / 2**16).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CropOptions:
    """How crops are drawn and augmented (training) and tiles are cut (evaluation)."""

    image_size: int = 224
    crop_side: tuple[int, int] = (96, 192)
    min_crack_pixels: int = 40
    reference: int = 128  # tile side of the min_crack_pixels rule and of the fixed eval tiles
    crack_fraction: float = 0.5
    max_padding: float = 0.1
    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1  # delta in [-b, b] * 255
    contrast: float = 0.1  # factor in [1 - c, 1 + c] around the per-channel mean
    saturation: float = 0.0  # colour factor in [1 - s, 1 + s]
    blur: float = 0.0  # probability of a Gaussian blur, radius 0.3-1.5 px
    noise: float = 0.0  # Gaussian noise, sigma uniform in [0, noise] (0-255 scale)
    jpeg: float = 0.0  # probability of a JPEG re-compression, quality 30-90
    gamma: float = 0.0  # gamma in [1/(1+g), 1+g] (log-uniform): out = 255 * (in / 255) ** gamma
    grayscale: float = 0.0  # probability of a grayscale crop (luma, 3 channels kept)
    hue: float = 0.0  # hue rotation in [-h, h] turns of the colour circle (YIQ: luma kept; h <= 0.5)
    hard_negatives: float = 0.0  # probability that a background crop is drawn at a joint or beside a crack

    def __post_init__(self) -> None:
        lo, hi = self.crop_side
        if not 8 <= lo <= hi:
            raise ValueError(f"crop_side={self.crop_side}: need 8 <= min <= max (photo pixels)")
        if not 0 < self.crack_fraction < 1:
            raise ValueError(f"crack_fraction={self.crack_fraction} must be in (0, 1)")
        if self.min_crack_pixels < 1 or self.reference < 8:
            raise ValueError("min_crack_pixels must be >= 1 and the reference tile >= 8 px")
        if not 0 <= self.max_padding <= 1:
            raise ValueError(f"max_padding={self.max_padding} must be in [0, 1]")
        for name in ("blur", "jpeg", "grayscale", "hard_negatives"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} is a probability: use [0, 1]")
        if min(self.brightness, self.contrast, self.saturation, self.noise, self.gamma) < 0:
            raise ValueError("brightness, contrast, saturation, noise and gamma must be >= 0")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue={self.hue}: a shift of at most half the colour circle, use [0, 0.5]")

    def min_pixels(self, side: int) -> int:
        """Crack pixels a crop of ``side`` photo pixels needs to be labelled crack."""
        return max(1, math.ceil(self.min_crack_pixels * side * side / (self.reference * self.reference)))


def _padding_ok(photo: Photo, y: int, x: int, side: int, limit: float) -> bool:
    if photo.padding is None:
        return True
    return np.count_nonzero(photo.padding[y : y + side, x : x + side]) <= limit * side * side


def crop_label(photo: Photo, y: int, x: int, side: int, min_pixels: int, max_padding: float) -> int | None:
    """1 (>= ``min_pixels`` crack pixels), 0 (none) or None (ambiguous, or more than
    ``max_padding`` padding) for the square crop of ``side`` at (``y``, ``x``)."""
    if not _padding_ok(photo, y, x, side, max_padding):
        return None
    n = int(np.count_nonzero(photo.crack[y : y + side, x : x + side]))
    if n == 0:
        return 0
    return 1 if n >= min_pixels else None


Crop = tuple[int, int, int, int]  # (photo index, top, left, side)


class CropSampler:
    """Draws and renders the labelled training crops of one or more photo sources."""

    def __init__(self, sources: list[PhotoSet], weights: list[float], options: CropOptions, seed: int,
                 crops_per_epoch: int):
        if len(sources) != len(weights) or not sources:
            raise ValueError("CropSampler needs one weight per source")
        self.sources, self.options, self.seed = sources, options, int(seed)
        self.crops_per_epoch = int(crops_per_epoch)
        self._cracked = [[i for i, p in enumerate(s.photos) if len(p.crack_points)] for s in sources]
        self._hard = [[i for i, p in enumerate(s.photos) if len(p.crack_points) or len(p.joint_points)]
                      for s in sources]
        self.pools = [[self._probe(k, label) for label in (0, 1)] for k in range(len(sources))]
        self.label_weights = []
        for label, name in ((0, "background"), (1, "crack")):
            w = np.array([wt if self.pools[k][label] else 0.0 for k, wt in enumerate(weights)], np.float64)
            if w.sum() == 0:
                raise ValueError(
                    f"no source can give a {name} crop of side {options.crop_side} photo pixels "
                    f"(crack needs >= {options.min_crack_pixels} crack pixels per {options.reference}^2, background "
                    f"none): {[s.name for s in sources]}; change --crop_side / --min_crack_pixels or add photos")
            self.label_weights.append(w / w.sum())
        self._cumulative = [np.cumsum(w) for w in self.label_weights]

    # ---------------------------------------------------------------------------------- drawing
    def _attempt(self, k: int, label: int, u: np.ndarray) -> Crop | None:
        """One try at a crop of ``label`` from source ``k`` with the uniforms ``u`` [5]."""
        source = self.sources[k]
        candidates = self._cracked[k] if label else range(len(source.photos))
        if not len(candidates):
            return None
        i = candidates[int(u[0] * len(candidates))]
        photo = source.photos[i]
        h, w = photo.shape
        lo, hi = self.options.crop_side
        hi = min(hi, h, w)
        lo = min(lo, hi)
        side = int(round(lo * (hi / lo) ** u[1]))  # log-uniform in [lo, hi]
        if label:
            py, px = photo.crack_points[int(u[2] * len(photo.crack_points))]
            y0, x0 = max(0, py - side + 1), max(0, px - side + 1)
            y = y0 + int(u[3] * (min(py, h - side) - y0 + 1))
            x = x0 + int(u[4] * (min(px, w - side) - x0 + 1))
        else:
            y, x = int(u[3] * (h - side + 1)), int(u[4] * (w - side + 1))
        ok = crop_label(photo, y, x, side, self.options.min_pixels(side), self.options.max_padding) == label
        return (i, y, x, side) if ok else None

    def _attempt_hard(self, k: int, u: np.ndarray) -> Crop | None:
        """One try at a hard background crop of source ``k`` with the uniforms ``u`` [7]: around a joint
        pixel (half the tries when the photo has both kinds; a joint crop holds no crack more often, so
        joints give most such crops) or beside a crack pixel."""
        candidates = self._hard[k]
        if not candidates:
            return None
        i = candidates[int(u[0] * len(candidates))]
        photo = self.sources[k].photos[i]
        h, w = photo.shape
        lo, hi = self.options.crop_side
        hi = min(hi, h, w)
        lo = min(lo, hi)
        side = int(round(lo * (hi / lo) ** u[1]))
        joints, cracks = photo.joint_points, photo.crack_points
        along = int(u[6] * side)
        if len(joints) and (not len(cracks) or u[5] < 0.5):  # a crop holding the joint pixel
            py, px = joints[int(u[2] * len(joints))]
            y, x = py - int(u[3] * side), px - int(u[4] * side)
        else:  # the crop's nearest edge `gap` px from the crack pixel, on one of its four sides
            py, px = cracks[int(u[2] * len(cracks))]
            gap, direction = 1 + int(u[4] * side / 2), int(u[3] * 4)
            y, x = ((py - along, px - gap - side + 1), (py - along, px + gap),
                    (py - gap - side + 1, px - along), (py + gap, px - along))[direction]
        y, x = min(max(int(y), 0), h - side), min(max(int(x), 0), w - side)
        ok = crop_label(photo, y, x, side, self.options.min_pixels(side), self.options.max_padding) == 0
        return (i, y, x, side) if ok else None

    def _probe(self, k: int, label: int) -> list[Crop]:
        """A few valid crops of (source, label), independent of the seed: the fallback pool."""
        rng = np.random.default_rng([SALT, k, label])
        pool = []
        for _ in range(50 * _POOL):
            crop = self._attempt(k, label, rng.random(5))
            if crop is not None:
                pool.append(crop)
                if len(pool) == _POOL:
                    break
        return pool

    def draw(self, epoch: int, index: int) -> tuple[int, int, Crop, np.random.Generator]:
        """(label, source index, crop, the element's generator for its augmentation)."""
        rng = np.random.default_rng([self.seed, int(epoch), int(index), SALT])
        u = rng.random(2)
        label = int(u[0] < self.options.crack_fraction)
        k = min(int(np.searchsorted(self._cumulative[label], u[1], side="right")), len(self.sources) - 1)
        # a hard background crop: half the tries at a joint or beside a crack, then any background
        # (no extra draw without the option, so its crops stay those of before it)
        hard = not label and self.options.hard_negatives > 0 and rng.random() < self.options.hard_negatives
        for attempt in range(_ATTEMPTS):
            if hard and attempt < _ATTEMPTS // 2:
                crop = self._attempt_hard(k, rng.random(7))
            else:
                crop = self._attempt(k, label, rng.random(5))
            if crop is not None:
                return label, k, crop, rng
        pool = self.pools[k][label]
        return label, k, pool[int(rng.random() * len(pool))], rng

    # ---------------------------------------------------------------------------------- rendering
    def render(self, photo: Photo, crop: Crop, rng: np.random.Generator) -> np.ndarray:
        """The augmented uint8 [S, S, 3] image of one crop."""
        _, y, x, side = crop
        return render_crop(photo.image, y, x, side, self.options, rng)

    def element(self, epoch: int, index: int) -> tuple[np.ndarray, int, int]:
        """(image, label, source index) of training crop ``index`` of ``epoch``."""
        label, k, crop, rng = self.draw(epoch, index)
        return self.render(self.sources[k].photos[crop[0]], crop, rng), label, k

    def batch(self, step: int, batch_size: int, num_shards: int = 1, shard_index: int = 0,
              out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This shard's part of global step ``step``: uint8 [B, S, S, 3] and int32 [B] labels.

        Global element ``(step * batch_size + j) * num_shards + shard_index`` of the stream; epochs
        hold ``crops_per_epoch`` elements (a whole number of global batches). ``out``: arrays of
        those shapes to render into (e.g. a shared-memory slot) instead of new ones.
        """
        s = self.options.image_size
        images, labels = out if out is not None else (np.empty((batch_size, s, s, 3), np.uint8),
                                                      np.empty(batch_size, np.int32))
        for j in range(batch_size):
            g = (step * batch_size + j) * num_shards + shard_index
            epoch, index = divmod(g, self.crops_per_epoch)
            images[j], labels[j], _ = self.element(epoch, index)
        return images, labels


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hue_matrix(turns: float) -> tuple[float, ...]:
    """Pillow's RGB -> RGB ``convert`` matrix that rotates the chroma (I, Q of YIQ) by ``turns`` of
    the colour circle and keeps the luma Y: a hue shift at a tenth of the cost of an HSV round trip."""
    c, s = math.cos(2 * math.pi * turns), math.sin(2 * math.pi * turns)
    m = np.linalg.inv(_YIQ) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ _YIQ
    return tuple(float(v) for v in np.concatenate([m, np.zeros((3, 1))], axis=1).ravel())


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """float32 Gaussian noise of std ``sigma``: 16 random bits per value through the normal's quantiles
    (``rng.normal`` then a float32 copy took 5x as long per 224-px crop; docs/DATA.md)."""
    bits = np.frombuffer(rng.bytes(2 * math.prod(shape)), dtype="<u2")
    noise = np.take(_NORMAL_QUANTILES, bits).reshape(shape)  # np.take: half the time of indexing
    noise *= np.float32(sigma)
    return noise


def render_crop(image: np.ndarray, y: int, x: int, side: int, options: CropOptions,
                rng: np.random.Generator) -> np.ndarray:
    """The square crop of ``side`` at (``y``, ``x``) of a uint8 [H, W, 3] ``image``, resized to
    ``options.image_size`` and augmented by ``options``: uint8 [S, S, 3].

    The draws are fixed in number and order whatever the options: 11 uniforms (one slot per
    original option), the noise (only when ``noise`` > 0, as before), then 3 uniforms of the options
    added later (gamma, grayscale, hue). So settings without the later options give the very crops
    they gave before those were added (tested).
    """
    o, s = options, options.image_size
    u = rng.random(11)
    noise = gaussian_noise(rng, (s, s, 3), o.noise * u[10]) if o.noise else None
    v = rng.random(3)
    img = Image.fromarray(np.ascontiguousarray(image[y : y + side, x : x + side]))
    if side != s:
        img = img.resize((s, s), Image.Resampling.BILINEAR)
    if o.flips and u[0] < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if o.flips and u[1] < 0.5:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if o.rot90 and _ROTATIONS[int(u[2] * 4)] is not None:
        img = img.transpose(_ROTATIONS[int(u[2] * 4)])
    if o.blur and u[6] < o.blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(0.3 + 1.2 * u[7])))
    if o.hue:
        img = img.convert("RGB", hue_matrix((2 * v[2] - 1) * o.hue))
    if o.saturation:
        img = ImageEnhance.Color(img).enhance(float(1 - o.saturation + 2 * o.saturation * u[5]))
    if o.grayscale and v[1] < o.grayscale:
        img = img.convert("L").convert("RGB")  # ITU-R 601 luma in every channel
    lut = None
    if o.brightness or o.contrast:
        factor = 1 - o.contrast + 2 * o.contrast * u[4]
        delta = (2 * u[3] - 1) * o.brightness * 255
        hist = np.asarray(img.histogram(), np.float32).reshape(3, 256)
        levels = np.arange(256, dtype=np.float32)
        means = (hist @ levels / hist.sum(axis=1))[:, None]  # per-channel mean
        lut = np.clip(np.round((levels[None] - means) * factor + means + delta), 0, 255).astype(np.uint8)
    if o.gamma:
        gamma = (1 + o.gamma) ** (2 * v[0] - 1)  # log-uniform in [1/(1+g), 1+g]
        curve = np.round(255 * (np.arange(256) / 255) ** gamma).astype(np.uint8)
        lut = curve[np.tile(np.arange(256), (3, 1)) if lut is None else lut]  # after brightness / contrast
    if lut is not None:
        # Image.point(list) would round all 768 entries in Python (GIL held); the core call
        # takes the integer table as it is (tests compare it with Image.point).
        img = img._new(img.im.point(lut.ravel().tolist(), None))
    if o.jpeg and u[8] < o.jpeg:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(30 + 60 * u[9]))
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    out = np.asarray(img, dtype=np.uint8)
    if noise is not None:
        noise += np.float32(0.5)  # rounded: + 0.5, then truncated by the cast
        noise += out  # in place: a third of the time of np.clip(out + noise + 0.5, 0, 255)
        out = np.clip(noise, 0, 255, out=noise).astype(np.uint8)
    return out


# -------------------------------------------------------------------------------------- eval tiles
@dataclasses.dataclass
class Tiles:
    """Fixed labelled tiles of one source: uint8 [N, T, T, 3], int32 [N], names, and the source-image
    group of each tile's photo (tiles of one group are alike: keep them on one side of a split)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    groups: list[str] = dataclasses.field(default_factory=list)

    @property
    def counts(self) -> dict[int, int]:
        return {0: int((self.labels == 0).sum()), 1: int((self.labels == 1).sum())}


def grid_tiles(photos: PhotoSet, tile: int = 128, min_crack_pixels: int = 40, max_padding: float = 0.1,
               max_tiles: int = 0) -> Tiles:
    """Non-overlapping ``tile``-px tiles on each photo's grid: crack with >= ``min_crack_pixels``
    crack pixels, background with none, ambiguous and padded tiles dropped.

    These are fixed settings, not the training crop's: that is how ``uav75_tiles`` was cut (the
    UAV75 val photos give exactly its 151 val tiles), so val numbers stay comparable from run to
    run. ``max_tiles`` > 0 keeps an evenly spaced subset.
    """
    t = tile
    images, labels, names, groups = [], [], [], []
    for photo in photos.photos:
        stem = os.path.splitext(os.path.basename(photo.path))[0]
        for y, x in tile_origins(*photo.shape, t, t):
            label = crop_label(photo, y, x, t, min_crack_pixels, max_padding)
            if label is not None:
                images.append(photo.image[y : y + t, x : x + t])
                labels.append(label)
                names.append(f"{photos.name}/{stem}_y{y:03d}_x{x:03d}")
                groups.append(photo.group or stem)
    if max_tiles and len(images) > max_tiles:
        keep = np.linspace(0, len(images) - 1, max_tiles).round().astype(int)
        images, labels, names, groups = ([images[i] for i in keep], [labels[i] for i in keep], [names[i] for i in keep],
                                         [groups[i] for i in keep])
    if not images:
        raise ValueError(f"photos source {photos.name!r}: no {t}x{t} tile is crack or background "
                         f"(all ambiguous or padding); check the masks or --val_tile")
    return Tiles(photos.name, np.stack(images), np.asarray(labels, np.int32), names, groups)
