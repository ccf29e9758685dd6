"""Scores unlabelled tiles and photos in bulk: ``python -m crack_tf.predict --model=M files or folders``.

  python -m crack_tf.predict --model=runs/uav75/final.keras flight_0412/ --recursive \\
      --csv=flight_0412.csv --jsonl=flight_0412.jsonl --gsd_cm=0.3

One row per file (see ``crack_tf.inspection.scan``): a tile (no larger than ``--window``) gets its crack
probability; a larger photo is scanned with the sliding-window heatmap and gets the highest
window probability, its number of crack boxes and the cracked area share. Every row has
``is_crack`` at the model's stored threshold (or ``--threshold``), the threshold, the model file
and its SHA-256, the image size, and, when the photo has EXIF GPS, latitude / longitude /
altitude (and the capture time). The JSONL rows also list the boxes (pixels; with ``--gsd_cm``
also centimetres and approximate WGS84 polygons, see ``crack_tf.inspection.geo``). ``--explain`` writes a
Grad-CAM overlay per tile, and per photo for its highest window, into ``--explain_dir``.

Rows are written as files are scored (bounded memory over any number of files); files that
cannot be read are skipped, named at the end, and the exit code is then 1 (0 when all were
scored, 2 for a usage error such as an empty folder).
"""

from __future__ import annotations

import csv
import json
import os
import sys

from absl import app, flags

from crack_tf.choices import TTA_MODES
from crack_tf.inspection.gradcam import GradCAM, explain
from crack_tf.inspection.photo_scan import define_scan_flags, start_compile_cache
from crack_tf.inspection.scan import CSV_FIELDS
from crack_tf.model_precision import define_precision_flag

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None, ".keras file or SavedModel folder.", required=True)
    flags.DEFINE_string("csv", None, "Write one CSV row per file here.")
    flags.DEFINE_string("jsonl", None, "Write one JSON object per file here (with the boxes).")
    flags.DEFINE_bool("recursive", False, "Also read the sub-folders of folder arguments.")
    flags.DEFINE_integer("batch", 64, "Tiles / windows per model call.")
    flags.DEFINE_enum("tta", None, list(TTA_MODES), "Test-time augmentation (default: the model's).")
    define_precision_flag()
    flags.DEFINE_float("threshold", None, "is_crack threshold (default: the model's stored one, else 0.5).")
    flags.DEFINE_integer("window", 128, "Window side in photo pixels; files no larger are scored as tiles.")
    flags.DEFINE_integer("stride", 64, "Window step of the photo scan.")
    flags.DEFINE_float("gsd_cm", None, "Ground sampling distance (cm per pixel): box sizes in cm and WGS84 boxes "
                       "for photos with EXIF GPS.")
    flags.DEFINE_float("max_megapixels", 89.5, "Skip photos larger than this (raise it to process them).")
    flags.DEFINE_bool("explain", False, "Write Grad-CAM overlays (tiles; the highest window of photos).")
    flags.DEFINE_string("explain_dir", "explain", "Folder of the --explain overlays.")
    flags.DEFINE_bool("fail_fast", False, "Stop at the first unreadable file.")
    define_scan_flags()


class Writers:
    """The CSV and JSONL outputs, written row by row."""

    def __init__(self, csv_path: str | None, jsonl_path: str | None):
        self._files = []
        self.csv = self.jsonl = None
        if csv_path:
            f = self._open(csv_path)
            self.csv = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            self.csv.writeheader()
        if jsonl_path:
            self.jsonl = self._open(jsonl_path)

    def _open(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        f = open(path, "w", newline="", encoding="utf-8")
        self._files.append(f)
        return f

    def write(self, row: dict) -> None:
        if self.csv is not None:
            self.csv.writerow(row)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(row) + "\n")
        for f in self._files:
            f.flush()

    def close(self) -> None:
        for f in self._files:
            f.close()


def main(argv: list[str]) -> int:
    from crack_tf.data.progress import Progress
    from crack_tf.inspection.photo_io import Failures, PhotoError
    from crack_tf.inspection.scan import Scorer, count_images, file_sha256, iter_images, read_ahead
    from crack_tf.predictor import load_model

    inputs = argv[1:]
    if not (FLAGS.csv or FLAGS.jsonl):
        raise app.UsageError("pass --csv=FILE and/or --jsonl=FILE")
    total = count_images(inputs, FLAGS.recursive)
    start_compile_cache(FLAGS.compile_cache_dir)
    predictor = load_model(FLAGS.model, FLAGS.tta, FLAGS.precision)
    scorer = Scorer(predictor, FLAGS.window, FLAGS.stride, FLAGS.batch, FLAGS.max_megapixels, FLAGS.gsd_cm,
                    FLAGS.threshold, keep_pixels=FLAGS.explain, mode=FLAGS.mode, refine_band=FLAGS.refine_band)
    cam = None
    if FLAGS.explain:
        if predictor.model is None:
            raise ValueError("--explain needs a .keras model (a SavedModel has no layers to explain)")
        cam = GradCAM(predictor.model)
    print(f"predict: {total} files, threshold {scorer.threshold:.4g} "
          f"({predictor.threshold_source if FLAGS.threshold is None else '--threshold'}), tta {predictor.tta}, "
          f"precision {predictor.precision}; {scorer.scanner.note}", file=sys.stderr, flush=True)
    model_name, model_hash = os.path.abspath(FLAGS.model), file_sha256(FLAGS.model)
    writers, failures = Writers(FLAGS.csv, FLAGS.jsonl), Failures(FLAGS.fail_fast)
    counts = {"tile": 0, "photo": 0, "crack": 0}

    def emit(results) -> None:
        for r in results:
            row = r.row(model_name, model_hash)
            if writers.jsonl is not None:
                row["box_list"] = r.boxes
                row["seconds"] = round(r.seconds, 4)  # scoring time of a photo (0 for tiles)
            if cam is not None:
                row["explain"] = explain(r, scorer.size, FLAGS.window, FLAGS.explain_dir, cam)
            writers.write(row)
            counts[r.kind] += 1
            counts["crack"] += r.is_crack
            bar.update(1)

    try:
        with Progress(total, "predict") as bar:
            for path, image, error in read_ahead(iter_images(inputs, FLAGS.recursive), FLAGS.max_megapixels):
                try:
                    if error:
                        raise error
                    if scorer.is_tile(path, image):
                        emit(scorer.add_tile(path, image))
                    else:
                        emit(scorer.flush())  # keep the rows in file order
                        emit([scorer.photo(path, image)])
                except PhotoError as err:
                    failures.add(path, err)
                    bar.update(1)
            emit(scorer.flush())
    finally:
        writers.close()
    print(f"predict: {counts['tile']} tiles and {counts['photo']} photos scored, {counts['crack']} crack, "
          f"{len(failures.items)} failed; rows in {', '.join(p for p in (FLAGS.csv, FLAGS.jsonl) if p)}",
          file=sys.stderr, flush=True)
    return failures.report(total)


def run() -> None:
    """Console-script entry point."""
    from crack_tf import cli

    cli.entry_point(define_flags, main)()


if __name__ == "__main__":
    run()
