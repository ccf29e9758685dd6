"""A new site's operating point from a small labelled sample (``python -m crack_tf.calibrate``).

NumPy only: the inputs are the model's logit margins ``[V, N]`` on the sample (V test-time views,
:func:`crack_tf.evaluation.calibration.logit_margin`) and its labels ``[N]`` (1 = crack).

* ``fit="threshold"`` keeps the stored temperature and picks a new threshold by ``rule``
  (:func:`crack_tf.evaluation.stats.pick_threshold`), the default: one number from a few tiles.
* ``fit="temperature+threshold"`` also re-fits the temperature
  (:func:`crack_tf.evaluation.calibration.operating_point`); a perfectly separated small sample
  drives it to its bound (over-confident probabilities), so it needs more tiles.
* ``fit="last_layer"``: the command re-fits the final Dense layer first
  (:mod:`crack_tf.evaluation.head_refit`) and passes the new margins as ``after_margins``; the
  temperature and threshold are then fitted on those.
* ``fit="finetune"``: the same with the top of the network fine-tuned on the sample
  (:mod:`crack_tf.evaluation.site_finetune`).

``prior_tiles`` (k, default :data:`DEFAULT_PRIOR_TILES`) shrinks the fitted threshold towards the
stored one: in margin space (threshold x temperature on the logit scale) the new decision margin is
(n * fitted + k * stored) / (n + k) for a sample of n tiles, as if the stored point had been seen on
k tiles of the site. Measured by leave-one-source-out (docs/CALIBRATE.md): a plain re-pick from 10-50
tiles costs 1-4 points where the stored threshold is already near the site's best; k = 50 keeps
that loss within 1.2 points and most of the gain where there is one. When the fitted point decides the
sample significantly better than the stored one (:func:`clearly_better`) the stored point is wrong
for the site and the prior is dropped. ``0`` = the plain re-pick; the last-layer and fine-tuning
fits are never shrunk (their margins are not the stored point's).

The returned point is stored like the trainer's (``rule``, ``threshold``, ``temperature``,
``tta``) plus ``site_calibration``: sample size and class counts, the files' hash, the UTC date,
the rule and fit, the previous point, and the sample's accuracy / precision / recall / F1 with
95% bootstrap CIs before and after, and **cross-validated** (each tile predicted by a point
fitted on the other folds: the honest estimate for new tiles, as the "after" numbers are
measured on the tiles the point was fitted on).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from crack_tf.choices import CLASS_NAMES
from crack_tf.evaluation import calibration, stats

FITS = ("threshold", "temperature+threshold", "last_layer", "finetune")
MARGIN_FITS = FITS[:2]  # the fits that need only the margins (no features)
MODEL_FITS = FITS[2:]  # the fits that change the model: temperature and threshold fitted on its new margins
REPORTED = ("accuracy", "precision", "recall", "f1")
DEFAULT_MIN_EXAMPLES = 20
DEFAULT_FOLDS = 10
DEFAULT_PRIOR_TILES = 50


def class_counts(labels: Sequence[int]) -> dict[str, int]:
    y = np.asarray(labels).reshape(-1)
    return {name: int(np.sum(y == i)) for i, name in enumerate(CLASS_NAMES)}


def check_sample(labels: Sequence[int], min_examples: int = DEFAULT_MIN_EXAMPLES) -> dict[str, int]:
    """Class counts of the sample; ValueError saying what to add if it has one class or too few tiles."""
    counts = class_counts(labels)
    n = sum(counts.values())
    missing = [name for name, c in counts.items() if c == 0]
    if missing:
        raise ValueError(f"the sample has no {missing[0]!r} tiles ({n} tiles: {counts}); calibration needs both "
                         f"classes: add at least {max(1, min_examples - n)} labelled {missing[0]} tile(s) of the site "
                         f"(folder {missing[0]}/)")
    if n < min_examples:
        raise ValueError(f"the sample has {n} labelled tiles ({counts}), fewer than --min_examples={min_examples}: "
                         f"add at least {min_examples - n} more of the site (both classes), or lower --min_examples")
    return counts


def files_sha256(files: Sequence[tuple[str, str]]) -> str:
    """SHA-256 over ``(name, path)`` pairs: the ``sha256sum`` lines ``"<file sha256>  <name>"`` of the
    files sorted by name, joined by newlines. Names (e.g. ``crack/a.png``) carry the labels, so a
    file moved to the other class, renamed, edited, added or removed changes the hash."""
    from crack_tf.inspection.scan import file_sha256

    lines = [f"{file_sha256(path)}  {name}" for name, path in sorted(files)]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def resolve_rule(rule: str | None, base_point: dict | None) -> str:
    """``rule``, else the stored point's rule if it is one of pick_threshold's, else ``f1``."""
    for candidate in (rule, (base_point or {}).get("rule"), calibration.DEFAULT_RULE):
        if not candidate:
            continue
        try:
            stats.pick_threshold([0.5], [1], candidate)
        except ValueError:
            if candidate == rule:
                raise
            continue
        return candidate
    return calibration.DEFAULT_RULE


def fit_point(margins: np.ndarray, labels: np.ndarray, rule: str, fit: str = "threshold",
              base_point: dict | None = None, prior_tiles: float = 0) -> dict:
    """Temperature and threshold fitted on these margins by ``fit`` (see the module docstring),
    the threshold shrunk towards ``base_point``'s by ``prior_tiles``."""
    if prior_tiles < 0:
        raise ValueError(f"prior_tiles={prior_tiles} must be >= 0")
    if fit == "threshold":
        temperature = float((base_point or {}).get("temperature", 1.0))
        picked = stats.pick_threshold(calibration.calibrated_probability(margins, temperature), labels, rule)
        point = {"rule": rule, "threshold": picked["threshold"], "temperature": temperature}
    elif fit == "temperature+threshold" or fit in MODEL_FITS:
        fitted = calibration.operating_point(margins, labels, rule)
        keep = ("rule", "threshold", "temperature", "ece_before", "ece_after", "nll_before", "nll_after")
        point = {k: fitted[k] for k in keep}
    else:
        raise ValueError(f"--fit={fit!r}; choose one of {FITS}")
    if prior_tiles and base_point and fit not in MODEL_FITS:
        point["prior_tiles"] = float(prior_tiles)
        if clearly_better(margins, labels, point, base_point):
            point["prior"] = "not applied: the fitted point is significantly better on the sample"
        else:
            point["threshold"] = shrunk_threshold(point, base_point, int(np.asarray(labels).size), prior_tiles)
            point["prior"] = "applied"
    return point


def clearly_better(margins: np.ndarray, labels: np.ndarray, point: dict, base_point: dict) -> bool:
    """True when ``point`` decides the sample significantly better than ``base_point`` (McNemar's
    test at about 2 sigma: of the tiles the two decide differently, b more are right with ``point``
    than c with ``base_point``, b - c > 2 sqrt(b + c)): the stored point is then wrong for the
    site, and the prior is dropped."""
    y = np.asarray(labels).reshape(-1).astype(bool)
    right = [says_crack(predictions(margins, p), p) == y for p in (point, base_point)]
    b, c = int((right[0] & ~right[1]).sum()), int((right[1] & ~right[0]).sum())
    return b - c > 2 * np.sqrt(b + c) if b + c else False


def shrunk_threshold(point: dict, base_point: dict, n: int, prior_tiles: float) -> float:
    """``point``'s threshold moved towards ``base_point``'s: the weighted mean of the two decision
    margins (temperature x logit(threshold)), weights n and ``prior_tiles``, back on ``point``'s
    probability scale."""
    def margin(p: dict) -> float:
        t = float(np.clip(p["threshold"], 1e-6, 1 - 1e-6))
        return float(p.get("temperature", 1.0)) * float(np.log(t / (1 - t)))

    mixed = (n * margin(point) + prior_tiles * margin(base_point)) / (n + prior_tiles)
    return float(1 / (1 + np.exp(-mixed / float(point.get("temperature", 1.0)))))


def predictions(margins: np.ndarray, point: dict) -> np.ndarray:
    """Calibrated p(crack) as float32 (what the predictor compares) [N]."""
    return calibration.calibrated_probability(margins, float(point.get("temperature", 1.0))).astype(np.float32)


def says_crack(probabilities: np.ndarray, point: dict) -> np.ndarray:
    """The decision at ``point``, as the predictor makes it: ``p > float32(threshold)`` [N] bool."""
    return np.asarray(probabilities) > np.float32(point["threshold"])


def scored(scores: np.ndarray, labels: np.ndarray, threshold: float, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Accuracy / precision / recall / F1 at ``threshold`` and (``n_resamples`` > 0) their 95% bootstrap CIs."""
    t = float(np.float32(threshold))
    values = stats.all_metrics(scores, labels, t)
    out: dict = {k: float(values[k]) for k in REPORTED}
    if n_resamples:
        ci = stats.bootstrap_ci(scores, labels, t, n_resamples, seed)
        out["ci95"] = {k: list(ci[k]) for k in REPORTED}
    return out


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold id [N] per example: each class shuffled and dealt round-robin (k = min(folds, N))."""
    y = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    k = max(2, min(folds, y.size))
    out = np.empty(y.size, np.int64)
    offset = 0
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        out[idx] = (offset + np.arange(idx.size)) % k
        offset += idx.size
    return out


def cross_validated_scores(labels: np.ndarray, fold_fit: Callable[[np.ndarray], tuple[np.ndarray, dict]],
                           base: tuple[np.ndarray, dict], folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-fold decisions [N] (1.0 = crack): each fold predicted by ``fold_fit(train indices)`` ->
    (margins [V, N], point); a fold whose training part lacks a class gets ``base`` (margins, point)."""
    y = np.asarray(labels).reshape(-1)
    fold = stratified_folds(y, folds, seed)
    out = np.zeros(y.size)
    for f in np.unique(fold):
        test, train = fold == f, np.flatnonzero(fold != f)
        margins, point = fold_fit(train) if len(np.unique(y[train])) == 2 else base
        out[test] = says_crack(predictions(margins[:, test], point), point)
    return out


def calibrate_sample(
    margins: np.ndarray,
    labels: np.ndarray,
    base_point: dict | None = None,
    rule: str | None = None,
    fit: str = "threshold",
    tta: str = "none",
    after_margins: np.ndarray | None = None,
    fold_fit: Callable[[np.ndarray], np.ndarray] | None = None,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    n_resamples: int = 1000,
    seed: int = 0,
    folds: int = DEFAULT_FOLDS,
    provenance: dict | None = None,
    prior_tiles: float = DEFAULT_PRIOR_TILES,
) -> dict:
    """The site's operating point (stored as ``operating_point`` of the new model file).

    ``margins`` [V, N] or [N]: the model's margins on the sample. ``after_margins``: those of the
    re-fitted model (``last_layer``; default ``margins``) and ``fold_fit(train indices)`` -> its
    margins [V, N] when re-fitted on those tiles only (cross-validation; default: no re-fit).
    ``provenance``: extra entries of ``site_calibration`` (files' hash, data path, model, ...).
    """
    margins = np.atleast_2d(np.asarray(margins, np.float64))
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if margins.shape[1] != labels.size:
        raise ValueError(f"margins {margins.shape} and labels {labels.shape} differ in length")
    if fit not in FITS:
        raise ValueError(f"--fit={fit!r}; choose one of {FITS}")
    counts = check_sample(labels, min_examples)
    base = dict(base_point or {"threshold": 0.5, "temperature": 1.0, "rule": "default (no stored point)"})
    rule = resolve_rule(rule, base_point)
    prior_tiles = prior_tiles if base_point else 0  # no stored point: nothing to shrink towards
    after = margins if after_margins is None else np.atleast_2d(np.asarray(after_margins, np.float64))
    point = fit_point(after, labels, rule, fit, base, prior_tiles)

    def refit(train: np.ndarray) -> tuple[np.ndarray, dict]:
        m = after if fold_fit is None else np.atleast_2d(fold_fit(train))
        return m, fit_point(m[:, train], labels[train], rule, fit, base, prior_tiles)

    oof = cross_validated_scores(labels, refit, (margins, base), folds, seed)
    record = {
        "fit": fit,
        "rule": rule,
        "tta": tta,
        "examples": int(labels.size),
        "class_counts": counts,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "before": scored(predictions(margins, base), labels, base["threshold"], n_resamples, seed),
        "after": scored(predictions(after, point), labels, point["threshold"], n_resamples, seed),
        "cross_validated": {"folds": int(min(folds, labels.size)),
                            **scored(oof, labels, 0.5, n_resamples, seed)},
        "previous": base_point,
        **(provenance or {}),
    }
    record["verdict"] = verdict(record["before"]["accuracy"], record["cross_validated"]["accuracy"])
    return {**point, "tta": tta, "site_calibration": record}


def verdict(before_accuracy: float, cross_validated_accuracy: float) -> str:
    """``recalibrate`` when the cross-validated accuracy of the new fit beats the stored point's on
    the sample, else ``keep the stored point`` (a fit to a few tiles can be noisier than the stored
    threshold: docs/CALIBRATE.md)."""
    return "recalibrate" if cross_validated_accuracy > before_accuracy else "keep the stored point"


def _line(name: str, m: dict) -> str:
    ci = m.get("ci95", {})
    parts = [f"{k} {m[k]:.3f}" + (f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if ci.get(k, [None])[0] is not None else "")
             for k in ("accuracy", "precision", "recall")]
    return f"{name}: " + ", ".join(parts)


def summary(point: dict) -> list[str]:
    """Printable lines: the sample, before / after / cross-validated metrics with 95% CIs."""
    rec = point["site_calibration"]
    prev = rec.get("previous")
    before = (f"stored threshold {prev['threshold']:.4g}, temperature {prev.get('temperature', 1.0):.3g}" if prev
              else "threshold 0.5: the model stores no point")
    return [
        f"sample: {rec['examples']} labelled tiles {rec['class_counts']}, fit {rec['fit']}, rule {rec['rule']}, "
        f"tta {rec['tta']}" + (f", prior {point['prior_tiles']:g} tiles ({point['prior']})"
                               if point.get("prior_tiles") else ""),
        _line(f"before ({before}) on the sample", rec["before"]),
        _line(f"after (threshold {point['threshold']:.4g}, temperature {point['temperature']:.3g}) on the sample "
              "(fitted there: optimistic)", rec["after"]),
        _line(f"cross-validated ({rec['cross_validated']['folds']} folds: the estimate for new tiles of the site)",
              rec["cross_validated"]),
        f"verdict: {rec['verdict']} (cross-validated accuracy {rec['cross_validated']['accuracy']:.3f} against "
        f"{rec['before']['accuracy']:.3f} at the stored point)"
        + ("" if rec["verdict"] == "recalibrate" else "; the new file is written anyway, use the old one"),
    ]
