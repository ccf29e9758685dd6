"""Scoring image files for the inspection commands (``predict``, ``report``).

* ``iter_images``: the files of the given paths (folders: their image files, ``recursive`` for
  sub-folders), lazily, sorted within each folder; files that are not images come back as
  failures, never as a crash.
* A file no larger than the window (``max(w, h) <= window``) is a **tile**: resized / cropped to
  the model input as in evaluation and scored once (tiles are batched). A larger file is a
  **photo**: scanned window by window or fully convolutionally (``--mode``, ``crack_tf.inspection.photo_scan``);
  its score is the highest window probability, its boxes the connected groups of windows above the
  threshold.
* ``Scorer`` does both for one model and keeps per-file results small (no pixels), so a run over
  100,000 files holds a few photos (the one scored and those decoded ahead) and one batch of tiles.
* ``read_ahead``: the files decoded in background threads, a few ahead of the one being scored,
  so decoding overlaps the model (the flight speed of docs/PERFORMANCE.md).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from crack_tf.data.image_np import eval_transform_np
from crack_tf.data.listing import IMAGE_EXTS
from crack_tf.inspection.geo import PhotoGPS, photo_exif, with_real_sizes
from crack_tf.inspection.heatmap import Heatmap, crack_boxes
from crack_tf.inspection.photo_io import PIL_BOMB_MEGAPIXELS, PhotoError, photo_size, read_photo

#: The columns of :meth:`ScanResult.row` (the CSV of ``crack_tf.predict``, ``summary.csv`` of ``crack_tf.report``).
CSV_FIELDS = ("path", "kind", "width", "height", "crack_probability", "is_crack", "threshold", "windows", "boxes",
              "cracked_share", "latitude", "longitude", "altitude", "taken", "model", "model_sha256")


@dataclasses.dataclass
class ScanResult:
    """What one file scored (no pixels, except ``image`` / ``heatmap`` when asked to keep them)."""

    path: str
    kind: str  # "tile" or "photo"
    width: int
    height: int
    probability: float
    is_crack: bool
    threshold: float
    windows: int = 1
    boxes: list[dict] = dataclasses.field(default_factory=list)
    cracked_share: float = 0.0  # pixels whose window-mean p(crack) > threshold (photos)
    gps: PhotoGPS | None = None
    taken: str | None = None
    seconds: float = 0.0
    heatmap: Heatmap | None = None
    image: np.ndarray | None = None
    best_window: tuple[int, int] | None = None  # (y, x) of the highest window (photos)

    def row(self, model: str, model_sha256: str) -> dict:
        """The flat record of the CSV / JSONL outputs."""
        return {
            "path": self.path, "kind": self.kind, "width": self.width, "height": self.height,
            "crack_probability": round(self.probability, 6), "is_crack": self.is_crack,
            "threshold": round(self.threshold, 6), "windows": self.windows, "boxes": len(self.boxes),
            "cracked_share": round(self.cracked_share, 6),
            "latitude": self.gps.latitude if self.gps else None, "longitude": self.gps.longitude if self.gps else None,
            "altitude": self.gps.altitude if self.gps else None, "taken": self.taken,
            "model": model, "model_sha256": model_sha256,
        }


def file_sha256(path: str) -> str:
    """SHA-256 of a file, or of a SavedModel folder's saved_model.pb and variables."""
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if not f.startswith("."))
    for name in files:
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def iter_images(paths: Iterable[str], recursive: bool = False) -> Iterator[tuple[str, str | None]]:
    """(path, None) for each image file, (path, reason) for what cannot be one; lazily."""
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                if not recursive:
                    dirs.clear()
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    full = os.path.join(root, name)
                    if name.lower().endswith(IMAGE_EXTS):
                        yield full, None
                    else:
                        yield full, f"not an image file (extensions {', '.join(IMAGE_EXTS)})"
        elif os.path.isfile(path):
            yield (path, None) if path.lower().endswith(IMAGE_EXTS) else (path, "not an image file")
        else:
            yield path, "no such file or folder"


def count_images(paths: list[str], recursive: bool) -> int:
    """How many entries :func:`iter_images` gives; ValueError (a usage error) when none."""
    if not paths:
        raise ValueError("pass image files or folders after the flags")
    total = sum(1 for _ in iter_images(paths, recursive))
    if total == 0:
        raise ValueError(f"no files found in {paths}" + ("" if recursive else " (sub-folders: --recursive)"))
    return total


def decode_workers() -> int:
    """Threads that decode the next files while the model runs (Pillow releases the GIL): <= 4."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def _read(path: str, max_megapixels: float | None) -> np.ndarray | PhotoError:
    try:
        return read_photo(path, max_megapixels or PIL_BOMB_MEGAPIXELS)
    except PhotoError as err:
        return err


def read_ahead(items: Iterable[tuple[str, str | None]], max_megapixels: float | None = PIL_BOMB_MEGAPIXELS,
               workers: int | None = None, depth: int = 4) -> Iterator[tuple[str, np.ndarray | None,
                                                                               PhotoError | None]]:
    """(path, pixels, None) or (path, None, the error) of :func:`iter_images`' items, in order,
    decoded in ``workers`` background threads up to ``depth`` files ahead of the consumer."""
    items = iter(items)
    with ThreadPoolExecutor(workers or decode_workers()) as pool:
        pending: collections.deque = collections.deque()

        def submit() -> None:
            item = next(items, None)
            if item is not None:
                path, problem = item
                pending.append((path, problem, None if problem else pool.submit(_read, path, max_megapixels)))

        for _ in range(max(depth, 1)):
            submit()
        while pending:
            path, problem, future = pending.popleft()
            submit()
            out = PhotoError(f"{path}: {problem}") if problem else future.result()
            yield (path, None, out) if isinstance(out, PhotoError) else (path, out, None)


class Scorer:
    """Scores tiles (batched) and photos (heatmap, ``--mode`` of ``crack_tf.inspection.photo_scan``) with one
    loaded predictor."""

    def __init__(self, predictor, window: int = 128, stride: int = 64, batch: int = 64,
                 max_megapixels: float = PIL_BOMB_MEGAPIXELS, gsd_cm: float | None = None,
                 threshold: float | None = None, keep_pixels: bool = False, mode: str | None = None,
                 refine_band: float = 0.0):
        from crack_tf.inspection.photo_scan import DEFAULT_MODE, make_scanner

        if not predictor.image_size:
            raise ValueError(f"{predictor.path}: the model's input size is unknown")
        self.predictor, self.window, self.stride, self.batch = predictor, window, stride, batch
        self.max_megapixels, self.gsd_cm, self.keep_pixels = max_megapixels, gsd_cm, keep_pixels
        self.threshold = predictor.threshold if threshold is None else threshold
        self.size = int(predictor.image_size)
        self.scanner = make_scanner(predictor, mode or DEFAULT_MODE, window, stride, batch, self.size,
                                    refine_band=refine_band, threshold=self.threshold)
        self._tiles: list[tuple[str, np.ndarray, int, int]] = []

    def is_tile(self, path: str, image: np.ndarray | None = None) -> bool:
        if image is not None:
            return max(image.shape[:2]) <= self.window
        try:
            w, h = photo_size(path)
        except Exception as e:  # noqa: BLE001
            raise PhotoError(f"{path}: cannot read this photo ({type(e).__name__}: {str(e)[:100]})") from e
        return max(w, h) <= self.window

    def add_tile(self, path: str, image: np.ndarray | None = None) -> list[ScanResult]:
        """Queues a tile (``image``: its pixels if decoded); returns the results of a full batch (else [])."""
        image = read_photo(path, self.max_megapixels) if image is None else image
        h, w = image.shape[:2]
        self._tiles.append((path, eval_transform_np(image, self.size, self.predictor.small_policy), w, h))
        return self.flush() if len(self._tiles) >= self.batch else []

    def flush(self) -> list[ScanResult]:
        """Scores the queued tiles."""
        if not self._tiles:
            return []
        batch, self._tiles = self._tiles, []
        probs = self.predictor.predict(np.stack([t[1] for t in batch]))
        out = []
        for (path, image, w, h), p in zip(batch, probs):
            gps, taken = photo_exif(path)
            out.append(ScanResult(path, "tile", w, h, float(p), bool(p > np.float32(self.threshold)), self.threshold,
                                  gps=gps, taken=taken, image=image if self.keep_pixels else None))
        return out

    def photo(self, path: str, image: np.ndarray | None = None) -> ScanResult:
        """Scans one photo (``image``: its pixels if decoded) with the scanner of ``mode``."""
        image = read_photo(path, self.max_megapixels) if image is None else image
        heatmap = self.scanner(image)
        boxes = crack_boxes(heatmap, self.threshold)
        for b in boxes:
            b["area_px"] = (b["x1"] - b["x0"]) * (b["y1"] - b["y0"])
        share = heatmap.share_above(self.threshold)
        gps, taken = photo_exif(path)
        iy, ix = np.unravel_index(int(np.argmax(heatmap.grid)), heatmap.grid.shape)
        p = float(heatmap.grid.max())
        return ScanResult(path, "photo", heatmap.width, heatmap.height, p, bool(p > np.float32(self.threshold)),
                          self.threshold, int(heatmap.grid.size), with_real_sizes(boxes, self.gsd_cm), share, gps,
                          taken, heatmap.seconds, heatmap if self.keep_pixels else None,
                          image if self.keep_pixels else None, (int(heatmap.ys[iy]), int(heatmap.xs[ix])))
