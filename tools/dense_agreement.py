"""Dense vs window-by-window scoring at the same windows, per source, and what test-time views buy.

  python tools/dense_agreement.py --model=runs/crackmix/final.keras \\
      --sources=uav75,uavcrack,deepcrack --data_root=../shared/data --tta=none,d4 --json_out=agree.json

For every val photo of each source (deepcrack: its val fold) the dense grid (``crack_tf.inspection.dense``)
is computed, then the windows at the very same photo-pixel origins are scored one by one
(``--mode=windows``). Per source and TTA mode: the share of windows with the same verdict at the
model's stored threshold (or ``--threshold``), max and mean |dp|, the IoU of the two modes' crack
boxes (pixels inside any box, pooled over photos), and the accuracy of each mode's verdicts
against the masks (a window is crack with >= ``--crack_px`` crack pixels, background with none,
otherwise left out: the rule of the uav75_tiles set), with the seconds each mode took; and for each
``--refine`` band what ``--refine_band`` would give (the share of windows it scores again, its equal
verdicts and accuracy), computed from the two grids.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from crack_tf.inspection import heatmap as H  # noqa: E402

flags.DEFINE_string("model", None, ".keras model (crack_tf.train output).", required=True)
flags.DEFINE_string("sources", "uav75,uavcrack,deepcrack", "Photo sources under --data_root (their val split).")
flags.DEFINE_string("data_root", os.path.join(REPO, "..", "shared", "data"), "Folder of the sources.")
flags.DEFINE_list("tta", ["none"], "TTA modes to measure (none, flips, d4).")
flags.DEFINE_integer("window", 128, "Window side in photo pixels.")
flags.DEFINE_integer("stride", 64, "Requested stride (dense rounds it down to whole cells).")
flags.DEFINE_integer("batch", 64, "Windows per model call (windows mode).")
flags.DEFINE_float("threshold", None, "Verdict threshold (default: the model's stored one).")
flags.DEFINE_integer("crack_px", 40, "Crack pixels that make a window a crack window (labels).")
flags.DEFINE_integer("limit", 0, "At most this many photos per source (0 = all).")
flags.DEFINE_list("refine", ["0.05", "0.1", "0.2"], "Refine bands to score (--refine_band of the inspection "
                  "commands: dense values within the band of the threshold replaced by the windows' values).")
flags.DEFINE_string("json_out", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS


def box_mask(boxes: list[dict], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for b in boxes:
        out[b["y0"] : b["y1"], b["x0"] : b["x1"]] = True
    return out


def window_labels(crack: np.ndarray, ys: np.ndarray, xs: np.ndarray, window: int, crack_px: int) -> np.ndarray:
    """1 crack / 0 background / -1 ambiguous for each window of the grid (ys x xs)."""
    integral = np.pad(crack.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    y1, x1 = np.minimum(ys + window, crack.shape[0]), np.minimum(xs + window, crack.shape[1])
    count = (integral[y1][:, x1] - integral[ys][:, x1] - integral[y1][:, xs] + integral[ys][:, xs])
    return np.where(count >= crack_px, 1, np.where(count == 0, 0, -1))


@dataclasses.dataclass
class Tally:
    windows: int = 0
    equal: int = 0
    max_dp: float = 0.0
    sum_dp: float = 0.0
    box_inter: int = 0
    box_union: int = 0
    labelled: int = 0
    right: dict = dataclasses.field(default_factory=lambda: {"dense": 0, "windows": 0})
    seconds: dict = dataclasses.field(default_factory=lambda: {"dense": 0.0, "windows": 0.0})
    photos: int = 0
    bands: tuple = ()
    refine: dict = dataclasses.field(default_factory=dict)  # band -> {"rescored", "equal", "right"}

    def add(self, dense: H.Heatmap, windows: H.Heatmap, threshold: float, labels: np.ndarray) -> None:
        t = np.float32(threshold)
        dp = np.abs(dense.grid - windows.grid)
        self.photos += 1
        self.windows += dp.size
        self.equal += int(((dense.grid > t) == (windows.grid > t)).sum())
        self.max_dp, self.sum_dp = max(self.max_dp, float(dp.max())), self.sum_dp + float(dp.sum())
        a = box_mask(H.crack_boxes(dense, threshold), (dense.height, dense.width))
        b = box_mask(H.crack_boxes(windows, threshold), (dense.height, dense.width))
        self.box_inter, self.box_union = self.box_inter + int((a & b).sum()), self.box_union + int((a | b).sum())
        known = labels >= 0
        self.labelled += int(known.sum())
        for name, hm in (("dense", dense), ("windows", windows)):
            self.right[name] += int(((hm.grid > t) == (labels == 1))[known].sum())
            self.seconds[name] += hm.seconds
        for band in self.bands:  # what --refine_band=band would give: windows' values near the threshold
            near = np.abs(dense.grid - t) < band
            grid = np.where(near, windows.grid, dense.grid)
            r = self.refine.setdefault(band, {"rescored": 0, "equal": 0, "right": 0})
            r["rescored"] += int(near.sum())
            r["equal"] += int(((grid > t) == (windows.grid > t)).sum())
            r["right"] += int(((grid > t) == (labels == 1))[known].sum())

    def summary(self) -> dict:
        return {"photos": self.photos, "windows": self.windows, "equal_verdicts": self.equal / max(self.windows, 1),
                "max_abs_dp": self.max_dp, "mean_abs_dp": self.sum_dp / max(self.windows, 1),
                "box_iou": self.box_inter / self.box_union if self.box_union else 1.0,
                "labelled_windows": self.labelled,
                "accuracy": {k: v / max(self.labelled, 1) for k, v in self.right.items()},
                "seconds": dict(self.seconds),
                "refine": {f"{band:g}": {"rescored_share": r["rescored"] / max(self.windows, 1),
                                         "equal_verdicts": r["equal"] / max(self.windows, 1),
                                         "accuracy": r["right"] / max(self.labelled, 1)}
                           for band, r in self.refine.items()}}


def main(argv: list[str]) -> None:
    from crack_tf.data.photos import list_photos, load_photo, parse_sources
    from crack_tf.inspection.dense import DenseScorer
    from crack_tf.predictor import load_model

    base = load_model(FLAGS.model, "none")
    threshold = base.threshold if FLAGS.threshold is None else FLAGS.threshold
    results: dict = {"model": os.path.abspath(FLAGS.model), "threshold": threshold, "window": FLAGS.window,
                     "stride": FLAGS.stride, "sources": {}}
    for tta in FLAGS.tta:
        predictor = dataclasses.replace(base, tta=tta)
        dense = DenseScorer(predictor, FLAGS.window, FLAGS.stride)
        results["dense"] = dense.describe()
        print(f"tta {tta}: {dense.describe()}, threshold {threshold:.4g}", flush=True)
        for source in parse_sources(FLAGS.sources, FLAGS.data_root):
            listing = list_photos(source, "val")
            pairs = listing.pairs[: FLAGS.limit or None]
            tally = Tally(bands=tuple(float(b) for b in FLAGS.refine))
            for image_path, mask_path in pairs:
                photo = load_photo(image_path, mask_path)
                d = dense.heatmap(photo.image)
                w = H.sliding_heatmap(predictor.predict, photo.image, predictor.image_size, FLAGS.window,
                                      FLAGS.stride, FLAGS.batch, progress=False, starts=(d.ys, d.xs),
                                      device=False)
                tally.add(d, w, threshold, window_labels(photo.crack, d.ys, d.xs, FLAGS.window, FLAGS.crack_px))
            s = tally.summary()
            results["sources"].setdefault(source.name, {})[tta] = dict(s, fold=listing.fold)
            print(f"  {source.name} ({listing.fold}, {s['photos']} photos, {s['windows']} windows): equal verdicts "
                  f"{100 * s['equal_verdicts']:.2f}%, max |dp| {s['max_abs_dp']:.3f}, mean |dp| "
                  f"{s['mean_abs_dp']:.4f}, box IoU {s['box_iou']:.3f}; accuracy on {s['labelled_windows']} "
                  f"labelled windows: dense {100 * s['accuracy']['dense']:.1f}%, windows "
                  f"{100 * s['accuracy']['windows']:.1f}%; seconds dense {s['seconds']['dense']:.1f}, windows "
                  f"{s['seconds']['windows']:.1f}", flush=True)
            for band, r in s["refine"].items():
                print(f"    --refine_band={band}: {100 * r['rescored_share']:.1f}% of windows scored again, equal "
                      f"verdicts {100 * r['equal_verdicts']:.2f}%, accuracy {100 * r['accuracy']:.1f}%", flush=True)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
