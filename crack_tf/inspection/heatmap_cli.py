"""Sliding-window crack heatmaps of photos of any size: ``python -m crack_tf.heatmap`` (library: ``crack_tf.inspection.heatmap``).

  python -m crack_tf.heatmap --model=runs/uav75/best.keras photo.jpg [more.jpg ...] \\
      --window=128 --stride=64 --output_dir=heatmaps --boxes=geojson

Outputs per photo ``<stem>`` in ``--output_dir`` (:func:`crack_tf.inspection.heatmap.process_photo`):
- ``<stem>_grid.npy``: float32 [rows, cols], p(crack) of each window (row-major window grid);
- ``<stem>_heatmap.npy``: float16 [H, W], one value per pixel = the mean p(crack) of all windows
  covering it (written band by band, never held whole in memory);
- ``<stem>_overlay.png``: the photo (longest side <= --overlay_max_side) with the map in red;
- ``<stem>_boxes.geojson`` / ``.csv``: crack boxes = 8-connected components of the window grid
  thresholded at ``--threshold``; a box is the union of its windows (pixel coordinates, x right,
  y down), with the max / mean p(crack) and the number of windows.

Photos that cannot be read are skipped, named at the end, and the exit code is then 1
(``--fail_fast`` stops at the first).
"""

from __future__ import annotations

import os

from absl import app, flags

from crack_tf.choices import TTA_MODES
from crack_tf.inspection.heatmap import process_photo
from crack_tf.inspection.photo_scan import define_scan_flags, make_scanner, start_compile_cache
from crack_tf.model_precision import define_precision_flag


def define_flags() -> None:
    """The command's flags (absl's global FLAGS)."""
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
    define_scan_flags()


def main(argv: list[str]) -> int:
    from crack_tf.inspection.photo_io import Failures, PhotoError
    from crack_tf.inspection.scan import read_ahead
    from crack_tf.predictor import load_model

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
    threshold = predictor.threshold if cfg.threshold is None else cfg.threshold
    scanner = make_scanner(predictor, cfg.mode, cfg.window, cfg.stride, cfg.batch, int(size),
                           refine_band=cfg.refine_band, threshold=threshold)
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

    cli.entry_point(define_flags, main)()


if __name__ == "__main__":
    run()
