"""After training: final metrics, the operating point picked on val, metadata in the model files.

* ``final_metrics``: val and train metrics of the final model (pooled and per source for the
  photos source) and, with ``--eval_sources``, the val tiles of other photo sources.
* ``operating_point``: temperature and threshold picked on the (pooled) val split by
  ``--threshold_rule`` (``crack_tf.evaluation.calibration``; the source-balanced rules see each
  tile's source), for plain predictions and, with ``--tta``, for test-time-augmented ones; the val
  metrics at that threshold, pooled and per source, and the ``--eval_sources`` tiles scored at the
  same point (``eval_sources_at_threshold_by_source``: a leave-one-source-out run's score on the
  source it never saw, at the threshold it would ship with). The trainer stores the chosen point
  (``--tta``'s) in run.json and in the ``.keras`` files, so evaluate / heatmap / export use it by
  default.
* ``save_margins``: the per-tile logit margins behind the point (every test-time view), labels,
  sources and split (``val`` / ``eval``) in ``margins.npz``, so other threshold rules and the
  few-labelled-tiles calibration can be scored later without the model; with
  ``--save_eval_features`` also ``eval_features`` of the ``--eval_sources`` tiles in
  ``features.npz`` (the few-shot curve of ``calibrate --fit=last_layer``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crack_tf.training.config import TrainConfig

import keras
import numpy as np

from crack_tf.data.input import padded_batches
from crack_tf.evaluation import calibration, run_margins
from crack_tf.evaluation.run_margins import metrics_by_source  # noqa: F401  (re-exported)
from crack_tf.predictor import tta_views


def evaluate_split(model: keras.Model, split_input, callbacks=None) -> dict:
    results = model.evaluate(split_input.dataset, verbose=0, return_dict=True, callbacks=callbacks)
    return {k: float(v) for k, v in results.items() if keras.ops.ndim(v) == 0}


def final_metrics(model: keras.Model, cfg: TrainConfig, split_input, val_input, eval_input=None) -> dict:
    """run.json ``metrics``: val and train (pooled and per source for the photos source), and the
    ``--eval_sources`` val tiles (``eval_input``, from :func:`eval_sources_input`)."""
    from crack_tf.training.validation import evaluate_sources

    results = {}
    if val_input is not None:
        if val_input.by_source:
            results["val"], results["val_by_source"] = evaluate_sources(model, val_input.by_source)
        else:
            results["val"] = evaluate_split(model, val_input)
    train_eval = split_input(cfg.train_split, training=False, eval_max_tiles=1024)
    if train_eval.by_source:
        results["train"], results["train_by_source"] = evaluate_sources(model, train_eval.by_source)
    else:
        results["train"] = evaluate_split(model, train_eval)
    if eval_input is not None:
        results["eval_sources"], results["eval_sources_by_source"] = evaluate_sources(model, eval_input.by_source)
    return results


def eval_sources_input(cfg: TrainConfig, dcfg):
    """The val tiles of the ``--eval_sources`` photo sources (None without them)."""
    from crack_tf.data import make_input

    if not cfg.eval_sources:
        return None
    extra = dcfg.replace(source="photos", path=cfg.eval_sources)
    return make_input(extra, cfg.val_split or "val", training=False, global_batch_size=cfg.batch_size,
                      backend=cfg.loader)


def val_margins(model: keras.Model, split_input, tta: str = "none") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logit margins [V, N] (V test-time views), labels [N] and source names [N] of a val split."""
    parts = split_input.by_source or {"": split_input}
    margins, labels, sources = [], [], []
    for name, part in parts.items():
        for images, y, rows in padded_batches(part.dataset):  # one batch shape: one compile
            views = [keras.ops.convert_to_numpy(model.predict_on_batch(np.asarray(v, np.float32)))[:rows]
                     for v in tta_views(images, tta)]
            margins.append(np.stack([calibration.logit_margin(v) for v in views]))
            labels.append(np.asarray(y).reshape(-1))
            sources += [name] * len(labels[-1])
    return np.concatenate(margins, axis=1), np.concatenate(labels), np.asarray(sources)


def timed(seconds: dict | None, key: str, fn, *args):
    """``fn(*args)``, its wall seconds added to ``seconds[key]`` (when ``seconds`` is a dict)."""
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        if seconds is not None:
            seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - start, 3)


def adabn_split(target_weight: float) -> str:
    """The ``split`` name in margins.npz of the eval tiles after AdaBN at ``target_weight``
    (``eval_adabn`` for plain AdaBN, ``eval_adabn_w0.5`` for a blend)."""
    return "eval_adabn" if target_weight == 1 else f"eval_adabn_w{target_weight:g}"


def adabn_margins(model: keras.Model, eval_input, tta: str, adapt, seconds: dict | None = None,
                  target_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Margins, labels and sources of the ``--eval_sources`` tiles, each source scored after AdaBN on
    its own unlabelled train photos (``adapt(model, source, target_weight)`` re-estimates the
    BatchNorm statistics in place; they are restored afterwards, so the model leaves as it came).
    ``seconds``: gets the wall seconds of the adapting (``adabn_adapt``) and of the scoring
    (``adabn_score``), all sources and weights."""
    import types

    from crack_tf.training.adabn import keep_batchnorm

    parts = []
    for name, part in eval_input.by_source.items():
        with keep_batchnorm(model):
            timed(seconds, "adabn_adapt", adapt, model, name, target_weight)
            parts.append(timed(seconds, "adabn_score", val_margins, model,
                               types.SimpleNamespace(by_source={name: part}), tta))
    return (np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def operating_point(model: keras.Model, val_input, rule: str, tta: str, eval_input=None, adapt=None,
                    seconds: dict | None = None, adabn_weights: tuple[float, ...] = (1.0,)) -> tuple[dict, dict]:
    """({tta mode: point}, margins) for "none" and ``tta``; each point has the pooled val metrics at
    its threshold and, for several sources, the metrics of each; with ``eval_input`` (the
    ``--eval_sources`` tiles) also those sources' metrics at the same temperature and threshold, and
    with ``adapt`` (AdaBN, see :func:`adabn_margins`) the same after adapting to each of them
    (``--tta``'s point only), once per target weight in ``adabn_weights``: plain AdaBN (1) as
    ``eval_sources_adabn_at_threshold_by_source``, blends as
    ``eval_sources_adabn_by_target_weight`` {"0.5": {source: metrics}}.
    ``margins``: the arrays of :func:`save_margins` for ``tta``'s views. ``seconds``: gets the wall
    seconds of scoring val (``val``), the eval tiles (``eval``) and AdaBN (``adabn_adapt``,
    ``adabn_score``).

    The tiles are scored once, with ``tta``'s views; the plain point uses the first view, which is
    the tile itself (the same predictions a plain pass gives)."""
    parts = {"val": timed(seconds, "val", val_margins, model, val_input, tta)}
    if eval_input is not None:
        parts["eval"] = timed(seconds, "eval", val_margins, model, eval_input, tta)
        for weight in adabn_weights if adapt is not None else ():
            parts[adabn_split(weight)] = adabn_margins(model, eval_input, tta, adapt, seconds, weight)
    points = run_margins.points_from_margins(parts, rule, tta)
    arrays = {"margins": np.concatenate([p[0] for p in parts.values()], axis=1).astype(np.float32),
              "labels": np.concatenate([p[1] for p in parts.values()]).astype(np.int8),
              "sources": np.concatenate([p[2] for p in parts.values()]).astype(str),
              "split": np.concatenate([np.full(len(p[1]), name) for name, p in parts.items()]),
              "tta": np.array(tta)}
    return points, arrays


def eval_features(model: keras.Model, eval_input, tta: str) -> dict:
    """The arrays of ``features.npz``: ``features`` float16 [V, N, D] (the head's input for each of
    ``tta``'s V views), ``labels`` [N], ``sources`` [N] and ``groups`` [N] (each tile's source image;
    the ``--eval_sources`` tiles, in the order of their margins), the head's ``kernel`` [D, C] and
    ``bias`` [C], ``tta``."""
    from crack_tf.evaluation import head_refit

    features, labels, sources, groups = [], [], [], []
    for name, part in (eval_input.by_source or {"": eval_input}).items():
        f, y = head_refit.sample_features(model, part, tta)
        features.append(f.astype(np.float16))
        labels.append(y.astype(np.int8))
        sources += [name] * len(y)
        groups += [f"{name}/{g}" for g in part.groups] if len(part.groups) == len(y) else [""] * len(y)
    kernel, bias = (np.asarray(w, np.float32) for w in head_refit.head_layer(model).get_weights())
    return {"features": np.concatenate(features, axis=1), "labels": np.concatenate(labels),
            "sources": np.asarray(sources).astype(str), "groups": np.asarray(groups).astype(str), "kernel": kernel,
            "bias": bias, "tta": np.array(tta)}


def save_margins(path: str, arrays: dict, compress: bool = True) -> None:
    """``margins.npz``: ``margins`` float32 [V, N] (V test-time views), ``labels`` [N], ``sources`` [N],
    ``split`` [N] ("val", "eval" for the ``--eval_sources`` tiles, "eval_adabn" for the same tiles after
    AdaBN, "eval_adabn_w0.5" after AdaBN blended at target weight 0.5), ``tta``; written atomically.
    Also writes ``features.npz`` (:func:`eval_features`; ``compress=False``: features do not compress)."""
    import os

    tmp = path + ".tmp.npz"
    (np.savez_compressed if compress else np.savez)(tmp, **arrays)
    os.replace(tmp, path)
