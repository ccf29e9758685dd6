"""Assembles and writes the evaluation report: report.json, report.md, figures, predictions.csv."""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import numpy as np

from crack_tf.choices import CLASS_NAMES
from crack_tf.evaluation import plots, stats

METRIC_ORDER = ("recall", "missed_alarm_rate", "precision", "false_alarm_rate", "accuracy", "f1", "roc_auc", "pr_auc")
LABELS = {
    "recall": "Recall R",
    "missed_alarm_rate": "Missed-alarm rate MA = 1 - R",
    "precision": "Precision P",
    "false_alarm_rate": "False-alarm rate FA = 1 - P",
    "accuracy": "Accuracy",
    "f1": "F1",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC (average precision)",
}
FILES = {
    "json": "report.json",
    "markdown": "report.md",
    "confusion": "confusion.png",
    "pr_curve": "pr_curve.png",
    "worst": "worst_errors.png",
    "predictions": "predictions.csv",
}


def _clean(v: Any) -> Any:
    """JSON-safe: NaN / inf -> None, NumPy scalars -> Python."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def build_report(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    counts: dict[str, float],
    keras_rates: dict[str, float],
    n_resamples: int = 1000,
    seed: int = 0,
    pick: str | None = None,
    info: dict[str, Any] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """The report dict. ``counts`` / ``keras_rates`` come from the streamed crack_tf.metrics; the
    rates are reported from the float64 NumPy evaluation of the same formulas, checked against them."""
    # Scores are float32 model outputs; compare as the Keras metric (and torch) do, in float32.
    t32 = float(np.float32(threshold))
    point = stats.all_metrics(scores, labels, t32)
    for name, value in keras_rates.items():  # the Keras metrics and NumPy must agree
        if not np.isclose(value, point[name], atol=1e-5):
            raise RuntimeError(f"metric {name}: Keras {value} != NumPy {point[name]}; please report this bug")
    metrics = {name: point[name] for name in METRIC_ORDER}  # float64; same RATES formulas
    ci = stats.bootstrap_ci(scores, labels, t32, n_resamples=n_resamples, seed=seed) if n_resamples else {}
    report = {
        **(info or {}),
        "num_examples": int(len(labels)),
        "class_counts": {CLASS_NAMES[c]: int(np.sum(labels == c)) for c in (0, 1)},
        "threshold": threshold,
        "counts": {k: counts[k] for k in ("tp", "fp", "tn", "fn")},
        "confusion_matrix": [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]],
        "metrics": metrics,
        "ci95": {name: list(ci[name]) for name in METRIC_ORDER if name in ci},
        "bootstrap": {"resamples": n_resamples, "seed": seed, "method": "percentile, resample N with replacement"},
        "conventions": "crack = positive; predicted crack iff p(crack) > threshold; a ratio with a zero "
        "denominator is 0 and MA = 1 - R, FA = 1 - P; AUCs are null without both classes",
        "picked_threshold": stats.pick_threshold(scores, labels, pick, groups) if pick else None,
    }
    return _clean(report)


def source_names(names: list[str]) -> np.ndarray:
    """The source of each example name ``"<source>/<tile>"``."""
    return np.array([n.split("/", 1)[0] for n in names])


def by_source_metrics(scores: np.ndarray, labels: np.ndarray, names: list[str], threshold: float) -> dict:
    """Metrics of each source's examples (names ``"<source>/<tile>"``) at ``threshold``."""
    sources = source_names(names)
    t32 = float(np.float32(threshold))
    out = {}
    for name in dict.fromkeys(sources.tolist()):
        keep = sources == name
        m = stats.all_metrics(scores[keep], labels[keep], t32)
        out[name] = _clean({"num_examples": int(keep.sum()), "crack": int(labels[keep].sum()),
                            **{k: m[k] for k in METRIC_ORDER}})
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    c = report["counts"]
    lines = [
        f"# Evaluation: {os.path.basename(str(report.get('model', 'model')))} on {report.get('split', '?')}",
        "",
        f"- model: `{report.get('model')}`",
        f"- data: `{report.get('data')}` (split `{report.get('split')}`, {report['num_examples']} images: "
        f"{report['class_counts']['crack']} crack, {report['class_counts']['background']} background)",
        f"- image size {report.get('image_size')}, small_policy {report.get('small_policy')}, "
        f"threshold p(crack) > {report['threshold']:.4g} ({report.get('threshold_source', 'given')}), "
        f"temperature {report.get('temperature', 1.0):.3g}, tta {report.get('tta', 'none')}",
        "",
        "| metric | value | 95% CI (bootstrap) |",
        "|---|---|---|",
    ]
    for name in METRIC_ORDER:
        lo, hi = report["ci95"].get(name, (None, None))
        ci = "" if lo is None else f"[{lo:.4f}, {hi:.4f}]"
        lines.append(f"| {LABELS[name]} | {_fmt(report['metrics'][name])} | {ci} |")
    lines += [
        "",
        "| | predicted background | predicted crack |",
        "|---|---|---|",
        f"| **true background** | TN = {c['tn']:g} | FP = {c['fp']:g} |",
        f"| **true crack** | FN = {c['fn']:g} | TP = {c['tp']:g} |",
        "",
    ]
    if report.get("by_source"):
        lines += ["## Per source", "", "| source | images | crack | accuracy | precision | recall | F1 | ROC-AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in report["by_source"].items():
            lines.append(f"| {name} | {m['num_examples']} | {m['crack']} | " + " | ".join(
                _fmt(m[k]) for k in ("accuracy", "precision", "recall", "f1", "roc_auc")) + " |")
        lines.append("")
    pick = report.get("picked_threshold")
    if pick:
        lines += [
            f"## Threshold picked by `{pick['rule']}`: {pick['threshold']:.4f}",
            "",
            "Chosen on this split, so the rates below are optimistic: pick on val, apply on test.",
            "",
            "| " + " | ".join(LABELS[k] for k in METRIC_ORDER[:6]) + " |",
            "|" + "---|" * 6,
            "| " + " | ".join(_fmt(pick[k]) for k in METRIC_ORDER[:6]) + " |",
            "",
        ]
    lines += [f"Conventions: {report['conventions']}.", ""]
    lines += [f"![{k}]({FILES[k]})" for k in ("confusion", "pr_curve", "worst")]
    if report.get("skipped"):
        lines += ["", f"Skipped {len(report['skipped'])} unreadable file(s); see report.json."]
    return "\n".join(lines) + "\n"


def write_report(
    output_dir: str,
    report: dict[str, Any],
    scores: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    worst: dict[str, list[tuple[np.ndarray, str, float]]],
) -> dict[str, str]:
    """Writes every report file into ``output_dir``; returns {kind: path}."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {k: os.path.join(output_dir, f) for k, f in FILES.items()}
    plots.confusion_png(report["confusion_matrix"], paths["confusion"], f"threshold {report['threshold']:g}")
    sweep = stats.threshold_sweep(scores, labels)
    points = {f"t={report['threshold']:g}": (report["metrics"]["recall"], report["metrics"]["precision"])}
    if report.get("picked_threshold"):
        p = report["picked_threshold"]
        points[f"{p['rule']}: t={p['threshold']:.3f}"] = (p["recall"], p["precision"])
    ap = report["metrics"]["pr_auc"]
    plots.pr_curve_png(sweep["recall"][1:], sweep["precision"][1:], paths["pr_curve"], points,
                       f"precision-recall (AP {_fmt(ap)})")  # fmt: skip
    groups = [
        ("worst false positives (background, highest p(crack))", worst.get("false_positives", [])),
        ("worst false negatives (crack, lowest p(crack))", worst.get("false_negatives", [])),
    ]
    plots.error_grid_png([(t, [(img, f"{name}\np={p:.3f}") for img, name, p in items]) for t, items in groups],
                         paths["worst"])  # fmt: skip
    report = dict(report, files=FILES, worst={
        key: [{"file": name, "probability": float(p)} for _, name, p in items] for key, items in worst.items()
    })  # fmt: skip
    with open(paths["predictions"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "crack_probability"])
        w.writerows((n, int(y), f"{s:.6f}") for n, y, s in zip(names, labels, scores))
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(render_markdown(report))
    return paths
