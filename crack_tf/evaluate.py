"""Evaluates a trained crack classifier on a dataset split and writes a report.

Example::

    python -m crack_tf.evaluate --model=runs/exp1/best.keras --data=../shared/data/uav75_tiles \\
        --split=val --pick_threshold=precision@0.9

``--model``: a ``.keras`` file (crack_tf.train output) or a SavedModel folder written by
``crack_tf.export``, loaded by ``crack_tf.load_model``: its stored input size, small_policy and
operating point (threshold and temperature picked on val) are used unless a flag overrides
them, and the report says which threshold it used. ``--data``: an image folder root
(``<root>/<split>/{crack,background}``), a TFRecord folder (with ``crack_tf_tfrecords.json``)
or, with ``--source=photos``, photo + mask sources (``uav75,uavcrack`` under ``--data_root``;
their fixed val tiles, reported pooled and per source).
Writes into ``--output_dir`` (default ``<model folder>/eval_<split>``): report.json, report.md,
confusion.png, pr_curve.png, worst_errors.png, predictions.csv. Definitions: docs/EVALUATION.md.
"""

from __future__ import annotations

import heapq
import os
import sys
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from absl import app, flags

import crack_tf
from crack_tf import metrics as M
from crack_tf.choices import SMALL_POLICIES, TTA_MODES
from crack_tf.data.input import numpy_batches
from crack_tf.model_precision import define_precision_flag

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("model", None, ".keras file or SavedModel folder.", required=True)
    flags.DEFINE_string("data", None, "Image folder root or TFRecord folder.", required=True)
    flags.DEFINE_string("split", "val", "Split to evaluate (sub-folder / TFRecord split name).")
    flags.DEFINE_enum("source", "auto", ["auto", "folder", "tfrecord", "photos"],
                      "Data format (auto: TFRecord if the sidecar exists, else an image folder).")
    flags.DEFINE_string("data_root", "", "--source=photos: folder the --data entries are under.")
    flags.DEFINE_enum("tta", None, list(TTA_MODES), "Test-time augmentation: mean p over flips / D4 "
                      "(default: the one the model's threshold was picked with).")
    define_precision_flag()
    flags.DEFINE_bool("fail_fast", False, "Stop when a file cannot be read (default: skip it, name it at the end and "
                      "exit with 1).")
    flags.DEFINE_enum("loader", "auto", ["auto", "tf", "numpy"], "Input pipeline: tf.data, the TF-free NumPy one, or auto.")
    flags.DEFINE_integer("image_size", None, "Eval crop size if neither run.json/metadata nor the model fixes it.")
    flags.DEFINE_enum("small_policy", None, list(SMALL_POLICIES), "Tiles smaller than image_size (default: run.json, else resize).")
    flags.DEFINE_string("output_dir", None, "Report folder (default: <model folder>/eval_<split>).")
    flags.DEFINE_float("threshold", None, "Predicted crack iff p(crack) > threshold (default: the model's stored "
                       "threshold, else 0.5).")
    flags.DEFINE_string("pick_threshold", None, "Also pick a threshold on this split: 'f1', 'precision@R' (e.g. precision@0.9) or a "
                        "source-balanced rule such as mean_source_f1 / min_source_accuracy (--source=photos).")
    flags.DEFINE_integer("batch_size", 32, "Evaluation batch size.")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the 95% CIs (0 = none).")
    flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
    flags.DEFINE_integer("worst", 16, "Worst false positives / negatives shown in worst_errors.png.")


def detect_source(data: str, source: str = "auto") -> str:
    if source != "auto":
        return source
    from crack_tf.data.tfrecord import SIDECAR

    return "tfrecord" if os.path.isfile(os.path.join(data, SIDECAR)) else "folder"


class _Worst:
    """Streaming top-k of one error kind, keeping the images (no second pass over the data)."""

    def __init__(self, k: int, sign: float) -> None:
        self.k, self.sign, self.heap, self.count = k, sign, [], 0

    def push(self, prob: float, image: np.ndarray, name: str) -> None:
        self.count += 1
        item = (self.sign * prob, -self.count, image, name)  # heap root = least bad kept
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def items(self) -> list[tuple[np.ndarray, str, float]]:
        return [(img, name, key * self.sign) for key, _, img, name in sorted(self.heap, reverse=True)]


def run_predictions(predict, split: Any, threshold: float, worst: int = 16, verbose: bool = True) -> dict[str, Any]:
    """Streams the split through the model and the crack_tf metrics; collects the worst errors."""
    streaming = [*M.default_metrics(threshold, from_logits=False), M.ConfusionMatrix(threshold, from_logits=False)]
    # Tiles of the photos source are named "<source>/<tile>" (kept: the report groups by source).
    names = [str(p) if split.by_source else os.path.basename(str(p)) for p, _ in split.examples]
    fps, fns = _Worst(worst, 1.0), _Worst(worst, -1.0)
    scores, labels = [], []
    bar = keras.utils.Progbar(split.steps_per_epoch, unit_name="batch") if verbose else None
    for step, (images, y) in enumerate(numpy_batches(split.dataset), start=1):
        p = np.asarray(predict(images), np.float32).reshape(-1)
        y = np.asarray(y).reshape(-1).astype(np.int64)
        for m in streaming:
            m.update_state(y, p)
        for j in np.flatnonzero((p > np.float32(threshold)) != (y == 1)):
            i = len(scores) + j
            name = names[i] if i < len(names) else f"#{i}"
            (fps if y[j] == 0 else fns).push(float(p[j]), np.asarray(images[j]), name)
        scores.extend(p.tolist())
        labels.extend(y.tolist())
        if bar is not None:
            bar.update(step)
    if not scores:
        raise ValueError("the split produced no examples")
    tp, fp, tn, fn = (float(v) for v in keras.ops.convert_to_numpy(keras.ops.stack(streaming[-1].counts())))
    return {
        "scores": np.asarray(scores, np.float64),  # float32 values
        "labels": np.asarray(labels, np.int64),
        "names": names if len(names) == len(scores) else [f"#{i}" for i in range(len(scores))],
        "counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "rates": {m.name: float(keras.ops.convert_to_numpy(m.result())) for m in streaming[:-1]},
        "worst": {"false_positives": fps.items(), "false_negatives": fns.items()},
    }


def evaluate(
    model: str,
    data: str,
    split: str = "val",
    threshold: float | None = None,
    output_dir: str | None = None,
    image_size: int | None = None,
    small_policy: str | None = None,
    source: str = "auto",
    loader: str = "auto",
    batch_size: int = 32,
    n_resamples: int = 1000,
    seed: int = 0,
    pick_threshold: str | None = None,
    worst: int = 16,
    verbose: bool = True,
    tta: str | None = None,
    data_root: str = "",
    fail_fast: bool = False,
    precision: str | None = None,
) -> dict[str, Any]:
    """Runs the whole evaluation and writes the report; returns the report dict (+ ``paths``).

    ``threshold`` None: the model's stored threshold (0.5 if it has none)."""
    from crack_tf.data import DataConfig, make_input
    from crack_tf.evaluation import report as R
    from crack_tf.evaluation import stats
    from crack_tf.predictor import load_model

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold={threshold} must be in [0, 1]")
    if pick_threshold:
        stats.pick_threshold([0.5], [1], pick_threshold)  # validates the rule before the long run
    predictor = load_model(model, tta, precision)
    if threshold is None:
        threshold, threshold_source = predictor.threshold, predictor.threshold_source
    else:
        threshold_source = "--threshold"
    if verbose:
        print(f"evaluate: threshold {threshold:.4g} ({threshold_source}), temperature {predictor.temperature:.3g}, "
              f"tta {predictor.tta}, precision {predictor.precision}", file=sys.stderr)
    size = predictor.image_size or image_size
    if size is None:
        raise ValueError(f"--model={model} accepts any input size and has no run.json: pass --image_size")
    if image_size and image_size != size:
        print(f"evaluate: --image_size={image_size} ignored; the model / run.json fixes {size}", file=sys.stderr)
    policy = small_policy or predictor.small_policy or "resize"
    config = DataConfig(source=detect_source(data, source), path=data, image_size=int(size), small_policy=policy,
                        data_root=data_root)
    inp = make_input(config, split, training=False, global_batch_size=batch_size, backend=loader)
    if fail_fast and inp.skipped:
        raise ValueError(f"--fail_fast: {len(inp.skipped)} file(s) cannot be used, first {inp.skipped[0][0]}: "
                         f"{inp.skipped[0][1]}")
    res = run_predictions(predictor.predict, inp, threshold, worst, verbose)
    meta = {
        "model": os.path.abspath(model),
        "data": data if config.source == "photos" else os.path.abspath(data),
        "split": split,
        "source": config.source,
        "loader": loader,
        "image_size": int(size),
        "small_policy": policy,
        "threshold_source": threshold_source,
        "temperature": predictor.temperature,
        "tta": predictor.tta,
        "endpoint": predictor.metadata.get("endpoint"),
        "skipped": [list(s) for s in inp.skipped],
        "versions": {"crack_tf": crack_tf.__version__, "keras": keras.__version__, "backend": keras.backend.backend()},
    }
    groups = R.source_names(res["names"]) if inp.by_source else None
    rep = R.build_report(res["scores"], res["labels"], threshold, res["counts"], res["rates"], n_resamples, seed,
                         pick_threshold, meta, groups)  # fmt: skip
    if inp.by_source:
        rep["by_source"] = R.by_source_metrics(res["scores"], res["labels"], res["names"], threshold)
    out = output_dir or os.path.join(os.path.dirname(os.path.abspath(model.rstrip("/"))), f"eval_{split}")
    paths = R.write_report(out, rep, res["scores"], res["labels"], res["names"], res["worst"])
    return dict(rep, paths=paths)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rep = evaluate(
        FLAGS.model, FLAGS.data, FLAGS.split, FLAGS.threshold, FLAGS.output_dir, FLAGS.image_size,
        FLAGS.small_policy, FLAGS.source, FLAGS.loader, FLAGS.batch_size, FLAGS.bootstrap, FLAGS.seed,
        FLAGS.pick_threshold, FLAGS.worst, tta=FLAGS.tta, data_root=FLAGS.data_root, fail_fast=FLAGS.fail_fast,
        precision=FLAGS.precision,
    )  # fmt: skip
    m, ci = rep["metrics"], rep["ci95"]

    def show(k: str) -> str:
        lo, hi = ci.get(k, (None, None))
        v = "n/a" if m[k] is None else f"{m[k]:.4f}"
        return f"{k}={v}" + ("" if lo is None else f" [{lo:.3f},{hi:.3f}]")

    print(f"evaluate: {rep['num_examples']} images, " + ", ".join(show(k) for k in ("recall", "precision", "f1", "roc_auc")))
    if rep.get("picked_threshold"):
        p = rep["picked_threshold"]
        print(f"evaluate: {p['rule']} picks threshold {p['threshold']:.4f} (R={p['recall']:.4f}, P={p['precision']:.4f})")
    print(f"evaluate: report written to {rep['paths']['markdown']}")
    from crack_tf.cli import report_left_out

    return report_left_out("evaluate", rep["skipped"])


def run() -> None:
    """Console-script entry point."""
    from crack_tf import cli

    cli.entry_point(_define_flags, main)()


if __name__ == "__main__":
    run()
