"""A static HTML inspection report of a flight of drone photos: ``python -m crack_tf.report``.

  python -m crack_tf.report --model=runs/uav75/final.keras flight_0412/ --out=report_0412 --gsd_cm=0.3

Opens from disk (``report_0412/index.html``), no server, no network, and scales to a flight: the
index is rendered in the browser from ``report.js`` (one compact entry per file), a page of rows
at a time with lazily loaded thumbnails (``img/<key>_thumb.jpg``, <= 256 px), sortable and
filterable by verdict (crack / no crack / failed), score and name; files that could not be read
are listed with their reason. Each photo has a detail page: the photo and its heat layer (overlay,
photo alone, or side by side), the crack boxes drawn and numbered on it, a colour scale of
p(crack), the box table (pixels, area, centimetres with ``--gsd_cm``), the EXIF capture time and
GPS position when present, and links to its per-pixel map (``.npy``), boxes (GeoJSON: WGS84 with
GPS and ``--gsd_cm``, else pixels; CSV). ``summary.csv`` has one row per photo (the
``crack_tf.predict`` columns). Unreadable files are skipped and named at the end (exit code 1);
see ``crack_tf.inspection.scan`` for tiles vs photos and ``crack_tf.inspection.report_pages`` for the pages.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import re
import sys

import numpy as np
from absl import flags

from crack_tf.choices import TTA_MODES
from crack_tf.inspection.gradcam import GradCAM, explain
from crack_tf.inspection.heatmap import downscale
from crack_tf.inspection.photo_scan import define_scan_flags, start_compile_cache
from crack_tf.inspection.report_pages import composite, flight_data, heat_rgba, render_photo, write_index
from crack_tf.model_precision import define_precision_flag

FLAGS = flags.FLAGS
THUMB_SIDE, PHOTO_SIDE, HEAT_SIDE = 256, 1600, 400  # longest sides of the index thumbnail, photo, heat layer


def define_flags() -> None:
    flags.DEFINE_string("model", None, ".keras file or SavedModel folder.", required=True)
    flags.DEFINE_string("out", "report", "Report folder (index.html inside).")
    flags.DEFINE_bool("recursive", False, "Also read the sub-folders of folder arguments.")
    flags.DEFINE_integer("window", 128, "Window side in photo pixels.")
    flags.DEFINE_integer("stride", 64, "Window step in photo pixels.")
    flags.DEFINE_integer("batch", 64, "Windows per model call.")
    flags.DEFINE_enum("tta", None, list(TTA_MODES), "Test-time augmentation (default: the model's).")
    define_precision_flag()
    flags.DEFINE_float("threshold", None, "Crack threshold (default: the model's stored one, else 0.5).")
    flags.DEFINE_float("gsd_cm", None, "Ground sampling distance in cm per pixel (box sizes, WGS84 boxes).")
    flags.DEFINE_float("max_megapixels", 89.5, "Skip photos larger than this (raise it to process them).")
    flags.DEFINE_bool("explain", False, "Add a Grad-CAM view of each photo's highest window.")
    flags.DEFINE_bool("fail_fast", False, "Stop at the first unreadable file.")
    flags.DEFINE_integer("write_threads", 4, "Threads writing each photo's files while the next photos are "
                         "scored (0: inline; --explain always writes inline, its Grad-CAM runs the model).",
                         lower_bound=0)
    define_scan_flags()


def heat_layer(result, max_side: int) -> np.ndarray:
    """RGBA heat colours of the photo's p(crack) map at longest side <= ``max_side`` (a tile: its score
    everywhere, at the size of its model input)."""
    if result.heatmap is None:
        return np.broadcast_to(heat_rgba(result.probability), (*result.image.shape[:2], 4)).copy()
    scale = max(1.0, max(result.width, result.height) / max_side)
    return heat_rgba(result.heatmap.pixel_map(scale=scale))


def write_photo_files(result, key: str, out: str, cam=None, window: int = 128, image_size: int = 224,
                      gsd_cm: float | None = None) -> dict:
    """Photo, heat layer, thumbnail, map, boxes (and Grad-CAM) of one photo; returns their paths (relative)."""
    from PIL import Image

    from crack_tf.inspection.geo import boxes_geojson
    from crack_tf.inspection.heatmap import write_boxes, write_pixel_map

    files = {"photo": f"img/{key}_photo.jpg", "heat": f"img/{key}_heat.png", "thumb": f"img/{key}_thumb.jpg"}
    Image.fromarray(downscale(result.image, PHOTO_SIDE)).save(os.path.join(out, files["photo"]), quality=88)
    Image.fromarray(heat_layer(result, HEAT_SIDE), "RGBA").save(os.path.join(out, files["heat"]))
    small = downscale(result.image, THUMB_SIDE)
    heat = Image.fromarray(heat_layer(result, THUMB_SIDE), "RGBA").resize(small.shape[1::-1], Image.BILINEAR)
    Image.fromarray(composite(small, np.asarray(heat))).save(os.path.join(out, files["thumb"]), quality=82)
    files["thumb_size"] = small.shape[1::-1]
    if result.heatmap is not None:
        files.update(map=f"data/{key}_heatmap.npy", geojson=f"data/{key}_boxes.geojson", csv=f"data/{key}_boxes.csv")
        write_pixel_map(result.heatmap, os.path.join(out, files["map"]))
        with open(os.path.join(out, files["geojson"]), "w") as f:
            json.dump(boxes_geojson(result.boxes, result.width, result.height, result.gps, gsd_cm,
                                    os.path.basename(result.path)), f)
        write_boxes(result.boxes, os.path.join(out, files["csv"]), "csv", os.path.basename(result.path))
    if cam is not None:
        files["gradcam"] = os.path.relpath(explain(result, image_size, window, os.path.join(out, "img"), cam, key),
                                           out)
    return files


class PhotoFilesWriter:
    """Writes each photo's report files (:func:`write_photo_files`) in background threads while the next
    photos are scored, at most ``ahead`` photos behind (each holds its pixels until written);
    :meth:`done` gives the (result, key, files) entries in the order submitted. ``workers=0`` writes
    inline (Grad-CAM runs the model, so it stays on the main thread). A write error is raised from
    the next :meth:`submit` or :meth:`done`."""

    def __init__(self, out: str, workers: int = 2, ahead: int = 4, **options) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.out, self.options, self.ahead = out, options, max(1, ahead)
        self.pool = ThreadPoolExecutor(workers) if workers > 0 else None
        self.pending: collections.deque = collections.deque()
        self.entries: list = []

    def _write(self, result, key: str) -> dict:
        files = write_photo_files(result, key, self.out, **self.options)
        result.image, result.heatmap = None, None  # keep the report's memory to the photos in flight
        return files

    def submit(self, result, key: str) -> None:
        if self.pool is None:
            self.entries.append((result, key, self._write(result, key)))
            return
        self.pending.append((result, key, self.pool.submit(self._write, result, key)))
        while len(self.pending) > self.ahead:
            self._collect()

    def _collect(self) -> None:
        result, key, future = self.pending.popleft()
        self.entries.append((result, key, future.result()))

    def done(self) -> list:
        try:
            while self.pending:
                self._collect()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
        return self.entries


def entry_key(index: int, path: str) -> str:
    """The file-name stem of a photo's report files: its position and a URL-safe form of its name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0])[:60]
    return f"{index:05d}_{stem}"


def severity_order(results: list) -> list[int]:
    """Indices sorted by severity: crack first, then photo score, then cracked area share."""
    return sorted(range(len(results)), key=lambda i: (not results[i].is_crack, -results[i].probability,
                                                      -results[i].cracked_share))


def main(argv: list[str]) -> int:
    from crack_tf.data.progress import Progress
    from crack_tf.inspection.photo_io import Failures, PhotoError
    from crack_tf.inspection.scan import Scorer, count_images, iter_images, read_ahead
    from crack_tf.predictor import load_model

    inputs = argv[1:]
    total = count_images(inputs, FLAGS.recursive)
    start_compile_cache(FLAGS.compile_cache_dir)
    predictor = load_model(FLAGS.model, FLAGS.tta, FLAGS.precision)
    scorer = Scorer(predictor, FLAGS.window, FLAGS.stride, FLAGS.batch, FLAGS.max_megapixels, FLAGS.gsd_cm,
                    FLAGS.threshold, keep_pixels=True, mode=FLAGS.mode, refine_band=FLAGS.refine_band)
    print(f"report: {total} files, threshold {scorer.threshold:.4g}, tta {predictor.tta}, precision "
          f"{predictor.precision}; {scorer.scanner.note}", file=sys.stderr, flush=True)
    cam = None
    if FLAGS.explain:
        cam = GradCAM(predictor.model) if predictor.model is not None else None
    for sub in ("img", "data", "photos"):
        os.makedirs(os.path.join(FLAGS.out, sub), exist_ok=True)
    failures = Failures(FLAGS.fail_fast)
    threads = 0 if cam is not None else FLAGS.write_threads
    writer = PhotoFilesWriter(FLAGS.out, workers=threads, ahead=max(4, 2 * threads), cam=cam, window=FLAGS.window,
                              image_size=scorer.size, gsd_cm=FLAGS.gsd_cm)
    with Progress(total, "report") as bar:
        for i, (path, image, error) in enumerate(read_ahead(iter_images(inputs, FLAGS.recursive),
                                                            FLAGS.max_megapixels)):
            try:
                if error:
                    raise error
                result = (scorer.add_tile(path, image) + scorer.flush() if scorer.is_tile(path, image)
                          else [scorer.photo(path, image)])
                writer.submit(result[0], entry_key(i, path))
            except PhotoError as err:
                failures.add(path, err)
            bar.update(1)
    entries = writer.done()
    entries = [entries[i] for i in severity_order([e[0] for e in entries])]
    keys = [None] + [key for _, key, _ in entries] + [None]
    for n, (r, key, files) in enumerate(entries, 1):
        with open(os.path.join(FLAGS.out, "photos", f"{key}.html"), "w", encoding="utf-8") as f:
            f.write(render_photo(r, files, FLAGS.gsd_cm, keys[n - 1], keys[n + 1]))
    write_index(FLAGS.out, flight_data(entries, failures.items, os.path.abspath(FLAGS.model), scorer.threshold))
    from crack_tf.inspection.scan import CSV_FIELDS, file_sha256

    digest = file_sha256(FLAGS.model)
    with open(os.path.join(FLAGS.out, "summary.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r.row(os.path.abspath(FLAGS.model), digest) for r, _, _ in entries)
    print(f"report: {len(entries)} photos ({sum(r.is_crack for r, _, _ in entries)} crack), {len(failures.items)} "
          f"skipped -> {os.path.join(FLAGS.out, 'index.html')}", file=sys.stderr, flush=True)
    return failures.report(total)


def run() -> None:
    """Console-script entry point."""
    from crack_tf import cli

    cli.entry_point(define_flags, main)()


if __name__ == "__main__":
    run()
