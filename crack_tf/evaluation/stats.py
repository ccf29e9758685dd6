"""NumPy statistics for evaluation reports: ROC-AUC, average precision, bootstrap CIs, thresholds.

Every function takes crack probabilities ``scores`` [N], labels ``labels`` [N] (1 = crack) and
optionally per-sample ``weights`` [R, N] (R weight vectors at once, e.g. bootstrap resample
counts), so the bootstrap is vectorised: no Python loop over resamples. Prediction rule:
crack iff score > threshold, as in :mod:`crack_tf.metrics`, whose ``RATES`` are reused here.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from crack_tf.rates import RATES, rates_from_counts

CURVE_METRICS = ("roc_auc", "pr_auc")


def _prepare(scores: Any, labels: Any, weights: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    w = np.ones((1, s.size)) if weights is None else np.asarray(weights, np.float64)
    w = w.reshape(1, -1) if w.ndim == 1 else w
    if w.shape[1] != s.size:
        raise ValueError(f"weights {w.shape} do not match {s.size} scores")
    return s, y, w


def _grouped(s: np.ndarray, y: np.ndarray, w: np.ndarray, descending: bool):
    """Positive / negative weight per distinct score: (unique scores, pos [R,G], neg [R,G])."""
    order = np.argsort(-s if descending else s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    ws = w[:, order]
    pos = np.add.reduceat(ws * y[order], starts, axis=1)
    neg = np.add.reduceat(ws * ~y[order], starts, axis=1)
    return s_sorted[starts], pos, neg


def roc_auc(scores: Any, labels: Any, weights: Any = None) -> np.ndarray | float:
    """Area under the ROC curve (ties count 1/2, as the trapezoid rule); NaN without both classes.

    Returns a float, or an array [R] when ``weights`` is [R, N].
    """
    s, y, w = _prepare(scores, labels, weights)
    _, pos, neg = _grouped(s, y, w, descending=False)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return _squeeze(out, weights)


def average_precision(scores: Any, labels: Any, weights: Any = None) -> np.ndarray | float:
    """PR-AUC as average precision: sum over thresholds of (R_k - R_{k-1}) P_k; NaN without positives.

    Same definition as torchmetrics ``BinaryAveragePrecision`` / sklearn ``average_precision_score``.
    """
    s, y, w = _prepare(scores, labels, weights)
    _, pos, neg = _grouped(s, y, w, descending=True)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    precision = tp / np.where(tp + fp > 0, tp + fp, 1.0)
    total = pos.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, np.sum(pos * precision, axis=1) / np.where(total > 0, total, 1.0), np.nan)
    return _squeeze(out, weights)


def _squeeze(out: np.ndarray, weights: Any) -> np.ndarray | float:
    return float(out[0]) if weights is None or np.ndim(weights) == 1 else out


def confusion_counts(scores: Any, labels: Any, threshold: float, weights: Any = None) -> dict[str, np.ndarray]:
    """Weighted TP, FP, TN, FN at ``threshold`` (arrays [R], or floats without ``weights`` [R, N])."""
    s, y, w = _prepare(scores, labels, weights)
    pred = s > threshold
    cells = {"tp": y & pred, "fp": ~y & pred, "tn": ~y & ~pred, "fn": y & ~pred}
    counts = {k: w @ v.astype(np.float64) for k, v in cells.items()}
    return {k: _squeeze(v, weights) for k, v in counts.items()}


def all_metrics(scores: Any, labels: Any, threshold: float, weights: Any = None) -> dict[str, Any]:
    """Rates of :data:`crack_tf.rates.RATES` at ``threshold`` plus ROC-AUC and PR-AUC."""
    c = confusion_counts(scores, labels, threshold, weights)
    out = rates_from_counts(c["tp"], c["fp"], c["tn"], c["fn"], xp=np)
    out = {k: v if np.ndim(v) else float(v) for k, v in out.items()}
    out["roc_auc"] = roc_auc(scores, labels, weights)
    out["pr_auc"] = average_precision(scores, labels, weights)
    return out


def resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[R, n] multiplicities of a bootstrap: row r counts how often each sample was drawn."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n)) + n * np.arange(n_resamples)[:, None]
    return np.bincount(idx.ravel(), minlength=n * n_resamples).reshape(n_resamples, n).astype(np.float64)


def bootstrap_ci(
    scores: Any,
    labels: Any,
    threshold: float,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    max_cells: int = 4_000_000,
) -> dict[str, tuple[float | None, float | None]]:
    """Percentile bootstrap CIs of every metric of :func:`all_metrics` (seeded, vectorised).

    Not ``scipy.stats.bootstrap``: that resamples the data once per statistic, this draws the
    resample multiplicities once and evaluates all eight metrics (AUCs included) as weighted
    sums in one pass; the intervals agree with SciPy's within Monte-Carlo noise
    (``tests/test_evaluate.py::test_bootstrap_agrees_with_scipy_stats_bootstrap``).

    Resamples of size N with replacement, processed in chunks of at most ``max_cells`` weights.
    A bound is None when the metric is undefined (NaN) in every resample.
    """
    n = np.size(scores)
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one sample")
    weights = resample_counts(n, n_resamples, seed)
    chunk = max(1, max_cells // n)
    parts = [all_metrics(scores, labels, threshold, weights[i : i + chunk]) for i in range(0, n_resamples, chunk)]
    alpha = 100 * (1 - confidence) / 2
    out = {}
    for name in parts[0]:
        values = np.concatenate([np.atleast_1d(p[name]) for p in parts])
        values = values[np.isfinite(values)]
        if values.size == 0:
            out[name] = (None, None)
        else:
            lo, hi = np.percentile(values, [alpha, 100 - alpha])
            out[name] = (float(lo), float(hi))
    return out


def threshold_sweep(scores: Any, labels: Any) -> dict[str, np.ndarray]:
    """Every distinct decision: thresholds halfway between neighbouring distinct scores.

    Returns ``threshold`` (descending), and the counts and rates at each (``tp``, ``fp``, ...).
    """
    s, y, w = _prepare(scores, labels)
    uniq, pos, neg = _grouped(s, y, w, descending=True)
    tp = np.r_[0.0, np.cumsum(pos[0])]  # index k: the k highest distinct scores are positive
    fp = np.r_[0.0, np.cumsum(neg[0])]
    # Threshold k makes the k highest distinct scores positive: uniq[k] <= t < uniq[k-1].
    upper = np.r_[max(1.0, uniq[0]), uniq]
    lower = np.r_[uniq, min(0.0, uniq[-1])]
    thresholds = np.clip((upper + lower) / 2, 0.0, 1.0)
    thresholds[0] = max(thresholds[0], uniq[0])
    inside = thresholds[1:] < uniq  # rounding safety: t must stay below uniq[k-1]
    thresholds[1:] = np.where(inside, thresholds[1:], lower[1:])
    out = {"threshold": thresholds, "tp": tp, "fp": fp, "fn": tp[-1] - tp, "tn": fp[-1] - fp}
    out.update(rates_from_counts(tp, fp, out["tn"], out["fn"], xp=np))
    return out


_RULE = re.compile(r"^(f1|precision@(0(\.\d+)?|1(\.0*)?))$")
_SOURCE_RULE = re.compile(r"^(mean|min)_source_(accuracy|balanced_accuracy|f1)$")
#: Every rule's form, for error messages and flag help.
RULES_HELP = ("'f1' (pooled max F1), 'precision@R' (best precision with recall >= R, e.g. precision@0.9), or a "
              "source-balanced rule '<mean|min>_source_<accuracy|balanced_accuracy|f1>' (the threshold maximising "
              "the mean, or the minimum, over sources of each source's own metric)")


def is_source_rule(rule: str) -> bool:
    """True for the source-balanced rules (``mean_source_f1``, ``min_source_accuracy``, ...)."""
    return bool(_SOURCE_RULE.match(rule))


def check_rule(rule: str) -> None:
    """Raises ValueError naming the valid forms unless ``rule`` is one."""
    if not (_RULE.match(rule) or _SOURCE_RULE.match(rule)):
        raise ValueError(f"--pick_threshold / --threshold_rule={rule!r}: use {RULES_HELP}")


def _balanced_accuracy(rates: dict[str, np.ndarray]) -> np.ndarray:
    return 1.0 - (rates["missed_alarm_rate"] + rates["false_alarm_rate"]) / 2


def source_metric_at(scores: Any, labels: Any, groups: Any, thresholds: np.ndarray, metric: str
                     ) -> dict[str, np.ndarray]:
    """{source: ``metric`` at each of ``thresholds``} (crack iff score > threshold), each source
    counted on its own samples only."""
    s, y, _ = _prepare(scores, labels)
    g = np.asarray(groups).reshape(-1)
    if g.shape != s.shape:
        raise ValueError(f"groups {g.shape} and scores {s.shape} differ in length")
    t = np.asarray(thresholds, np.float64)
    out = {}
    for name in dict.fromkeys(g.tolist()):
        pos, neg = np.sort(s[(g == name) & y]), np.sort(s[(g == name) & ~y])
        tp = pos.size - np.searchsorted(pos, t, side="right")  # scores above t
        fp = neg.size - np.searchsorted(neg, t, side="right")
        rates = rates_from_counts(tp.astype(np.float64), fp.astype(np.float64), (neg.size - fp).astype(np.float64),
                                  (pos.size - tp).astype(np.float64), xp=np)
        out[name] = _balanced_accuracy(rates) if metric == "balanced_accuracy" else rates[metric]
    return out


def pick_threshold(scores: Any, labels: Any, rule: str, groups: Any = None) -> dict[str, float | str]:
    """Threshold chosen by ``rule`` on these scores.

    ``"f1"``: the highest F1 (ties: the highest threshold). ``"precision@R"`` (e.g. ``precision@0.9``):
    the best precision among thresholds with recall >= R (ties: higher recall, then higher threshold).
    ``"<mean|min>_source_<metric>"``: the threshold maximising the mean (or the worst) over the
    sources in ``groups`` [N] (source names; None = one source) of each source's own accuracy,
    balanced accuracy (mean of recall and specificity) or F1, so no source dominates by its number of
    tiles (ties: the mean, then the highest threshold). Returns the rule, the threshold and the pooled
    rates there (with ``source_score``: the aggregated metric, for source rules).
    """
    check_rule(rule)
    sweep = threshold_sweep(scores, labels)
    if sweep["tp"][-1] == 0:
        raise ValueError("cannot pick a threshold: the data has no crack (positive) examples")
    extra = {}
    if rule == "f1":
        k = int(np.argmax(sweep["f1"]))  # first maximum = highest threshold
    elif rule.startswith("precision@"):
        target = float(rule.split("@")[1])
        ok = sweep["recall"] >= target - 1e-12
        key = np.where(ok, sweep["precision"], -1.0)
        best = np.flatnonzero(key == key.max())
        k = int(best[np.argmax(sweep["recall"][best])])
    else:
        aggregate, metric = _SOURCE_RULE.match(rule).groups()
        groups = np.zeros(np.size(scores), int) if groups is None else groups
        per_source = np.stack(list(source_metric_at(scores, labels, groups, sweep["threshold"], metric).values()))
        mean = per_source.mean(axis=0)
        key = mean if aggregate == "mean" else per_source.min(axis=0)
        best = np.flatnonzero(key >= key.max() - 1e-12)
        k = int(best[np.argmax(mean[best] >= mean[best].max() - 1e-12)])  # first = highest threshold
        extra = {"source_score": float(key[k])}
    return {"rule": rule, **{name: float(sweep[name][k]) for name in ("threshold", *RATES)}, **extra}
