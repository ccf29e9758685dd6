"""TFLite export (float16 and int8-calibrated) with the accuracy delta vs the float model.

Example::

    python -m crack_tf.export.tflite --model=runs/exp1/best.keras --output_dir=exports/tflite \\
        --calibration_data=../shared/data/uav75_tiles --eval_data=../shared/data/uav75_tiles

Each ``.tflite`` takes one raw 0-255 RGB float32 image [1, S, S, 3] (decode, resize and
center-crop on the device exactly like ``crack_tf.data.eval_transform_np``) and returns the
softmax probabilities [1, 2]. ``int8`` quantizes weights and activations, calibrated on
``--num_calibration`` tiles of the calibration split (train); input and output stay float32.
Accuracy is measured on the eval split (val) for the Keras float model and each variant,
together with the agreement of its class with the float model's; a JSON report is written
next to the files.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from crack_tf.choices import SMALL_POLICIES

VARIANTS = ("float32", "float16", "int8")


def _probability_saved_model(model, size: int, directory: str) -> str:
    """A SavedModel whose default signature maps image [1,S,S,3] -> probabilities (frozen by TFLite)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda image: {"probabilities": tf.nn.softmax(tf.cast(model(image, training=False), tf.float32), axis=-1)},
        input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="image")],
    )
    archive.write_out(directory, verbose=False)
    return directory


def convert(model, size: int, variant: str, calibration: Callable[[], Iterable[np.ndarray]] | None = None) -> bytes:
    """A TFLite flatbuffer of ``model`` (+ softmax) for ``variant`` in :data:`VARIANTS`."""
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    with tempfile.TemporaryDirectory(prefix="crack_tf_tflite_") as tmp:
        converter = tf.lite.TFLiteConverter.from_saved_model(_probability_saved_model(model, size, tmp))
        _configure(converter, variant, calibration)
        return converter.convert()


def _configure(converter, variant: str, calibration) -> None:
    import tensorflow as tf

    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        if calibration is None:
            raise ValueError("int8 needs calibration images (--calibration_data)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in calibration())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def predict_tflite(flatbuffer: bytes, images: Sequence[np.ndarray]) -> np.ndarray:
    """Probabilities [N, C] from a flatbuffer, one image at a time (float32 raw 0-255)."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    probs = []
    for image in images:
        interpreter.set_tensor(inp, np.asarray(image, np.float32)[None])
        interpreter.invoke()
        probs.append(interpreter.get_tensor(out)[0].copy())
    return np.stack(probs)


def load_split(root: str, split: str, size: int, small_policy: str, limit: int = 0, seed: int = 0):
    """(uint8 images [N,S,S,3] eval-transformed, int labels [N]) of ``<root>/<split>``."""
    from crack_tf.data import decode_image_np, eval_transform_np, list_folder

    listing = list_folder(root, split)
    order = np.arange(len(listing.paths))
    if limit and limit < len(order):  # a class-mixed subset
        order = np.sort(np.random.default_rng(seed).permutation(order)[:limit])
    images = np.stack([eval_transform_np(decode_image_np(listing.paths[i]), size, small_policy) for i in order])
    return images, np.asarray(listing.labels)[order]


def evaluate(model, flatbuffers: dict[str, bytes], images: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy of the Keras float model and each flatbuffer, and agreement with the float model."""
    import tensorflow as tf

    ref = np.concatenate([
        tf.nn.softmax(model(images[i : i + 16].astype(np.float32), training=False), axis=-1).numpy()
        for i in range(0, len(images), 16)
    ])
    report = {"keras_float": {"accuracy": float((ref.argmax(-1) == labels).mean())}}
    for name, fb in flatbuffers.items():
        probs = predict_tflite(fb, images)
        report[name] = {
            "accuracy": float((probs.argmax(-1) == labels).mean()),
            "agreement_with_float": float((probs.argmax(-1) == ref.argmax(-1)).mean()),
            "max_abs_prob_diff": float(np.abs(probs - ref).max()),
            "size_bytes": len(fb),
        }
        report[name]["accuracy_delta"] = report[name]["accuracy"] - report["keras_float"]["accuracy"]
    return report


def main(argv: list[str]) -> int:
    from absl import flags

    from crack_tf import export

    FLAGS = flags.FLAGS
    del argv
    export.quiet_tf_logs()
    try:
        from crack_tf.predictor import load_model

        model = load_model(FLAGS.model, precision="float32").model  # the converters start from float32
        meta = export.build_metadata(model, export.read_run_json(FLAGS.model), FLAGS.image_size, FLAGS.small_policy)
    except (FileNotFoundError, ValueError) as err:
        print(f"crack_tf.export.tflite: {err}", file=sys.stderr)
        return 2
    size, policy = meta["image_size"], meta["small_policy"]
    variants = [v.strip() for v in FLAGS.variants.split(",") if v.strip()]
    calib = None
    if "int8" in variants:
        calib_images, _ = load_split(FLAGS.calibration_data, "train", size, policy, FLAGS.num_calibration)
        calib = lambda: iter(calib_images)  # noqa: E731
        print(f"calibration: {len(calib_images)} tiles from {FLAGS.calibration_data}/train")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    flatbuffers = {}
    for variant in variants:
        t = time.perf_counter()
        flatbuffers[variant] = convert(model, size, variant, calib)
        path = os.path.join(FLAGS.output_dir, f"crack_tf_{variant}.tflite")
        with open(path, "wb") as fh:
            fh.write(flatbuffers[variant])
        print(f"wrote {path} ({len(flatbuffers[variant]) / 1e6:.1f} MB, {time.perf_counter() - t:.0f}s)", flush=True)
    report = {"image_size": size, "small_policy": policy, "model": os.path.abspath(FLAGS.model)}
    if FLAGS.eval_data:
        images, labels = load_split(FLAGS.eval_data, "val", size, policy, FLAGS.num_eval)
        report["eval"] = {"data": FLAGS.eval_data, "n": len(labels), **evaluate(model, flatbuffers, images, labels)}
        for name, r in report["eval"].items():
            if isinstance(r, dict):
                extra = (
                    f", delta {r['accuracy_delta']:+.3f}, agreement {r['agreement_with_float']:.3f}, "
                    f"max |dp| {r['max_abs_prob_diff']:.1e}, {r['size_bytes'] / 1e6:.1f} MB"
                    if name != "keras_float" else ""
                )
                print(f"{name:<12} accuracy {r['accuracy']:.3f}{extra}")
    with open(os.path.join(FLAGS.output_dir, "tflite_report.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    return 0


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model", None, "Trained .keras file.", required=True)
    flags.DEFINE_string("output_dir", "exports/tflite", "Where the .tflite files and tflite_report.json go.")
    flags.DEFINE_string("variants", "float16,int8", f"Comma-separated subset of {VARIANTS}.")
    flags.DEFINE_string("calibration_data", "../shared/data/uav75_tiles", "Folder with train/{crack,background}.")
    flags.DEFINE_integer("num_calibration", 100, "Calibration tiles for int8.")
    flags.DEFINE_string("eval_data", "../shared/data/uav75_tiles", "Folder with val/{crack,background}; '' skips.")
    flags.DEFINE_integer("num_eval", 0, "Evaluate on this many val tiles (0 = all).")
    flags.DEFINE_integer("image_size", None, "Default: run.json, else the model input size.")
    flags.DEFINE_enum("small_policy", None, list(SMALL_POLICIES), "Default: run.json, else resize.")


if __name__ == "__main__":
    from crack_tf import cli

    _define_flags()
    cli.run(main)
