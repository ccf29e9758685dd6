"""A finished run's per-tile margins (``margins.npz``) with its operating point, for the offline tools.

The trainer writes ``margins.npz`` (``crack_tf.training.finish.save_margins``) right after it picks the
final model's operating point, then ``run.json``. A run cut off in between (a GPU call that ran out of
time) still has everything needed: the point is recomputed from the val part of the margins with the
run's ``--threshold_rule`` (``config.json``), exactly as the trainer computed it, and marked
``"recomputed": True``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from crack_tf.evaluation import calibration, stats

KEYS = ("margins", "labels", "sources", "split")


def metrics_by_source(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray, threshold: float) -> dict:
    """{source: all metrics at ``threshold``} (float32 threshold, as the Keras metrics compare)."""
    t32 = float(np.float32(threshold))
    return {name: {k: float(v) for k, v in stats.all_metrics(probs[sources == name], labels[sources == name],
                                                             t32).items()}
            for name in dict.fromkeys(sources.tolist())}


def points_from_margins(parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], rule: str, tta: str) -> dict:
    """{mode: operating point} for "none" and ``tta`` from scored tiles: ``parts`` maps a margins.npz
    ``split`` ("val", "eval", "eval_adabn", "eval_adabn_w<w>") to its (margins [V, N], labels, sources).
    Each point is picked on val by ``rule`` (pooled, and per source where there are several); the
    ``eval`` tiles are scored at it as ``eval_sources_at_threshold_by_source``, and for ``tta``'s point
    plain AdaBN's as ``eval_sources_adabn_at_threshold_by_source`` and each blend's in
    ``eval_sources_adabn_by_target_weight`` {"0.5": {source: metrics}}. The plain point uses the first
    view (the tile itself). The trainer's stored point, and a cut-off run's recomputed one."""
    keys = {"eval": "eval_sources_at_threshold_by_source", "eval_adabn": "eval_sources_adabn_at_threshold_by_source"}
    points = {}
    margins, labels, sources = parts["val"]
    for mode in dict.fromkeys(["none", tta]):
        views = slice(None) if mode == tta else slice(0, 1)
        point = calibration.operating_point(margins[views], labels, rule, sources=sources)
        point["tta"] = mode
        if len(set(sources.tolist())) > 1:
            probs = calibration.calibrated_probability(margins[views], point["temperature"])
            point["val_at_threshold_by_source"] = metrics_by_source(probs, labels, sources, point["threshold"])
        for split, (m, y, src) in parts.items():
            if split == "val" or (split != "eval" and mode != tta):
                continue
            probs = calibration.calibrated_probability(m[views], point["temperature"])
            scored = metrics_by_source(probs, y, src, point["threshold"])
            if split in keys:
                point[keys[split]] = scored
            else:  # a blend: eval_adabn_w<weight>
                point.setdefault("eval_sources_adabn_by_target_weight", {})[split.removeprefix("eval_adabn_w")] = scored
        points[mode] = point
    return points


def read_json(path: str) -> dict | None:
    """The JSON object in ``path``, or None when the file is missing or unreadable (a run cut off)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_table(out: str, text: str, numbers, default=None) -> None:
    """An offline tool's result: the Markdown ``text`` at ``out`` and ``numbers`` as JSON at
    ``<out>.json`` (``default``: ``json.dump``'s, for values JSON lacks); makes the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(numbers, f, indent=1, default=default)


def read_run(folder: str) -> dict:
    """``{"name", "config", "point", "arrays", "recomputed"}`` of a run folder with ``margins.npz``.

    ``arrays``: ``margins`` float [V, N] (V test-time views), ``labels`` [N], ``sources`` [N] and
    ``split`` [N] (``val``; ``eval`` for the ``--eval_sources`` tiles) as str arrays."""
    path = os.path.join(folder, "margins.npz")
    if not os.path.isfile(path):
        raise ValueError(f"{folder}: no margins.npz (the trainer writes it; tools/site_margins.py makes one "
                         "for an older run)")
    with np.load(path) as z:
        missing = [k for k in KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path} lacks {missing}")
        arrays = {k: z[k] for k in KEYS}
        tta = str(z["tta"]) if "tta" in z.files else None
    arrays["margins"] = np.atleast_2d(arrays["margins"])
    arrays["sources"], arrays["split"] = arrays["sources"].astype(str), arrays["split"].astype(str)
    run_json = read_json(os.path.join(folder, "run.json")) or {}
    config = run_json.get("config") or read_json(os.path.join(folder, "config.json")) or {}
    point, recomputed = run_json.get("operating_point"), False
    if not point:
        val = arrays["split"] == "val"
        if not val.any():
            raise ValueError(f"{folder}: no run.json operating point and no val tiles in margins.npz to recompute it")
        split = arrays["split"]
        parts = {name: (arrays["margins"][:, split == name], arrays["labels"][split == name],
                        arrays["sources"][split == name]) for name in ["val", *dict.fromkeys(split[~val].tolist())]}
        mode = tta or config.get("tta", "none")
        point = points_from_margins(parts, config.get("threshold_rule", calibration.DEFAULT_RULE), mode)[mode]
        recomputed = True
    return {"name": os.path.basename(os.path.normpath(folder)), "config": config, "point": point,
            "arrays": arrays, "recomputed": recomputed}
