"""Validation per data source and pooled over all sources, in one pass over the val tiles.

Each source's tiles are evaluated with the model's compiled metrics (``model.evaluate``, so
distributed runs reduce them as usual). The pooled metrics are computed from the sources'
confusion counts, recovered exactly from each source's recall, accuracy and class counts
(unweighted tiles: TP = R * positives, TN = accuracy * n - TP), and the pooled loss is the
tile-weighted mean of the sources' losses: the same numbers an evaluation of the concatenated
tiles gives, without evaluating twice.
"""

from __future__ import annotations

import keras
import numpy as np

from crack_tf.rates import rates_from_counts


def _counts(metrics: dict, class_counts: dict[int, int]) -> np.ndarray:
    pos, n = class_counts.get(1, 0), class_counts.get(0, 0) + class_counts.get(1, 0)
    tp = round(metrics["recall"] * pos)
    tn = round(metrics["accuracy"] * n) - tp
    return np.array([tp, n - pos - tn, tn, pos - tp], np.float64)  # tp, fp, tn, fn


def pooled_metrics(by_source: dict[str, dict], class_counts: dict[str, dict[int, int]]) -> dict[str, float]:
    """Pooled metrics from per-source ``model.evaluate`` results and each source's class counts."""
    counts = sum(_counts(by_source[name], class_counts[name]) for name in by_source)
    pooled = {k: float(v) for k, v in rates_from_counts(*counts, xp=np).items()}
    sizes = {name: sum(class_counts[name].values()) for name in by_source}
    if all("loss" in m for m in by_source.values()):
        pooled["loss"] = sum(by_source[k]["loss"] * sizes[k] for k in by_source) / max(1, sum(sizes.values()))
    return pooled


def evaluate_sources(model: keras.Model, parts: dict, callbacks=None) -> tuple[dict[str, float], dict[str, dict]]:
    """(pooled metrics, {source: metrics}) of a model on each source's eval split."""
    by_source = {}
    for name, part in parts.items():
        results = model.evaluate(part.dataset, verbose=0, return_dict=True, callbacks=callbacks)
        by_source[name] = {k: float(v) for k, v in results.items() if np.ndim(v) == 0}
    return pooled_metrics(by_source, {k: p.class_counts for k, p in parts.items()}), by_source


def flat_logs(pooled: dict[str, float], by_source: dict[str, dict], prefix: str = "val") -> dict[str, float]:
    """``val_<metric>`` (pooled) and ``val_<source>_<metric>`` keys, as Keras names val metrics."""
    out = {f"{prefix}_{k}": v for k, v in pooled.items()}
    for name, metrics in by_source.items():
        out.update({f"{prefix}_{name}_{k}": v for k, v in metrics.items()})
    return out


class SourceValidation(keras.callbacks.Callback):
    """At each epoch end, evaluates every val source and adds pooled + per-source ``val_*`` logs
    (later callbacks, such as the best-model choice, see them). ``before`` is called first (it
    stops the epoch's training clock). ``ema``: a SwapEMAWeights whose averaged weights are
    evaluated."""

    def __init__(self, parts: dict, before=None, ema=None):
        super().__init__()
        self.parts, self.before, self.callbacks = parts, before, [ema] if ema is not None else None

    def on_epoch_end(self, epoch, logs=None):
        if self.before is not None:
            self.before()
        pooled, by_source = evaluate_sources(self.model, self.parts, self.callbacks)
        if logs is not None:
            logs.update(flat_logs(pooled, by_source))
