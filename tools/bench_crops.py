"""Render rate of the photos source's training crops (one thread), per augmentation setting.

  OMP_NUM_THREADS=1 taskset -c 0 python tools/bench_crops.py --data_dir=uavcrack,deepcrack --crops=2000

The GPU runs of the photos source and of tools/pretrain.py are bound by the CPU cores rendering
crops (``CropSampler.batch`` in worker processes), so crops/s per core times the loader
processes bounds their images/s. Each setting is timed twice on the same crops (the better one
is printed); ``robust`` is ``configs/addons/robust_augment.cfg`` (the recommended recipe's), ``simclr``
times the two-view batches of ``tools/pretrain.py --mode=simclr``. Then one 224-px crop's Gaussian noise
drawn both ways, ``rng.normal`` (the renderer's until 2026-12-07) and ``crops.gaussian_noise``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from crack_tf.data.crops import CropOptions, CropSampler, gaussian_noise  # noqa: E402
from crack_tf.data.photos import load_sources, parse_sources  # noqa: E402
from crack_tf.data.unlabelled import SIMCLR_AUGMENT, ViewSampler  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROBUST_ADDON = os.path.join(REPO, "configs", "addons", "robust_augment.cfg")


def addon_options(path: str) -> dict[str, float]:
    """The ``--<option>=<value>`` lines of an augmentation add-on as CropOptions keyword arguments."""
    fields = {f.name for f in dataclasses.fields(CropOptions)}
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in (raw.strip() for raw in f):
            if not line.startswith("--"):
                continue
            name, _, value = line[2:].partition("=")
            if name not in fields:
                raise ValueError(f"{path}: --{name} is not a crop option ({sorted(fields)})")
            out[name] = float(value)
    return out


SETTINGS = {"recipe": {}, "gamma": {"gamma": 0.3}, "grayscale": {"grayscale": 0.1}, "hue": {"hue": 0.03},
            "blur": {"blur": 0.25}, "jpeg": {"jpeg": 0.3}, "noise": {"noise": 6.0},
            "robust": addon_options(ROBUST_ADDON), "simclr": SIMCLR_AUGMENT}
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


def noise_draw_ms(image_size: int, draws: int) -> dict[str, float]:
    """ms per crop's [S, S, 3] float32 Gaussian noise: ``rng.normal`` + float32 copy against
    ``gaussian_noise`` (best of two timings each, alternated)."""
    shape, rng = (image_size, image_size, 3), np.random.default_rng(0)
    ways = {"rng.normal": lambda: rng.normal(0.0, 3.0, shape).astype(np.float32),
            "gaussian_noise": lambda: gaussian_noise(rng, shape, 3.0)}
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(2):
        for name, draw in ways.items():
            start = time.perf_counter()
            for _ in range(draws):
                draw()
            best[name] = min(best[name], 1e3 * (time.perf_counter() - start) / draws)
    return best


def main(argv: list[str]) -> None:
    del argv
    for name, rate in rates(FLAGS.data_dir, FLAGS.data_root, FLAGS.crops, FLAGS.image_size, FLAGS.settings).items():
        print(f"{name:10s} {rate:7.0f} crops/s per core ({1e3 / rate:.2f} ms/crop) {SETTINGS[name] or ''}", flush=True)
    ms = noise_draw_ms(FLAGS.image_size, max(FLAGS.crops // 4, 10))
    print(f"noise draw per crop: rng.normal {ms['rng.normal']:.2f} ms, gaussian_noise {ms['gaussian_noise']:.2f} ms "
          f"({ms['rng.normal'] / ms['gaussian_noise']:.1f}x)", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
