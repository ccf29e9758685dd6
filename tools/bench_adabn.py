"""AdaBN's passes, eager (the module before 2026-12-06, given as a file) against compiled (now):
seconds per method and how far apart the re-estimated statistics are, on ResNet50 + ASPP(layer1).

    python tools/bench_adabn.py --before=.before/adabn_eager.py --image_size=224 --images=256

Random uint8 images stand in for a site's crops (the cost does not depend on their content). Prints
one line per (implementation, method) and the largest difference of the moving statistics, relative
to each layer's spread; writes them as JSON with --output.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def _module(path: str):
    spec = importlib.util.spec_from_file_location("adabn_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stats(model) -> list[tuple[np.ndarray, np.ndarray]]:
    from crack_tf.training.adabn import batchnorm_layers

    return [(np.asarray(layer.moving_mean, np.float64), np.asarray(layer.moving_variance, np.float64))
            for layer in batchnorm_layers(model)]


def _apart(a, b) -> dict:
    """Largest |mean difference| / spread and relative variance difference over all layers."""
    means = max(float(np.max(np.abs(ma - mb) / np.sqrt(np.maximum(vb, 1e-12)))) for (ma, va), (mb, vb) in zip(a, b))
    variances = max(float(np.max(np.abs(va / np.maximum(vb, 1e-12) - 1))) for (ma, va), (mb, vb) in zip(a, b))
    return {"mean_over_spread": means, "variance_rel": variances}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the eager adabn.py to compare with")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--methods", default="exact,batch")
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    import keras

    import crack_tf.models
    from crack_tf.training import adabn

    keras.utils.set_random_seed(0)
    model = crack_tf.models.get("resnet50_aspp", input_shape=(args.image_size, args.image_size, 3),
                                insert_after="layer1")
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.image_size, args.image_size, 3), np.uint8)
    before = _module(args.before)
    report = {"backend": keras.backend.backend(), "image_size": args.image_size, "images": args.images,
              "batch_size": args.batch_size, "rows": []}
    for method in args.methods.split(","):
        results = {}
        for name, module in (("compiled", adabn), ("eager", before)):
            started = time.perf_counter()
            adapted = module.adapt_batchnorm(model, images, args.batch_size, method, copy=True)
            seconds = time.perf_counter() - started
            results[name] = _stats(adapted)
            report["rows"].append({"method": method, "implementation": name, "seconds": round(seconds, 2)})
            print(f"{method:6s} {name:9s} {seconds:8.1f} s", flush=True)
        report[f"{method}_apart"] = _apart(results["compiled"], results["eager"])
        print(f"{method}: compiled vs eager statistics apart by {report[f'{method}_apart']}", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
