"""Compiles and seconds of the trainer's after-training scoring (the stored operating point of
final.keras and best.keras, margins.npz, features.npz), on the JAX backend:

  KERAS_BACKEND=jax python tools/bench_finish.py [--size=64] [--tta=none]
  KERAS_BACKEND=jax CRACK_TF_REPO=<another checkout> python tools/bench_finish.py   # the same there

A random resnet50_aspp, val tiles of two sources and eval tiles of a third whose counts are not
multiples of the batch (short last batches, as the real splits have), scored through
``crack_tf.training.loop._store_operating_point`` as the trainer calls it. Prints one JSON line:
the XLA compiles of predict functions (each new batch shape or model is one) and the seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import types

sys.path.insert(0, os.environ.get("CRACK_TF_REPO") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Compiles(logging.Handler):
    """Counts JAX's "Finished XLA compilation of jit(predict_step)" log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Finished XLA compilation" in message and "predict" in message:
            self.predict += 1


def _part(rng, n: int, size: int, batch: int):
    import numpy as np

    x = rng.normal(100, 30, (n, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 2, n)
    return types.SimpleNamespace(dataset=[(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)],
                                 groups=[])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="Tile size.")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tta", default="none")
    args = parser.parse_args()
    import jax
    import keras
    import numpy as np

    from crack_tf import models
    from crack_tf.training.loop import _store_operating_point

    if keras.backend.backend() != "jax":
        raise SystemExit("run with KERAS_BACKEND=jax (the compiles are counted from JAX's log)")
    compiles = _Compiles()
    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax").addHandler(compiles)
    rng = np.random.default_rng(0)
    val = types.SimpleNamespace(by_source={"a": _part(rng, 75, args.size, args.batch),
                                           "b": _part(rng, 45, args.size, args.batch)})
    eval_input = types.SimpleNamespace(by_source={"c": _part(rng, 50, args.size, args.batch)})
    model = models.get("resnet50_aspp", input_shape=(args.size, args.size, 3))
    with tempfile.TemporaryDirectory() as out:
        for name in ("final.keras", "best.keras"):
            model.save(os.path.join(out, name))
        cfg = types.SimpleNamespace(threshold_rule="f1", tta=args.tta, model_dir=out, save_eval_features=True,
                                    image_size=args.size, small_policy="resize", model="resnet50_aspp",
                                    adabn_eval_crops=0)
        runtime = types.SimpleNamespace(num_processes=1, strategy=None)
        started = time.perf_counter()
        _store_operating_point(model, cfg, val, out, runtime, eval_input)
        seconds = time.perf_counter() - started
    print(json.dumps({"repo": sys.path[0], "predict_compiles": compiles.predict, "seconds": round(seconds, 2),
                      "size": args.size, "batch": args.batch, "tta": args.tta}))


if __name__ == "__main__":
    main()
