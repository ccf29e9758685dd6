"""Sliding-window crack heatmaps of photos of any size.

  python -m crack_tf.heatmap --model=runs/uav75/best.keras photo.jpg [more.jpg ...] \\
      --window=128 --stride=64 --output_dir=heatmaps --boxes=geojson

Every ``window`` x ``window`` crop on a ``stride`` grid (the last row / column is shifted so
the border is covered; photos smaller than a window are reflect-padded) is resized to the
model input size with the evaluation's bilinear resize and classified; windows stream row by
row in batches, so memory is the photo plus a few batches, never all windows. The next batches
are cut and resized in a background thread (its windows resized by up to 4 threads) while the
model runs, and every batch has the same
shape (the last one padded), so a compiled model never recompiles for another photo size.

Outputs per photo ``<stem>``:
- ``<stem>_grid.npy``: float32 [rows, cols], p(crack) of each window (row-major window grid);
- ``<stem>_heatmap.npy``: float16 [H, W], one value per pixel = the mean p(crack) of all windows
  covering it (written band by band, never held whole in memory);
- ``<stem>_overlay.png``: the photo (longest side <= --overlay_max_side) with the map in red;
- ``<stem>_boxes.geojson`` / ``.csv``: crack boxes = 8-connected components of the window grid
  thresholded at ``--threshold``; a box is the union of its windows (pixel coordinates, x right,
  y down), with the max / mean p(crack) and the number of windows.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from crack_tf.choices import TTA_MODES
from crack_tf.data.image_np import resize_bilinear_np
from crack_tf.data.progress import Progress
from crack_tf.evaluation.pixels import _dilate, pixel_metrics, pool_metrics  # noqa: F401  (re-exported)
from crack_tf.model_precision import define_precision_flag

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class Heatmap:
    """The window grid of one photo and how it maps back to pixels."""

    grid: np.ndarray  # float32 [ny, nx]
    ys: np.ndarray  # window top rows
    xs: np.ndarray  # window left columns
    window: int
    height: int
    width: int
    seconds: float

    def pixel_map(self, rows: slice | None = None, scale: float = 1.0) -> np.ndarray:
        """Mean p(crack) of the windows covering each pixel (rows of the map at ``1/scale`` size)."""
        out_h, out_w = int(round(self.height / scale)), int(round(self.width / scale))
        rows = rows or slice(0, out_h)
        centres_y = (np.arange(out_h)[rows] + 0.5) * scale
        centres_x = (np.arange(out_w) + 0.5) * scale
        ay = _cover(centres_y, self.ys, self.window)
        ax = _cover(centres_x, self.xs, self.window)
        total = ay @ self.grid @ ax.T
        count = np.outer(ay.sum(1), ax.sum(1))
        return (total / np.maximum(count, 1)).astype(np.float32)


def _cover(centres: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """[len(centres), len(starts)] float32: 1 where the window starting there covers the pixel."""
    return ((centres[:, None] >= starts[None, :]) & (centres[:, None] < starts[None, :] + window)).astype(np.float32)


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Start offsets on a ``stride`` grid, the last one moved so the window ends at the border."""
    if length <= window:
        return np.zeros(1, dtype=np.int64)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return np.asarray(starts, dtype=np.int64)


def resize_workers() -> int:
    """Threads that cut and resize windows (NumPy releases the GIL): at most 4, one core left over."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def _windows(photo: np.ndarray, ys: np.ndarray, xs: np.ndarray, window: int, size: int,
             batch: int, workers: int = 1) -> Iterator[tuple[np.ndarray, int]]:
    """(batch of resized windows, number of real windows in it), row-major. Every batch has the
    full ``batch`` shape (the last one padded), so the model compiles one shape for all photos.
    ``workers`` > 1 resizes the windows of a batch in that many threads (same result)."""
    coords = [(int(y), int(x)) for y in ys for x in xs]

    def fill(buf: np.ndarray, part: list[tuple[int, int]], first: int) -> None:
        for n, (y, x) in enumerate(part, first):
            crop = photo[y : y + window, x : x + window]
            buf[n] = crop if window == size else resize_bilinear_np(crop, size, size)

    threads = workers if workers > 1 and window != size else 1
    with ThreadPoolExecutor(threads) if threads > 1 else contextlib.nullcontext() as pool:
        for start in range(0, len(coords), batch):
            chunk = coords[start : start + batch]
            buf = np.zeros((batch, size, size, 3), dtype=np.uint8)
            if pool is None:
                fill(buf, chunk, 0)
            else:
                firsts = range(0, len(chunk), -(-len(chunk) // threads))
                parts = [chunk[i : i + firsts.step] for i in firsts]
                list(pool.map(fill, [buf] * len(parts), parts, firsts))
            yield buf, len(chunk)


def _prefetched(batches: Iterator, depth: int = 2) -> Iterator:
    """The batches, prepared in a background thread while the model runs on the previous ones."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in batches:
                q.put(item)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _pad_to_window(photo: np.ndarray, window: int) -> np.ndarray:
    h, w = photo.shape[:2]
    if h >= window and w >= window:
        return photo
    ph, pw = max(window - h, 0), max(window - w, 0)
    return np.pad(photo, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")


def sliding_heatmap(predict: Predictor, photo: np.ndarray, image_size: int, window: int = 128,
                    stride: int = 64, batch: int = 64, progress: bool | None = None,
                    workers: int | None = None, device: bool = False,
                    starts: tuple[np.ndarray, np.ndarray] | None = None) -> Heatmap:
    """Classifies every window of ``photo`` (uint8 HxWx3) with ``predict`` (uint8 [B,S,S,3] -> p [B]);
    ``workers``: resizing threads (default :func:`resize_workers`); ``device``: cut and resize the
    windows on the Keras backend's device (``crack_tf.device_windows``; ``predict`` then gets device
    arrays); ``starts``: window (top rows, left columns) instead of the ``stride`` grid."""
    if window < 1 or stride < 1 or batch < 1:
        raise ValueError(f"--window ({window}), --stride ({stride}) and --batch ({batch}) must be >= 1")
    started = time.perf_counter()
    height, width = photo.shape[:2]
    padded = _pad_to_window(photo, window)
    if starts is None:
        ys = window_starts(padded.shape[0], window, stride)
        xs = window_starts(padded.shape[1], window, stride)
    else:
        ys, xs = (np.asarray(s, np.int64) for s in starts)
    total = len(ys) * len(xs)
    probs = np.empty(total, dtype=np.float32)
    show = total >= 2000 if progress is None else progress
    done = 0
    if device:
        from crack_tf.device_windows import window_batches

        batches = window_batches(padded, ys, xs, window, image_size, batch)
    else:
        batches = _windows(padded, ys, xs, window, image_size, batch, resize_workers() if workers is None else workers)
    with Progress(total, "  windows") if show else contextlib.nullcontext() as bar:
        for images, real in _prefetched(batches):
            p = np.asarray(predict(images), dtype=np.float32).reshape(-1)
            if p.shape[0] != images.shape[0]:
                raise ValueError(f"the model returned {p.shape[0]} probabilities for {images.shape[0]} windows")
            probs[done : done + real] = p[:real]
            done += real
            if bar is not None:
                bar.update(real)
    return Heatmap(probs.reshape(len(ys), len(xs)), ys, xs, window, height, width,
                   time.perf_counter() - started)


def write_pixel_map(heatmap: Heatmap, path: str, band: int = 256) -> None:
    """Writes the per-pixel float16 map as ``.npy`` band by band (bounded memory)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f2")), "fortran_order": False,
                "shape": (heatmap.height, heatmap.width)})
        for top in range(0, heatmap.height, band):
            rows = slice(top, min(top + band, heatmap.height))
            f.write(heatmap.pixel_map(rows).astype("<f2").tobytes())


def crack_boxes(heatmap: Heatmap, threshold: float = 0.5) -> list[dict]:
    """Boxes (x0, y0, x1, y1 exclusive, clipped to the photo) of the thresholded window grid."""
    labels, count = ndimage.label(heatmap.grid > threshold, structure=np.ones((3, 3)))  # 8-connected
    boxes = []
    for k in range(1, count + 1):
        ii, jj = np.nonzero(labels == k)
        values = heatmap.grid[ii, jj]
        boxes.append({
            "x0": int(heatmap.xs[jj].min()), "y0": int(heatmap.ys[ii].min()),
            "x1": int(min(heatmap.xs[jj].max() + heatmap.window, heatmap.width)),
            "y1": int(min(heatmap.ys[ii].max() + heatmap.window, heatmap.height)),
            "max_prob": float(values.max()), "mean_prob": float(values.mean()), "windows": int(len(ii)),
        })
    return sorted(boxes, key=lambda b: -b["max_prob"])


def write_boxes(boxes: list[dict], path: str, fmt: str, photo_name: str) -> None:
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            fields = ["photo", "x0", "y0", "x1", "y1", "max_prob", "mean_prob", "windows"]
            fields += list(dict.fromkeys(k for b in boxes for k in b if k not in fields))  # area_px, *_cm
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows({"photo": photo_name, **b} for b in boxes)
        return
    features = [{"type": "Feature", "properties": {"photo": photo_name, **{k: b[k] for k in
                                                                           ("max_prob", "mean_prob", "windows")}},
                 "geometry": {"type": "Polygon", "coordinates": [[[b["x0"], b["y0"]], [b["x1"], b["y0"]],
                                                                  [b["x1"], b["y1"]], [b["x0"], b["y1"]],
                                                                  [b["x0"], b["y0"]]]]}} for b in boxes]
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection", "properties": {"coordinates": "pixels, x right, y down"},
                   "features": features}, f)


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` with its longest side at most ``max_side`` (subsampled first: no copy of a huge photo)."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = max(h, w) / max_side
    if scale <= 1:
        return image
    step = int(scale)
    img = Image.fromarray(np.ascontiguousarray(image[::step, ::step]) if step > 1 else image)
    return np.asarray(img.resize((max(1, round(w / scale)), max(1, round(h / scale))), Image.BILINEAR))


def write_overlay(photo: np.ndarray, heatmap: Heatmap, path: str, max_side: int = 2048) -> None:
    """The photo (downscaled to ``max_side``) blended with the map in red."""
    from PIL import Image

    base = downscale(photo, max_side).astype(np.float32)
    scale = max(1.0, max(heatmap.height, heatmap.width) / max_side)
    prob = heatmap.pixel_map(scale=scale)[: base.shape[0], : base.shape[1], None]
    red = np.array([255.0, 0.0, 0.0], dtype=np.float32)
    alpha = 0.6 * prob
    out = base * (1 - alpha) + red * alpha
    Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).save(path)


def load_photo(path: str, max_megapixels: float | None = None, exif: bool = True) -> np.ndarray:
    """The photo's RGB pixels (EXIF orientation applied unless ``exif=False``); ValueError naming
    the file otherwise."""
    from crack_tf.photo_io import PIL_BOMB_MEGAPIXELS, read_photo

    return read_photo(path, max_megapixels or PIL_BOMB_MEGAPIXELS, exif)


def process_photo(predict: Predictor, image_size: int, path: str, output_dir: str, window: int, stride: int,
                  batch: int, threshold: float, boxes: str = "geojson", overlay_max_side: int = 2048,
                  max_megapixels: float | None = None, scan: Callable[[np.ndarray], Heatmap] | None = None,
                  photo: np.ndarray | None = None) -> dict:
    """Heatmap of one photo file, written to ``output_dir``; returns a summary dict. ``scan``:
    photo -> Heatmap instead of the sliding windows of ``predict``; ``photo``: its pixels if decoded."""
    photo = load_photo(path, max_megapixels) if photo is None else photo
    heatmap = scan(photo) if scan is not None else sliding_heatmap(predict, photo, image_size, window, stride, batch)
    stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
    np.save(stem + "_grid.npy", heatmap.grid)
    write_pixel_map(heatmap, stem + "_heatmap.npy")
    write_overlay(photo, heatmap, stem + "_overlay.png", overlay_max_side)
    found = crack_boxes(heatmap, threshold)
    if boxes != "none":
        write_boxes(found, f"{stem}_boxes.{boxes}", boxes, os.path.basename(path))
    mpix = heatmap.height * heatmap.width / 1e6
    return {"photo": path, "height": heatmap.height, "width": heatmap.width, "windows": int(heatmap.grid.size),
            "max_prob": float(heatmap.grid.max()), "boxes": len(found), "seconds": heatmap.seconds,
            "seconds_per_megapixel": heatmap.seconds / max(mpix, 1e-9)}


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model", None, ".keras file or SavedModel folder (crack_tf.train / export output).",
                        required=True)
    flags.DEFINE_integer("window", 128, "Window side in photo pixels (resized to the model input size).")
    flags.DEFINE_integer("stride", 64, "Window step in pixels.")
    flags.DEFINE_integer("batch", 64, "Windows per model call.")
    flags.DEFINE_string("output_dir", "heatmaps", "Where the maps, overlays and boxes go.")
    flags.DEFINE_float("threshold", None, "Crack iff p(crack) > threshold (boxes); default: the model's stored "
                       "threshold, else 0.5.")
    flags.DEFINE_enum("tta", None, list(TTA_MODES), "Test-time augmentation of each window (default: "
                      "the one the model's threshold was picked with).")
    define_precision_flag()
    flags.DEFINE_float("max_megapixels", 89.5, "Photos above this are skipped (Pillow's decompression-bomb limit "
                       "by default); raise it to process them.")
    flags.DEFINE_bool("fail_fast", False, "Stop at the first photo that cannot be processed (default: skip it, "
                      "name it at the end and exit with 1).")
    flags.DEFINE_enum("boxes", "geojson", ["geojson", "csv", "none"], "Crack-box file format.")
    flags.DEFINE_integer("overlay_max_side", 2048, "Longest side of the overlay PNG.")
    flags.DEFINE_integer("image_size", None, "Model input size if neither run.json nor the model fixes it.")
    from crack_tf.photo_scan import define_scan_flags

    define_scan_flags()


def main(argv: list[str]) -> int:
    from absl import app, flags

    from crack_tf.photo_io import Failures, PhotoError
    from crack_tf.photo_scan import make_scanner, start_compile_cache
    from crack_tf.predictor import load_model
    from crack_tf.scan import read_ahead

    photos = argv[1:]
    if not photos:
        raise app.UsageError("pass one or more photo paths after the flags")
    cfg = flags.FLAGS
    start_compile_cache(cfg.compile_cache_dir)
    predictor = load_model(cfg.model, cfg.tta, cfg.precision)
    predict = predictor.predict
    size = cfg.image_size or predictor.image_size
    if not size:
        raise app.UsageError(f"--model={cfg.model}: its input size is unknown; pass --image_size")
    scanner = make_scanner(predictor, cfg.mode, cfg.window, cfg.stride, cfg.batch, int(size))
    threshold = predictor.threshold if cfg.threshold is None else cfg.threshold
    print(f"heatmap: threshold {threshold:.4g} "
          f"({predictor.threshold_source if cfg.threshold is None else '--threshold'}), tta {predictor.tta}, "
          f"precision {predictor.precision}; {scanner.note}", flush=True)
    os.makedirs(cfg.output_dir, exist_ok=True)
    total_s, total_mp = 0.0, 0.0
    failures = Failures(cfg.fail_fast)
    decoded = read_ahead(((p, None) for p in photos), cfg.max_megapixels, depth=2)
    for i, (path, photo, error) in enumerate(decoded, 1):
        try:
            if error:
                raise error
            s = process_photo(predict, int(size), path, cfg.output_dir, cfg.window, cfg.stride, cfg.batch,
                              threshold, cfg.boxes, cfg.overlay_max_side, cfg.max_megapixels, scanner, photo)
        except PhotoError as err:
            failures.add(path, err)
            continue
        total_s += s["seconds"]
        total_mp += s["height"] * s["width"] / 1e6
        print(f"[{i}/{len(photos)}] {path}: {s['width']}x{s['height']}, {s['windows']} windows, "
              f"max p={s['max_prob']:.3f}, {s['boxes']} boxes, {s['seconds']:.1f}s", flush=True)
    done, failed = len(photos) - len(failures.items), len(failures.items)
    print(f"summary: {done} photos{f', {failed} failed' if failed else ''}, {total_mp:.1f} MP in {total_s:.1f}s "
          f"({total_s / max(total_mp, 1e-9):.2f} s/MP); outputs in {cfg.output_dir}", flush=True)
    return failures.report(len(photos), "photos")


def run() -> None:
    """Console-script entry point."""
    from crack_tf import cli

    cli.entry_point(_define_flags, main)()


if __name__ == "__main__":
    run()
