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

from crack_tf.evaluation import calibration

KEYS = ("margins", "labels", "sources", "split")


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
        point = calibration.operating_point(arrays["margins"][:, val], arrays["labels"][val],
                                            config.get("threshold_rule", calibration.DEFAULT_RULE),
                                            sources=arrays["sources"][val])
        point["tta"] = tta or config.get("tta", "none")
        recomputed = True
    return {"name": os.path.basename(os.path.normpath(folder)), "config": config, "point": point,
            "arrays": arrays, "recomputed": recomputed}
