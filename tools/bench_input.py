"""Input pipeline throughput vs. the model's training consumption, in one run (TF backend).

  python tools/bench_input.py --data_dir=../shared/data/uav75_tiles --batches=40 --train_steps=3

Measures images/s of the training pipeline (decode + resize-up to --image_size + random crop +
flips/rot90/brightness/contrast + batch) for the tf.data backend (and the NumPy PyDataset with
--numpy), then images/s of ``model.train_on_batch`` for resnet50_aspp (ASPP after layer1, batch
--batch_size at --image_size, random init) and prints pipeline / consumption (goal >= 2).
"""

from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

from crack_tf.data import DataConfig, make_input  # noqa: E402
from crack_tf.data.progress import Progress  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/data/uav75_tiles", "Image folder with a train split.")
flags.DEFINE_integer("image_size", 224, "Crop / model input size.")
flags.DEFINE_integer("batch_size", 32, "Batch size for both measurements.")
flags.DEFINE_integer("batches", 40, "Pipeline batches to time (after --warmup).")
flags.DEFINE_integer("warmup", 5, "Pipeline batches (and model steps, capped at 2) not timed.")
flags.DEFINE_integer("train_steps", 3, "Timed train_on_batch steps of the model (0 = skip the model).")
flags.DEFINE_string("model", "resnet50_aspp", "Model name for the consumption measurement.")
flags.DEFINE_bool("numpy", True, "Also time the TF-free PyDataset loader (single process).")


def time_pipeline(split, batches: int, warmup: int, numpy: bool) -> float:
    it = iter(split.dataset) if not numpy else (split.dataset[i] for i in range(10**9))
    for _ in range(warmup):
        next(it)
    with Progress(batches, "numpy pipeline" if numpy else "tf.data pipeline") as bar:
        start = time.perf_counter()
        for _ in range(batches):
            x, _ = next(it)
            bar.update(1)
        _ = x[0, 0, 0, 0] if numpy else x.numpy()[0, 0, 0, 0]
        elapsed = time.perf_counter() - start
    return batches * FLAGS.batch_size / elapsed


def time_model(steps: int, warmup: int) -> float:
    import keras
    import numpy as np

    from crack_tf import models

    model = models.get(FLAGS.model, input_shape=(FLAGS.image_size, FLAGS.image_size, 3), insert_after="layer1")
    model.compile(
        optimizer=keras.optimizers.SGD(0.005, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3), dtype=np.uint8)
    y = rng.integers(0, 2, FLAGS.batch_size).astype(np.int32)
    for _ in range(max(1, min(warmup, 2))):
        model.train_on_batch(x, y)
    with Progress(steps, f"{FLAGS.model} train_on_batch") as bar:
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
            bar.update(1)
        elapsed = time.perf_counter() - start
    return steps * FLAGS.batch_size / elapsed


def main(argv: list[str]) -> int:
    del argv
    import tensorflow as tf

    cfg = DataConfig(path=FLAGS.data_dir, image_size=FLAGS.image_size)
    split = make_input(cfg, "train", True, FLAGS.batch_size, seed=0, backend="tf")
    print(f"data: {FLAGS.data_dir} train {split.class_counts} ({split.num_examples} files, {len(split.skipped)} skipped)")
    print(f"machine: {platform.machine()} {os.cpu_count()} CPU cores, TF {tf.__version__}, Python {platform.python_version()}")
    results = {"tf.data": time_pipeline(split, FLAGS.batches, FLAGS.warmup, False)}
    if FLAGS.numpy:
        np_split = make_input(cfg, "train", True, FLAGS.batch_size, seed=0, backend="numpy")
        results["numpy PyDataset"] = time_pipeline(np_split, max(4, FLAGS.batches // 4), 1, True)
    for name, rate in results.items():
        print(f"pipeline {name:<16} {rate:8.1f} images/s")
    if FLAGS.train_steps > 0:
        consume = time_model(FLAGS.train_steps, FLAGS.warmup)
        print(f"model    {FLAGS.model:<16} {consume:8.1f} images/s (train_on_batch, batch {FLAGS.batch_size})")
        ratio = results["tf.data"] / consume
        verdict = "OK (>= 2x)" if ratio >= 2 else "BELOW the 2x goal"
        print(f"SUMMARY: tf.data pipeline {results['tf.data']:.1f} img/s vs model {consume:.1f} img/s: "
              f"ratio {ratio:.1f}x {verdict}")  # fmt: skip
    else:
        print(f"SUMMARY: tf.data pipeline {results['tf.data']:.1f} img/s (model not timed)")
    return 0


if __name__ == "__main__":
    app.run(main)
