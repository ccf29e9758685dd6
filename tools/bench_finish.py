"""Compiles and seconds of the trainer's after-training scoring (the stored operating point of
final.keras and best.keras, margins.npz, features.npz), on the JAX backend:

  KERAS_BACKEND=jax python tools/bench_finish.py [--size=64] [--tta=none]
  KERAS_BACKEND=jax CRACK_TF_REPO=<another checkout> python tools/bench_finish.py   # the same there
  # a leave-one-source-out run's operating point (no_uavcrack's tile counts, AdaBN on the real
  # uavcrack train photos), where its ~200 s on the GPU go:
  KERAS_BACKEND=jax python tools/bench_finish.py --size=224 --batch=128 --tta=d4 --precision=bf16 \
      --val=deepcrack:560,uav75:151 --eval=uavcrack:1539 --adabn_crops=1024 --data_root=../shared/data

A random resnet50_aspp, val tiles of two sources and eval tiles of a third whose counts are not
multiples of the batch (short last batches, as the real splits have), scored through
``crack_tf.training.loop._store_operating_point`` as the trainer calls it. With ``--adabn_crops``
the eval source is also scored after AdaBN on that many crops of its train photos under
``--data_root`` (the eval source's name must then be a real source), as ``--adabn_eval_crops``
does. Prints one JSON line: the XLA compiles of predict functions (each new batch shape or model
is one), the seconds, and each part's seconds (run.json's ``operating_point_seconds``); stopped by
SIGTERM (``timeout``), it prints the parts timed so far, the one cut off included.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import signal
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


class _Stopped(Exception):
    """SIGTERM (e.g. ``timeout``) mid-way: the parts timed so far are still printed."""


def _stop(signum, frame) -> None:
    raise _Stopped


def _part(rng, n: int, size: int, batch: int):
    import numpy as np

    x = rng.normal(100, 30, (n, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 2, n)
    return types.SimpleNamespace(dataset=[(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)],
                                 groups=[])


def _counts(text: str) -> dict[str, int]:
    """``name:count,name:count`` -> {name: count}."""
    pairs = [item.split(":") for item in text.split(",") if item]
    if not pairs or any(len(p) != 2 or not p[1].isdigit() or int(p[1]) < 1 for p in pairs):
        raise SystemExit(f"expected source:tiles[,source:tiles...] with tiles >= 1, got {text!r}")
    return {name: int(n) for name, n in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="Tile size.")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tta", default="none")
    parser.add_argument("--val", default="a:75,b:45", help="Val tiles per source, source:count,...")
    parser.add_argument("--eval", default="c:50", help="Eval (--eval_sources) tiles per source.")
    parser.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    parser.add_argument("--adabn_crops", type=int, default=0, help="AdaBN crops of each eval source (0: none).")
    parser.add_argument("--adabn_passes", default="cached",
                        help="cached | eager | compiled (crack_tf.choices.ADABN_PASSES).")
    parser.add_argument("--adabn_batch_size", type=int, default=64, help="Crops per AdaBN pass.")
    parser.add_argument("--data_root", default="", help="Where the eval sources' train photos are (AdaBN).")
    args = parser.parse_args()
    if args.adabn_crops:  # (imported only here: an older CRACK_TF_REPO checkout has no pass kinds)
        from crack_tf.choices import ADABN_PASSES

        if args.adabn_passes not in ADABN_PASSES:
            raise SystemExit(f"--adabn_passes={args.adabn_passes!r}: choose one of {ADABN_PASSES}")
        if not args.data_root:
            raise SystemExit("--adabn_crops reads the eval sources' train photos: give --data_root")
    import jax
    import keras
    import numpy as np

    from crack_tf import models
    from crack_tf.choices import DTYPE_POLICIES
    from crack_tf.training.config import from_values
    from crack_tf.training.loop import _store_operating_point

    if keras.backend.backend() != "jax":
        raise SystemExit("run with KERAS_BACKEND=jax (the compiles are counted from JAX's log)")
    compiles = _Compiles()
    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax").addHandler(compiles)
    keras.mixed_precision.set_global_policy(DTYPE_POLICIES[args.precision])
    rng = np.random.default_rng(0)
    val = types.SimpleNamespace(by_source={name: _part(rng, n, args.size, args.batch)
                                           for name, n in _counts(args.val).items()})
    eval_input = types.SimpleNamespace(by_source={name: _part(rng, n, args.size, args.batch)
                                                  for name, n in _counts(args.eval).items()})
    model = models.get("resnet50_aspp", input_shape=(args.size, args.size, 3))
    with tempfile.TemporaryDirectory() as out:
        for name in ("final.keras", "best.keras"):
            model.save(os.path.join(out, name))
        # the trainer's config, its defaults for the rest (an older checkout ignores flags it lacks)
        cfg = from_values({"threshold_rule": "f1", "tta": args.tta, "model_dir": out, "save_eval_features": True,
                           "image_size": args.size, "small_policy": "resize", "model": "resnet50_aspp",
                           "adabn_eval_crops": args.adabn_crops, "adabn_passes": args.adabn_passes,
                           "adabn_batch_size": args.adabn_batch_size, "data_root": args.data_root, "seed": 0})
        runtime = types.SimpleNamespace(num_processes=1, strategy=None)
        parts: dict[str, float] = {}
        # (an older CRACK_TF_REPO checkout's _store_operating_point times no parts)
        timing = {"seconds": parts} if "seconds" in inspect.signature(_store_operating_point).parameters else {}
        started, stopped = time.perf_counter(), False
        signal.signal(signal.SIGTERM, _stop)
        try:
            _store_operating_point(model, cfg, val, out, runtime, eval_input, **timing)
        except _Stopped:  # the part cut off keeps its seconds so far (finish.timed)
            stopped = True
        seconds = time.perf_counter() - started
    print(json.dumps({"repo": sys.path[0], "predict_compiles": compiles.predict, "seconds": round(seconds, 2),
                      "stopped_by_sigterm": stopped,
                      "parts": parts, "size": args.size, "batch": args.batch, "tta": args.tta,
                      "precision": args.precision, "val": args.val, "eval": args.eval,
                      "adabn_crops": args.adabn_crops, "adabn_passes": args.adabn_passes,
                      "adabn_batch_size": args.adabn_batch_size}))


if __name__ == "__main__":
    main()
