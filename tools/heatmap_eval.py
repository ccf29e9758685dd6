"""Pixel-level evaluation of sliding-window crack heatmaps on the UAV75 photos with masks.

  python tools/heatmap_eval.py --model=runs/uav75/best.keras \\
      --data=../shared/data/uav75/val --window=128 --stride=32 --threshold=0.5

For every ``<data>/images/<stem>.jpg`` with ``<data>/masks/<stem>.png`` it computes the
per-pixel map of :mod:`crack_tf.inspection.heatmap` and compares ``map > threshold`` with the mask
(255 = crack; 204 = planking joint and 0 = background are negative). Prints per photo and
pooled (micro: counts summed over photos) strict IoU / F1, tolerant P / R / F1 (a crack pixel
counts as found when the map is positive within --tolerance px, default window / 2),
the fraction of planking-joint pixels flagged, and seconds per megapixel. ``--json_out``
saves everything; ``--output_dir`` also writes each photo's overlay / maps / boxes.
"""

from __future__ import annotations

import glob
import json
import os
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from crack_tf.data.image_np import decode_image_np  # noqa: E402
from crack_tf.evaluation import pixels as P  # noqa: E402
from crack_tf.inspection import heatmap as H  # noqa: E402

flags.DEFINE_string("model", None, ".keras file or SavedModel folder.", required=True)
flags.DEFINE_string("data", os.path.join(REPO, "..", "shared", "data", "uav75", "val"),
                    "Folder with images/*.jpg and masks/*.png (same stems).")
flags.DEFINE_integer("window", 128, "Window side in photo pixels.")
flags.DEFINE_integer("stride", 32, "Window step in pixels.")
flags.DEFINE_integer("batch", 64, "Windows per model call.")
flags.DEFINE_float("threshold", None, "Map threshold (default: the model's stored threshold, else 0.5).")
flags.DEFINE_integer("tolerance", None, "Tolerant-metric radius in px (default window // 2).")
flags.DEFINE_integer("image_size", None, "Model input size if neither run.json nor the model fixes it.")
flags.DEFINE_string("output_dir", None, "Also write each photo's heatmap outputs here.")
flags.DEFINE_string("json_out", None, "Write per-photo and pooled metrics as JSON.")
flags.DEFINE_string("figure", None, "Write a PNG grid of every photo's p(crack) map with its mask drawn on it "
                    "(red = crack, white = planking joint); the photo itself is not shown.")
FLAGS = flags.FLAGS

_SHOWN = ("iou", "f1", "tolerant_precision", "tolerant_recall", "tolerant_f1", "joint_positive_rate")


def pairs(data: str) -> list[tuple[str, str]]:
    """(photo, mask) paths with matching stems."""
    photos = sorted(glob.glob(os.path.join(data, "images", "*")))
    out = []
    for p in photos:
        m = os.path.join(data, "masks", os.path.splitext(os.path.basename(p))[0] + ".png")
        if os.path.isfile(m):
            out.append((p, m))
    if not out:
        raise app.UsageError(f"--data={data}: no images/<stem>.* with masks/<stem>.png found")
    return out


def _line(name: str, m: dict) -> str:
    return f"{name:<16}" + " ".join(f"{m[k]:>8.4f}" for k in _SHOWN)


def save_figure(path: str, panels: list[tuple[str, object, object]], threshold: float) -> None:
    """One panel per photo: the map (viridis, 0..1), crack-mask pixels red, joint pixels white,
    the map's threshold contour black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, pmap, mask) in zip(axes.flat, panels):
        rgb = plt.get_cmap("viridis")(np.clip(pmap, 0, 1))[..., :3]
        rgb[mask == 204] = 1.0
        rgb[mask == 255] = (1.0, 0.0, 0.0)
        ax.imshow(rgb)
        ax.contour(pmap > threshold, levels=[0.5], colors="black", linewidths=0.8)
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"p(crack) map (viridis 0..1), map > {threshold} outlined; mask: red crack, white joint",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str]) -> int:
    from crack_tf.predictor import load_model

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    predictor = load_model(FLAGS.model)
    predict = predictor.predict
    threshold = predictor.threshold if FLAGS.threshold is None else FLAGS.threshold
    size = FLAGS.image_size or predictor.image_size
    if not size:
        raise app.UsageError(f"--model={FLAGS.model}: input size unknown; pass --image_size")
    tolerance = FLAGS.window // 2 if FLAGS.tolerance is None else FLAGS.tolerance
    items = pairs(FLAGS.data)
    if FLAGS.output_dir:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
    print(f"{len(items)} photos, window {FLAGS.window} stride {FLAGS.stride} -> {size} px, threshold "
          f"{threshold}, tolerance {tolerance} px")
    print(f"{'photo':<16}" + " ".join(f"{k[:8]:>8}" for k in _SHOWN))
    results, seconds, mpix, panels = [], 0.0, 0.0, []
    for photo_path, mask_path in items:
        photo = H.load_photo(photo_path, exif=False)  # the mask is drawn on the stored pixels
        mask = decode_image_np(mask_path)[..., 0]
        if FLAGS.output_dir:
            H.process_photo(predict, int(size), photo_path, FLAGS.output_dir, FLAGS.window, FLAGS.stride,
                            FLAGS.batch, threshold)
        hm = H.sliding_heatmap(predict, photo, int(size), FLAGS.window, FLAGS.stride, FLAGS.batch)
        pmap = hm.pixel_map()
        m = P.pixel_metrics(pmap, mask, threshold, tolerance)
        if FLAGS.figure:
            panels.append((os.path.splitext(os.path.basename(photo_path))[0], pmap, mask))
        m.update(photo=os.path.basename(photo_path), seconds=hm.seconds, megapixels=hm.height * hm.width / 1e6)
        seconds += hm.seconds
        mpix += m["megapixels"]
        results.append(m)
        print(_line(os.path.splitext(m["photo"])[0][:15], m), flush=True)
    pooled = P.pool_metrics(results)
    print(_line("pooled", pooled))
    print(f"summary: {len(items)} photos, pooled IoU {pooled['iou']:.4f} F1 {pooled['f1']:.4f}, tolerant F1 "
          f"{pooled['tolerant_f1']:.4f} (P {pooled['tolerant_precision']:.4f} R {pooled['tolerant_recall']:.4f}), "
          f"joints flagged {pooled['joint_positive_rate']:.4f}, {seconds / max(mpix, 1e-9):.2f} s/MP")
    if FLAGS.figure:
        save_figure(FLAGS.figure, panels, threshold)
        print(f"figure -> {FLAGS.figure}")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump({"model": FLAGS.model, "window": FLAGS.window, "stride": FLAGS.stride,
                       "threshold": threshold, "tolerance": tolerance, "image_size": int(size),
                       "photos": results, "pooled": pooled, "seconds_per_megapixel": seconds / max(mpix, 1e-9)},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    app.run(main)
