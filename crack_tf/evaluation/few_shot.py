"""How many labelled tiles a new site needs: the few-shot calibration curve (leave-one-source-out).

For a target set (a source the model never saw) with the model's margins ``[V, N]`` and labels:
for each ``n`` in ``ns`` and each of ``draws`` random draws, calibrate on ``n`` labelled tiles
(:func:`crack_tf.evaluation.site_calibration.fit_point`) and score the **rest** of the target set
at the new point; ``n = 0`` is the stored point on the whole set. Draws of ``n >= 10`` are
stratified (each class gets its share of ``n``, at least one tile), smaller ones are plain random
draws; a draw with one class cannot be calibrated (the command refuses it) and keeps the stored
point (counted as ``fallbacks``). ``fit="last_layer"`` works on the tiles' penultimate features
instead (``features.npz`` of a run with ``--save_eval_features``): each draw re-fits the Dense head
on the sample (:func:`crack_tf.evaluation.head_refit.refit_head`), then temperature and threshold
on the sample's new margins, as ``crack_tf.calibrate --fit=last_layer`` does, and scores the rest
with the new head. ``fit="finetune"`` fine-tunes the network on each sample (``refit``) and fits
temperature and threshold on the sample's out-of-fold margins, as ``crack_tf.calibrate
--fit=finetune`` does (a draw whose folds cannot train on both classes keeps the stored point and
the model: a fallback). Besides accuracy, precision, recall and F1 at the fitted point, the rest's
ROC AUC (threshold-free) tells a better ranking from a better-placed threshold.
``tools/few_shot_curve.py`` runs it on the ``margins.npz`` (and ``features.npz``) of
leave-one-source-out runs and writes the table and the plot.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from crack_tf.evaluation import head_refit as hr
from crack_tf.evaluation import site_calibration as sc
from crack_tf.evaluation import stats
from crack_tf.evaluation.site_finetune import SampleTooSmall

DEFAULT_NS = (0, 10, 25, 50, 100)
STRATIFY_FROM = 10
CURVE_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def draw_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` tiles: stratified (both classes, shares as in ``labels``) when n >= 10."""
    y = np.asarray(labels).reshape(-1)
    if not 0 < n < y.size:
        raise ValueError(f"n={n} must be in [1, {y.size - 1}] for {y.size} target tiles")
    if n < STRATIFY_FROM:
        return rng.choice(y.size, n, replace=False)
    crack, background = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    k = int(np.clip(round(n * crack.size / y.size), 1, n - 1))
    k = min(k, crack.size)
    if n - k > background.size:
        k = n - background.size
    return np.concatenate([rng.choice(crack, k, replace=False), rng.choice(background, n - k, replace=False)])


def draw_grouped(labels: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(``n`` sample tiles, the tiles left to score): whole groups (photos) are taken in random order
    until they hold ``n`` tiles of both classes, the sample is drawn from them (as :func:`draw_sample`)
    and the rest is every tile of the other groups, so no scored tile shares a photo with the sample.
    ValueError when the groups cannot give ``n`` tiles and leave any to score."""
    y = np.asarray(labels).reshape(-1)
    order = rng.permutation(np.unique(groups))
    count = np.array([np.sum(groups == g) for g in order])
    crack = np.array([np.sum(y[groups == g]) for g in order])
    enough = np.flatnonzero((np.cumsum(count) >= n) & (np.cumsum(crack) >= 1) & (np.cumsum(count - crack) >= 1))
    if not enough.size or enough[0] + 1 >= order.size:
        raise ValueError(f"n={n}: the {order.size} groups of {y.size} tiles cannot give {n} tiles and leave a group "
                         "to score")
    chosen = np.isin(groups, order[: enough[0] + 1])
    inside = np.flatnonzero(chosen)
    picked = inside if inside.size == n else inside[draw_sample(y[inside], n, rng)]
    return picked, np.flatnonzero(~chosen)


def choose_by_sample_auc(margins: np.ndarray, other: np.ndarray, labels: np.ndarray, point: dict,
                         by: float = 0.0) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A ``refit`` for :func:`few_shot_curve`: each draw uses ``other`` (e.g. the margins after AdaBN)
    instead of ``margins`` only where ``other`` ranks the labelled sample better (its ROC AUC larger
    by more than ``by``); the sample cannot see the rest, so this is what a site with n labels can do."""
    margins, other = np.atleast_2d(margins), np.atleast_2d(other)
    if margins.shape != other.shape:
        raise ValueError(f"margins {margins.shape} and the alternative {other.shape} differ in shape")
    scores = [sc.predictions(m, point) for m in (margins, other)]

    def refit(picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        auc_base, auc_other = (float(stats.roc_auc(s[picked], labels[picked])) for s in scores)
        chosen = other if auc_other > auc_base + by else margins
        return chosen, chosen[:, picked]

    return refit


def _metrics(margins: np.ndarray, labels: np.ndarray, point: dict) -> dict[str, float]:
    values = stats.all_metrics(sc.predictions(margins, point), labels, float(np.float32(point["threshold"])))
    return {k: float(values[k]) for k in CURVE_METRICS}


def _fit_draw(margins: np.ndarray, labels: np.ndarray, picked: np.ndarray, rule: str, fit: str, base: dict,
              prior_tiles: float, refit: Callable | None) -> tuple[np.ndarray, dict]:
    """(every tile's margins, the point) after calibrating on the ``picked`` tiles; the model's margins
    and ``base`` itself when the sample cannot be calibrated (one class; fine-tuning folds without both)."""
    if len(np.unique(labels[picked])) < 2:
        return margins, base
    fitted, on = margins, margins[:, picked]
    if refit is not None:
        try:
            fitted, on = refit(picked)
        except SampleTooSmall:
            return margins, base
    return fitted, sc.fit_point(np.atleast_2d(on), labels[picked], rule, fit, base, prior_tiles)


def few_shot_curve(
    margins: np.ndarray | None,
    labels: np.ndarray,
    ns: Sequence[int] = DEFAULT_NS,
    draws: int = 20,
    rule: str = "f1",
    seed: int = 0,
    base_point: dict | None = None,
    fit: str = "threshold",
    prior_tiles: float = 0,
    features: np.ndarray | None = None,
    head: tuple[np.ndarray, np.ndarray] | None = None,
    l2: float = hr.DEFAULT_L2,
    groups: np.ndarray | None = None,
    refit: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[dict]:
    """One row per ``n``: ``n``, ``draws``, ``fallbacks``, ``rest`` (tiles scored) and the mean / std
    (sample std over the draws; 0 for one draw) of accuracy, precision, recall, F1 and ROC AUC.
    ``prior_tiles``: as :func:`crack_tf.evaluation.site_calibration.fit_point` (0 = plain re-pick).
    ``fit="last_layer"`` needs ``features`` [V, N, D] and ``head`` = (kernel, bias) instead of
    ``margins`` (they are the head's margins of the features); ``l2`` as ``calibrate --l2``.
    ``groups`` [N] (each tile's photo / source image): samples are drawn by :func:`draw_grouped` and
    scored on the other groups only; without, tiles are drawn independently (:func:`draw_sample`).
    ``fit="finetune"`` needs ``refit(sample indices)`` -> (every tile's margins [V, N] after
    fine-tuning on the sample, the sample's out-of-fold margins [V, n]: the point is fitted on those;
    ``site_finetune.SampleTooSmall`` = a fallback) (``tools/few_shot_finetune.py``, :mod:`site_finetune`).
    With a margin fit, ``refit`` (optional) decides from the sample which margins the draw uses (e.g.
    :func:`choose_by_sample_auc`); the point is then fitted as ``fit`` and ``prior_tiles`` say."""
    if fit == "finetune":
        if refit is None or margins is None:
            raise ValueError("fit='finetune' needs the tiles' margins and refit(sample) -> (margins after "
                             "fine-tuning, the sample's out-of-fold margins)")
    elif fit == "last_layer":
        if refit is not None:
            raise ValueError("refit is for fit='finetune' or a margin fit, not 'last_layer' (it re-fits the head)")
        if features is None or head is None:
            raise ValueError("fit='last_layer' needs the tiles' features and the head's (kernel, bias)")
        features = np.asarray(features, np.float32)

        def refit(picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m = hr.head_margins(features, *hr.refit_head(features[:, picked], labels[picked], *head, l2))
            return m, m[:, picked]  # the point on the sample's new margins, as calibrate --fit=last_layer fits it

        margins = hr.head_margins(features, *head)
    elif fit not in sc.MARGIN_FITS:
        raise ValueError(f"fit={fit!r}; choose one of {sc.FITS}")
    margins = np.atleast_2d(np.asarray(margins, np.float64))
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if margins.shape[1] != labels.size:
        raise ValueError(f"margins {margins.shape} and labels {labels.shape} differ in length")
    sc.check_sample(labels, min_examples=2)
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        if groups.size != labels.size:
            raise ValueError(f"groups {groups.shape} and labels {labels.shape} differ in length")
    base = dict(base_point or {"threshold": 0.5, "temperature": 1.0})
    rng = np.random.default_rng(seed)
    rows = []
    for n in ns:
        if n >= labels.size:
            continue  # nothing left to score
        if n == 0:
            results, fallbacks = [_metrics(margins, labels, base)], 0
        else:
            results, fallbacks, rests = [], 0, []
            for _ in range(draws):
                if groups is None:
                    picked = draw_sample(labels, n, rng)
                    rest = np.setdiff1d(np.arange(labels.size), picked)
                else:
                    try:
                        picked, rest = draw_grouped(labels, groups, n, rng)
                    except ValueError:
                        break  # too few groups for this n (every later draw would be, too)
                rests.append(rest.size)
                fitted, point = _fit_draw(margins, labels, picked, rule, fit, base, prior_tiles, refit)
                fallbacks += point is base
                results.append(_metrics(fitted[:, rest], labels[rest], point))
            if not results:
                continue
        rest_size = int(np.mean(rests)) if n and groups is not None else int(labels.size - n)
        row = {"n": int(n), "draws": len(results), "fallbacks": fallbacks, "rest": rest_size}
        for k in CURVE_METRICS:
            values = np.array([r[k] for r in results])
            row[f"{k}_mean"] = float(values.mean())
            row[f"{k}_std"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
        rows.append(row)
    if not rows:
        raise ValueError(f"every n of {list(ns)} is >= the {labels.size} target tiles")
    return rows


def curve_png(curves: dict[str, list[dict]], path: str | os.PathLike, metric: str = "accuracy",
              title: str = "") -> None:
    """One line per curve (label -> rows of :func:`few_shot_curve`): mean +- std of ``metric`` vs n."""
    from crack_tf.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4 if len(curves) <= 4 else 11.0, 4.2))
    for label, rows in curves.items():
        n = [r["n"] for r in rows]
        ax.errorbar(n, [r[f"{metric}_mean"] for r in rows], yerr=[r[f"{metric}_std"] for r in rows], marker="o",
                    capsize=3, label=label)
    ax.set_xlabel("labelled tiles of the new site (n; 0 = stored point)")
    ax.set_ylabel(f"{metric} on the rest of the site")
    ax.set_title(title or f"few-shot site calibration: {metric} (mean +- std over draws)")
    ax.grid(alpha=0.3)
    if len(curves) <= 4:
        ax.legend(fontsize=8)
    else:  # many curves: the legend beside the axes, where it hides no line
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
