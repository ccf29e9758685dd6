"""CPU / GPU seconds per megapixel of sliding-window heatmaps, this checkout against another.

  PYTHONPATH=.before python tools/bench_heatmap.py before   # the trainer of an older commit
  python tools/bench_heatmap.py after                        # this checkout

Builds (``before``) or reloads (``after``) random-weight Zhang 2016 (99 px) and ResNet50 + ASPP
(64 px) ``.keras`` models in /tmp, maps one 1024 x 1024 random photo at window 128, stride 64,
batch 64 after a warm-up, prints s/MP and saves the window grids (/tmp/hm_<mode>_<model>.npy)
so the two checkouts' scores can be compared.
"""

import sys
import time

import numpy as np

from crack_tf import models
from crack_tf.inspection import heatmap as H


def predictor_of(path: str, mode: str):
    if mode == "before":  # the loader of the older checkout
        from crack_tf.evaluate import load_predictor

        return load_predictor(path)[0]
    from crack_tf.predictor import load_model

    return load_model(path).predict


def main(mode: str) -> None:
    photo = np.clip(np.random.default_rng(0).normal(140, 20, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    for name, size in (("zhang2016", 99), ("resnet50_aspp", 64)):
        path = f"/tmp/hm_{name}.keras"
        if mode == "before":
            models.get(name, input_shape=(size, size, 3)).save(path)
        predict = predictor_of(path, mode)
        H.sliding_heatmap(predict, photo[:256, :256], size, 128, 64, 64)  # warm-up (compile)
        started = time.perf_counter()
        heatmap = H.sliding_heatmap(predict, photo, size, 128, 64, 64)
        seconds = time.perf_counter() - started
        np.save(f"/tmp/hm_{mode}_{name}.npy", heatmap.grid)
        print(f"{mode} {name}: {seconds / 1.048576:.3f} s/MP, {heatmap.grid.size} windows", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "after")
