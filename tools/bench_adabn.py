"""AdaBN's pass kinds side by side (eager, compiled, cached: ``crack_tf.training.adabn``, ``passes=``):
seconds per method and pass kind, and how far from the eager passes' statistics the other kinds' come
out, on ResNet50 + ASPP.

    python tools/bench_adabn.py --image_size=224 --images=1024 --batch_size=128 --precision=bf16

Random uint8 images stand in for a site's crops (the cost does not depend on their content); each
(method, passes) is timed ``--repeat`` times in one process (the first also pays compilation: JAX's
per-op one when eager, the probe's when compiled, as a trainer's single adaptation does). Prints a
line per timing and the largest difference of the moving statistics from the eager passes' (mean
over the layer's spread, relative variance), ``apart[method]`` for compiled and
``apart[method + "_cached"]`` for cached; ``--output`` writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def _stats(model) -> list[tuple[np.ndarray, np.ndarray]]:
    from crack_tf.training.adabn import batchnorm_layers

    return [(np.asarray(layer.moving_mean, np.float64), np.asarray(layer.moving_variance, np.float64))
            for layer in batchnorm_layers(model)]


def _apart(a, b) -> dict:
    """Largest |mean difference| / spread and relative variance difference over all layers."""
    floor = 1e-12
    return {"mean_over_spread": max(float(np.max(np.abs(ma - mb) / np.sqrt(np.maximum(vb, floor))))
                                    for (ma, _), (mb, vb) in zip(a, b)),
            "variance_rel": max(float(np.max(np.abs(va / np.maximum(vb, floor) - 1))) for (_, va), (_, vb) in zip(a, b))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--methods", default="batch,exact")
    parser.add_argument("--passes", default="eager,compiled,cached",
                        help="pass kinds to time, eager among them (the reference of the distances)")
    parser.add_argument("--repeat", type=int, default=1, help="timings per (method, passes) in this process")
    parser.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    import keras

    import crack_tf.models
    from crack_tf.training.adabn import PASSES, adapt_batchnorm

    kinds = args.passes.split(",")
    if "eager" not in kinds or not set(kinds) <= set(PASSES):
        raise SystemExit(f"--passes={args.passes!r}: eager and any of {PASSES}")
    if args.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    model = crack_tf.models.get("resnet50_aspp", input_shape=(args.image_size, args.image_size, 3))
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.image_size, args.image_size, 3), np.uint8)
    report = {"backend": keras.backend.backend(), "image_size": args.image_size, "images": args.images,
              "batch_size": args.batch_size, "precision": args.precision, "rows": [], "apart": {}}
    for method in args.methods.split(","):
        stats = {}
        for passes in kinds:
            for attempt in range(args.repeat):
                started = time.perf_counter()
                adapted = adapt_batchnorm(model, images, args.batch_size, method, copy=True, passes=passes)
                seconds = round(time.perf_counter() - started, 2)
                report["rows"].append({"method": method, "passes": passes, "attempt": attempt + 1, "seconds": seconds})
                print(f"adabn {method} {passes:8s} #{attempt + 1}: {seconds:8.1f} s ({args.images} images at "
                      f"{args.image_size} px, batch {args.batch_size}, {args.precision})", flush=True)
            stats[passes] = _stats(adapted)
        for kind, key in (("compiled", method), ("cached", f"{method}_cached")):
            if kind not in stats:
                continue
            report["apart"][key] = _apart(stats[kind], stats["eager"])
            print(f"adabn {method}: {kind} vs eager statistics apart by {report['apart'][key]}", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
