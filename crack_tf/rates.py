"""The crack rates' one definition (R, MA, P, FA, accuracy, F1 from confusion counts), free of Keras.

Shared by the streaming Keras metrics (:mod:`crack_tf.metrics`, with ``xp = keras.ops``) and the
NumPy evaluators and offline analysis tools (``xp = numpy``), which so need not import Keras (and with
it TensorFlow: ~7 s a process on the dev machine). Zero division gives 0; MA = 1 - R, FA = 1 - P.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _safe_div(num: Any, den: Any, xp: Any) -> Any:
    """``num / den`` where ``den > 0``, else 0 (works for ``keras.ops`` and NumPy as ``xp``)."""
    positive = den > 0
    return xp.where(positive, num / xp.where(positive, den, 1.0), xp.zeros_like(num))


def _recall(tp, fp, tn, fn, xp):
    return _safe_div(tp, tp + fn, xp)


def _precision(tp, fp, tn, fn, xp):
    return _safe_div(tp, tp + fp, xp)


RATES: dict[str, Callable[..., Any]] = {
    "recall": _recall,
    "missed_alarm_rate": lambda tp, fp, tn, fn, xp: 1.0 - _recall(tp, fp, tn, fn, xp),
    "precision": _precision,
    "false_alarm_rate": lambda tp, fp, tn, fn, xp: 1.0 - _precision(tp, fp, tn, fn, xp),
    "accuracy": lambda tp, fp, tn, fn, xp: _safe_div(tp + tn, tp + fp + tn + fn, xp),
    "f1": lambda tp, fp, tn, fn, xp: _safe_div(2.0 * tp, 2.0 * tp + fp + fn, xp),
}
"""Rate name -> ``f(tp, fp, tn, fn, xp)`` with ``xp`` = ``keras.ops`` or ``numpy`` (vectorised)."""


def rates_from_counts(tp: Any, fp: Any, tn: Any, fn: Any, xp: Any = None) -> dict[str, Any]:
    """All :data:`RATES` from confusion counts (scalars or arrays of equal shape); ``xp`` defaults to
    ``keras.ops`` (imported only then)."""
    if xp is None:
        from keras import ops as xp
    return {name: fn_(tp, fp, tn, fn, xp) for name, fn_ in RATES.items()}
