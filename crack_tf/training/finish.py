"""After training: final metrics, the operating point picked on val, metadata in the model files.

* ``final_metrics``: val and train metrics of the final model (pooled and per source for the
  photos source) and, with ``--eval_sources``, the val tiles of other photo sources.
* ``operating_point``: temperature and threshold picked on the (pooled) val split by
  ``--threshold_rule`` (``crack_tf.evaluation.calibration``), for plain predictions and, with
  ``--tta``, for test-time-augmented ones; the val metrics at that threshold, pooled and per
  source. The trainer stores the chosen point (``--tta``'s) in run.json and in the ``.keras``
  files, so evaluate / heatmap / export use it by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crack_tf.training.config import TrainConfig

import keras
import numpy as np

from crack_tf.evaluation import calibration, stats
from crack_tf.predictor import tta_views


def evaluate_split(model: keras.Model, split_input, callbacks=None) -> dict:
    results = model.evaluate(split_input.dataset, verbose=0, return_dict=True, callbacks=callbacks)
    return {k: float(v) for k, v in results.items() if keras.ops.ndim(v) == 0}


def final_metrics(model: keras.Model, cfg: TrainConfig, dcfg, split_input, val_input) -> dict:
    """run.json ``metrics``: val and train (pooled and per source for the photos source), and the
    ``--eval_sources`` val tiles."""
    from crack_tf.data import make_input
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
    if cfg.eval_sources:
        extra = dcfg.replace(source="photos", path=cfg.eval_sources)
        tiles = make_input(extra, cfg.val_split or "val", training=False, global_batch_size=cfg.batch_size,
                           backend=cfg.loader)
        results["eval_sources"], results["eval_sources_by_source"] = evaluate_sources(model, tiles.by_source)
    return results


def _batches(dataset):
    if hasattr(dataset, "as_numpy_iterator"):
        yield from dataset.as_numpy_iterator()
    else:
        for i in range(len(dataset)):
            yield dataset[i]


def val_margins(model: keras.Model, split_input, tta: str = "none") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logit margins [V, N] (V test-time views), labels [N] and source names [N] of a val split."""
    parts = split_input.by_source or {"": split_input}
    margins, labels, sources = [], [], []
    for name, part in parts.items():
        for images, y in _batches(part.dataset):
            views = [keras.ops.convert_to_numpy(model.predict_on_batch(np.asarray(v, np.float32)))
                     for v in tta_views(np.asarray(images), tta)]
            margins.append(np.stack([calibration.logit_margin(v) for v in views]))
            labels.append(np.asarray(y).reshape(-1))
            sources += [name] * len(labels[-1])
    return np.concatenate(margins, axis=1), np.concatenate(labels), np.asarray(sources)


def operating_point(model: keras.Model, val_input, rule: str, tta: str) -> dict:
    """{tta mode: point} for "none" and ``tta``; each point has the pooled val metrics at its
    threshold and, for several sources, the metrics of each."""
    points = {}
    for mode in dict.fromkeys(["none", tta]):
        margins, labels, sources = val_margins(model, val_input, mode)
        point = calibration.operating_point(margins, labels, rule)
        probs = calibration.calibrated_probability(margins, point["temperature"])
        t32 = float(np.float32(point["threshold"]))
        point["tta"] = mode
        if len(set(sources.tolist())) > 1:
            point["val_at_threshold_by_source"] = {
                name: {k: float(v) for k, v in stats.all_metrics(probs[sources == name], labels[sources == name],
                                                                 t32).items()}
                for name in dict.fromkeys(sources.tolist())}
        points[mode] = point
    return points
