"""Benchmark: SavedModel ``serving_default`` (JPEG bytes in) vs raw Keras on the same image.

    python tools/bench_serving.py                       # resnet50_aspp (layer1), 224 px, random weights
    python tools/bench_serving.py --iters=50 --json=bench.json

Latency: one 512x512 JPEG per call, p50/p95 over ``--iters`` calls. The signature time
includes JPEG decoding and the center crop done in the graph; Keras gets the already
decoded+cropped image (``model(x, training=False)`` and ``predict_on_batch``). Calls of the
two paths are interleaved so machine load affects both alike. Throughput: batches of
``--batch`` JPEGs through the signature vs ``predict_on_batch`` on decoded images.
Overhead = signature p50 / best Keras p50 (goal <= 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pct(values, q):
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000.0, q))


def _interleaved(paths: dict, rounds: int, progress: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each path, calling the paths in turn ``rounds`` times."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(rounds):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        if progress and (i + 1) % 10 == 0:
            print(f"      {i + 1}/{rounds}", flush=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50_aspp", help="registry name (crack_tf.models)")
    parser.add_argument("--insert_after", default="layer1")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--jpeg_size", type=int, default=512)
    parser.add_argument("--iters", type=int, default=30, help="latency calls per path")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batch_iters", type=int, default=5)
    parser.add_argument("--json", default="", help="also write the numbers here")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from crack_tf import export, models
    from crack_tf.data import decode_image_tf, eval_transform_tf

    keras.utils.set_random_seed(0)
    s = args.image_size
    print(f"[1/4] building {args.model} ({args.insert_after}) at {s} px, random weights", flush=True)
    model = models.get(args.model, input_shape=(s, s, 3), insert_after=args.insert_after, weights=None)
    tmp = tempfile.mkdtemp(prefix="bench_serving_")
    t0 = time.perf_counter()
    meta = export.build_metadata(model, {})
    path = export.export_saved_model(model, tmp, meta, warmup=False)
    print(f"[2/4] exported to {path} in {time.perf_counter() - t0:.1f}s", flush=True)
    sig = tf.saved_model.load(path).signatures["serving_default"]

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (args.jpeg_size, args.jpeg_size, 3), dtype=np.uint8)
    raw = (raw // 32 * 32).astype(np.uint8)  # blockier content: a realistic JPEG size
    jpeg = tf.io.encode_jpeg(raw, quality=90).numpy()
    image = eval_transform_tf(decode_image_tf(jpeg), s, meta["small_policy"]).numpy()[None].astype("float32")
    one_bytes = tf.constant([jpeg])
    x1 = tf.constant(image)

    paths = {
        "signature(jpeg)": lambda: sig(image_bytes=one_bytes)["probabilities"].numpy(),
        "keras model(x)": lambda: model(x1, training=False).numpy(),
        "keras predict_on_batch": lambda: model.predict_on_batch(image),
    }
    for fn in paths.values():
        for _ in range(args.warmup):
            fn()
    np.testing.assert_allclose(
        paths["signature(jpeg)"](), tf.nn.softmax(model(x1, training=False)).numpy(), atol=1e-4
    )
    print(f"[3/4] latency: {args.iters} interleaved calls per path (1 JPEG {args.jpeg_size}px)", flush=True)
    times = _interleaved(paths, args.iters, progress=True)
    latency = {name: {"p50_ms": _pct(v, 50), "p95_ms": _pct(v, 95)} for name, v in times.items()}

    print(f"[4/4] throughput: {args.batch_iters} batches of {args.batch}", flush=True)
    batch_bytes = tf.constant([jpeg] * args.batch)
    batch_images = np.repeat(image, args.batch, axis=0)
    sig(image_bytes=batch_bytes)
    model.predict_on_batch(batch_images)
    batch_paths = {
        "signature(jpeg)": lambda: sig(image_bytes=batch_bytes)["probabilities"].numpy(),
        "keras predict_on_batch": lambda: model.predict_on_batch(batch_images),
    }
    spent = _interleaved(batch_paths, args.batch_iters)  # interleaved, like the latency loop
    tput = {name: args.batch * args.batch_iters / sum(sec) for name, sec in spent.items()}

    best_keras = min(latency["keras model(x)"]["p50_ms"], latency["keras predict_on_batch"]["p50_ms"])
    overhead = latency["signature(jpeg)"]["p50_ms"] / best_keras
    tput_ratio = tput["keras predict_on_batch"] / tput["signature(jpeg)"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, load avg {load:.1f}, TF {tf.__version__}")
    print(f"{'path':<24} {'p50 ms':>8} {'p95 ms':>8} {'img/s @' + str(args.batch):>11}")
    for name, v in latency.items():
        print(f"{name:<24} {v['p50_ms']:>8.1f} {v['p95_ms']:>8.1f} {tput.get(name, float('nan')):>11.1f}")
    print(f"summary: signature/keras p50 latency {overhead:.2f}x, batch-{args.batch} throughput "
          f"keras/signature {tput_ratio:.2f}x (goal <= 1.3x): {'OK' if max(overhead, tput_ratio) <= 1.3 else 'ABOVE GOAL'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"latency": latency, "throughput_img_s": tput, "overhead_p50": overhead,
                       "throughput_ratio": tput_ratio, "jpeg_bytes": len(jpeg), "load_avg": load, "args": vars(args)}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
