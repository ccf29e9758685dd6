"""The operating point that travels with a model: temperature scaling and a threshold from val.

* **Temperature** ``T`` (Guo et al., 2017): the crack probability becomes
  ``sigmoid((l_crack - l_background) / T)`` with ``T`` minimising the negative log-likelihood of
  the val labels (``scipy.optimize.minimize_scalar`` on ``log T``). It changes no ranking, only
  how far the probabilities can be taken at face value: the expected calibration error (ECE,
  15 equal-width bins) is reported before and after.
* **Threshold** ``t`` on the calibrated probability, by a documented rule
  (``crack_tf.evaluation.stats.pick_threshold``): ``f1`` (the highest F1, the default),
  ``precision@R`` (the best precision with recall >= R), or a source-balanced rule
  (``mean_source_f1``, ``min_source_accuracy``, ...: the mean or worst over the val sources of each
  source's own metric, so the source with the most tiles does not set the threshold alone).

Both are stored in run.json, in the ``.keras`` file (:mod:`crack_tf.model_meta`) and in the
SavedModel (assets and the ``is_crack`` output); every command uses them by default.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

from crack_tf.evaluation import stats

DEFAULT_RULE = "f1"


def logit_margin(logits: np.ndarray) -> np.ndarray:
    """``l_crack - l_background`` of [B, 2] logits (or a [B] / [B, 1] crack logit)."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim == 2 and logits.shape[1] == 2:
        return logits[:, 1] - logits[:, 0]
    return logits.reshape(-1)


def calibrated_probability(margin: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """p(crack) = sigmoid(margin / T); for margins [V, N] of V test-time views, the mean over views."""
    p = special.expit(np.asarray(margin, np.float64) / temperature)
    return p.mean(axis=0) if p.ndim == 2 else p


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def fit_temperature(margin: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the val negative log-likelihood (bounded to [0.05, 20]).

    ``margin``: [N], or [V, N] for V test-time views (the probability is then their mean)."""
    margin, labels = np.asarray(margin, np.float64), np.asarray(labels, np.float64)
    res = optimize.minimize_scalar(lambda log_t: _nll(calibrated_probability(margin, np.exp(log_t)), labels),
                                   bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the crack probability: sum over equal-width bins of |accuracy - confidence| * share,
    with confidence = max(p, 1 - p) and accuracy = (p > 0.5) == label."""
    p, y = np.asarray(probs, np.float64), np.asarray(labels)
    confidence = np.maximum(p, 1 - p)
    correct = (p > 0.5) == (y == 1)
    which = np.clip(np.digitize(confidence, np.linspace(0.5, 1.0, bins + 1)[1:-1]), 0, bins - 1)
    return float(sum(np.mean(which == b) * abs(correct[which == b].mean() - confidence[which == b].mean())
                     for b in range(bins) if (which == b).any()))


def operating_point(margin: np.ndarray, labels: np.ndarray, rule: str = DEFAULT_RULE,
                    temperature_scaling: bool = True, sources: np.ndarray | None = None) -> dict:
    """Temperature, threshold and the val metrics there, from val logit margins ([N] or [V, N]
    with V test-time views, see :func:`logit_margin`) and labels; ``sources`` [N]: each example's
    source name, for the source-balanced rules."""
    labels = np.asarray(labels).reshape(-1)
    if not (labels == 1).any() or not (labels == 0).any():
        raise ValueError("the operating point needs val examples of both classes")
    temperature = fit_temperature(margin, labels) if temperature_scaling else 1.0
    probs = calibrated_probability(margin, temperature)
    picked = stats.pick_threshold(probs, labels, rule, groups=sources)
    return {
        "rule": rule,
        "threshold": picked["threshold"],
        "temperature": temperature,
        "ece_before": expected_calibration_error(calibrated_probability(margin), labels),
        "ece_after": expected_calibration_error(probs, labels),
        "nll_before": _nll(calibrated_probability(margin), labels),
        "nll_after": _nll(probs, labels),
        "val_examples": int(len(labels)),
        "val_at_threshold": {k: v for k, v in picked.items() if k not in ("rule", "threshold", "source_score")},
    }
