"""Render rate of the photos source's training crops (one thread), per augmentation setting.

  OMP_NUM_THREADS=1 taskset -c 0 python tools/bench_crops.py --data_dir=uavcrack,deepcrack --crops=2000

The GPU runs of the photos source and of tools/pretrain.py are bound by the CPU cores rendering
crops (``CropSampler.batch`` in worker processes), so crops/s per core times the loader
processes bounds their images/s. Each setting is timed twice on the same crops (the better one
is printed); ``simclr`` times the two-view batches of ``tools/pretrain.py --mode=simclr``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from crack_tf.data.crops import CropOptions, CropSampler  # noqa: E402
from crack_tf.data.photos import load_sources, parse_sources  # noqa: E402
from crack_tf.data.unlabelled import SIMCLR_AUGMENT, ViewSampler  # noqa: E402

ROBUST = {"gamma": 0.3, "grayscale": 0.1, "hue": 0.03, "blur": 0.25, "jpeg": 0.3, "contrast": 0.2}
SETTINGS = {"recipe": {}, "gamma": {"gamma": 0.3}, "grayscale": {"grayscale": 0.1}, "hue": {"hue": 0.03},
            "blur": {"blur": 0.25}, "jpeg": {"jpeg": 0.3}, "robust": ROBUST, "simclr": SIMCLR_AUGMENT}
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("data_dir", "uavcrack,deepcrack", "Photo sources (train splits), --data_dir syntax.")
    flags.DEFINE_string("data_root", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                                  "data"), "Folder of the sources.")
    flags.DEFINE_integer("crops", 2000, "Crops per timing.")
    flags.DEFINE_integer("image_size", 224, "Crop size.")
    flags.DEFINE_list("settings", list(SETTINGS), f"Settings to time, of {list(SETTINGS)}.")


def rates(data_dir: str, data_root: str, crops: int, image_size: int, settings: list[str]) -> dict[str, float]:
    """Crops (or SimCLR views) per second of one thread, for each named setting."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
    specs = parse_sources(data_dir, data_root)
    sets = load_sources(specs, "train")
    out = {}
    for name in settings:
        options = CropOptions(image_size=image_size, **SETTINGS[name])
        if name == "simclr":
            sampler = ViewSampler([p.image for s in sets for p in s.photos], options, 0, region=192)
        else:
            sampler = CropSampler(sets, [s.weight for s in specs], options, 0, crops)
        sampler.batch(0, 16)  # warm-up
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            sampler.batch(1, crops - crops % 2)
            best = min(best, time.perf_counter() - start)
        out[name] = (crops - crops % 2) / best
    return out


def main(argv: list[str]) -> None:
    del argv
    for name, rate in rates(FLAGS.data_dir, FLAGS.data_root, FLAGS.crops, FLAGS.image_size, FLAGS.settings).items():
        print(f"{name:10s} {rate:7.0f} crops/s per core ({1e3 / rate:.2f} ms/crop) {SETTINGS[name] or ''}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
