"""Streaming binary crack metrics as Keras 3 metrics (backend-agnostic: ``keras.ops`` only).

Crack (label 1) is the positive class. Every metric keeps the same state, the weighted
confusion counts TP, FP, TN, FN (one float [4] variable, ``aggregation="sum"``, so under
``tf.distribute`` the per-replica counts are summed, never averaged ratios); ratios are
computed only in ``result()`` from :data:`RATES`, the one definition the evaluator reuses.

Definitions (the paper's, crack positive)::

    R  = TP / (TP + FN)      MA = 1 - R   (= FN / (TP + FN))
    P  = TP / (TP + FP)      FA = 1 - P   (= FP / (TP + FP))
    accuracy = (TP + TN) / (TP + FP + TN + FN)
    F1 = 2 TP / (2 TP + FP + FN)

Zero division: a ratio whose denominator is 0 is 0 (torchmetrics ``zero_division=0``), and
MA / FA are always ``1 - R`` / ``1 - P``: with no positives R = 0 and MA = 1; with no predicted
positives P = 0 and FA = 1. So R + MA = 1 and P + FA = 1 hold in every case.

Inputs: ``y_true`` integer labels [B] / [B,1] (or one-hot [B,2]); ``y_pred`` either two-class
scores [B,2] (softmax logits if ``from_logits`` else probabilities; column 1 = crack) or a
single crack score [B] / [B,1] (sigmoid logit if ``from_logits`` else a probability).
A sample is predicted crack iff its crack probability is strictly greater than ``threshold``
(the rule of torchmetrics and ``keras.metrics.Precision``). ``sample_weight`` [B] / [B,1]
weights each sample's contribution to the counts.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from crack_tf.rates import RATES, rates_from_counts  # noqa: F401  (rates_from_counts: re-exported)


def crack_probability(y_pred: Any, from_logits: bool = True) -> Any:
    """Crack probability [B] from scores [B,2] (softmax) or a single score [B] / [B,1] (sigmoid)."""
    y_pred = ops.cast(y_pred, "float32")
    shape = ops.shape(y_pred)
    if len(shape) == 2 and shape[-1] == 2:
        background, crack = ops.unstack(y_pred, 2, axis=-1)
        return ops.sigmoid(crack - background) if from_logits else crack  # softmax(l)[1] = sigmoid(l1-l0)
    if len(shape) > 2 or (len(shape) == 2 and shape[-1] != 1):
        raise ValueError(
            f"y_pred must have shape [B,2] (two classes) or [B] / [B,1] (one crack score); got {shape}"
        )
    y_pred = ops.reshape(y_pred, (-1,))
    return ops.sigmoid(y_pred) if from_logits else y_pred


def _labels(y_true: Any) -> Any:
    """Int32 0/1 labels [B] from int labels [B] / [B,1] (non-zero = crack) or one-hot [B,2]."""
    shape = ops.shape(y_true)
    if len(shape) == 2 and shape[-1] == 2:
        y_true = ops.argmax(y_true, axis=-1)
    if len(ops.shape(y_true)) != 1:
        y_true = ops.reshape(y_true, (-1,))
    return ops.cast(ops.not_equal(y_true, 0), "int32")


class BinaryConfusionCounts(keras.metrics.Metric):
    """Base class: accumulates weighted TP, FP, TN, FN; subclasses set ``rate`` (a RATES key).

    Args:
      threshold: predicted crack iff crack probability > threshold (in [0, 1]).
      from_logits: ``y_pred`` holds logits (softmax / sigmoid applied here) instead of probabilities.
      name, dtype: as for any Keras metric (dtype of the count variables and of the result).
    """

    rate: str | None = None
    default_name: str = "confusion_counts"

    def __init__(
        self,
        threshold: float = 0.5,
        from_logits: bool = True,
        name: str | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name or self.default_name, dtype=dtype)
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] (a crack probability); got {threshold}")
        self.threshold = threshold
        self.from_logits = bool(from_logits)
        # One state variable: the flattened confusion matrix [TN, FP, FN, TP] (row-major
        # [[TN, FP], [FN, TP]], rows = true class). A single variable keeps eager updates cheap.
        self.confusion = self.add_variable(shape=(4,), initializer="zeros", aggregation="sum", name="confusion")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        pred = ops.cast(crack_probability(y_pred, self.from_logits) > self.threshold, "int32")
        cell = ops.one_hot(2 * _labels(y_true) + pred, 4)  # 0 TN, 1 FP, 2 FN, 3 TP
        if sample_weight is None:
            counts = ops.sum(cell, axis=0)
        else:
            weight = ops.cast(sample_weight, "float32")
            if len(ops.shape(weight)) != 1:
                weight = ops.reshape(weight, (-1,))
            counts = ops.matmul(weight, cell)  # [B] @ [B,4] -> [4]
        self.confusion.assign_add(ops.cast(counts, self.dtype))

    def counts(self) -> tuple[Any, Any, Any, Any]:
        """Current (tp, fp, tn, fn) tensors."""
        tn, fp, fn, tp = ops.unstack(self.confusion.value, 4)
        return tp, fp, tn, fn

    def result(self) -> Any:
        if self.rate is None:
            raise NotImplementedError("BinaryConfusionCounts is a base class; use a subclass")
        return RATES[self.rate](*self.counts(), ops)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold, "from_logits": self.from_logits}


_register = keras.saving.register_keras_serializable(package="crack_tf")


@_register
class Recall(BinaryConfusionCounts):
    """Recall R = TP / (TP + FN); 0 when there are no positives."""

    rate = default_name = "recall"


@_register
class MissedAlarmRate(BinaryConfusionCounts):
    """Missed-alarm rate MA = 1 - R (= FN / (TP + FN)); 1 when there are no positives."""

    rate = default_name = "missed_alarm_rate"


@_register
class Precision(BinaryConfusionCounts):
    """Precision P = TP / (TP + FP); 0 when nothing is predicted crack."""

    rate = default_name = "precision"


@_register
class FalseAlarmRate(BinaryConfusionCounts):
    """False-alarm rate FA = 1 - P (= FP / (TP + FP)); 1 when nothing is predicted crack."""

    rate = default_name = "false_alarm_rate"


@_register
class Accuracy(BinaryConfusionCounts):
    """Accuracy (TP + TN) / total weight; 0 when nothing was counted."""

    rate = default_name = "accuracy"


@_register
class F1Score(BinaryConfusionCounts):
    """F1 = 2 TP / (2 TP + FP + FN); 0 when that denominator is 0."""

    rate = default_name = "f1"


@_register
class ConfusionMatrix(BinaryConfusionCounts):
    """Weighted 2x2 confusion matrix ``[[TN, FP], [FN, TP]]`` (rows = true, columns = predicted).

    Same layout as torchmetrics ``BinaryConfusionMatrix`` and ``CLASS_NAMES`` order.
    """

    default_name = "confusion_matrix"

    def result(self) -> Any:
        return ops.reshape(self.confusion.value, (2, 2))


def default_metrics(threshold: float = 0.5, from_logits: bool = True) -> list[BinaryConfusionCounts]:
    """R, MA, P, FA, accuracy and F1 at ``threshold`` (scalar metrics, safe for ``compile``)."""
    classes = (Recall, MissedAlarmRate, Precision, FalseAlarmRate, Accuracy, F1Score)
    return [cls(threshold=threshold, from_logits=from_logits) for cls in classes]


__all__ = [
    "RATES",
    "Accuracy",
    "BinaryConfusionCounts",
    "ConfusionMatrix",
    "F1Score",
    "FalseAlarmRate",
    "MissedAlarmRate",
    "Precision",
    "Recall",
    "crack_probability",
    "default_metrics",
    "rates_from_counts",
]
