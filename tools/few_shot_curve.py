"""Few-shot site calibration curve of leave-one-source-out runs: a CSV, a markdown table, a plot.

  python tools/few_shot_curve.py --runs='runs/loso_*' --out=docs/results/few_shot \\
      --ns=0,10,25,50,100 --draws=20 --fit=threshold,temperature+threshold

Each run folder holds ``run.json`` (its ``operating_point``: temperature, threshold, rule, tta; a
run cut off before run.json: recomputed from the margins, ``crack_tf.evaluation.run_margins``)
and ``margins.npz``: ``margins`` [V, N] float32 (logit margins, V test-time views of the point's
tta), ``labels`` [N] int, ``sources`` [N] str and ``split`` [N] in {"val", "eval"}. The left-out
source is the ``split == "eval"`` part; on it, for each n, ``crack_tf.evaluation.few_shot``
calibrates on n random labelled tiles (``--draws`` times) and scores the rest. Writes
``few_shot.csv``, ``few_shot.md`` and ``few_shot.png`` (accuracy, mean +- std over the draws,
one line per run and fit) into ``--out``, and ``few_shot_by_source.{md,png}`` (per left-out source
and fit: the runs' means, mean +- std over the runs). ``--fit=last_layer`` also needs each run's
``features.npz`` (a run trained with ``--save_eval_features``); runs without it are skipped for
that fit and named. Where ``features.npz`` (or ``groups.npz``, ``tools/tile_groups.py``) gives each
tile's photo (source image), every fit of
that run draws its sample from whole photos and scores the other photos only
(``few_shot.draw_grouped``: a new site labels a few photos); ``rest`` is then the mean number of
tiles scored. ``--adabn``: the same margin fits on the left-out tiles' margins after AdaBN (runs
trained with ``--adabn_eval_crops`` keep them as ``split == "eval_adabn"``, a blend as ``--adabn_split``
``eval_adabn_w0.5``: what ``crack_tf.adapt``
then ``crack_tf.calibrate`` would do), and a policy a site can follow: AdaBN only where the labelled
sample's ROC AUC says it ranks better.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crack_tf.evaluation import few_shot, run_margins  # noqa: E402
from crack_tf.evaluation import head_refit as hr  # noqa: E402
from crack_tf.evaluation import site_calibration as sc  # noqa: E402

FIELDS = ["run", "left_out", "fit", "n", "draws", "fallbacks", "rest"] + [
    f"{m}_{s}" for m in few_shot.CURVE_METRICS for s in ("mean", "std")]


def read_left_out(folder: str, adabn_split: str = "eval_adabn"
                  ) -> tuple[np.ndarray, np.ndarray, str, dict, np.ndarray | None]:
    """(margins [V, N_eval], labels, left-out source name(s), stored point, the same tiles' margins after
    AdaBN or None) of one run folder; AdaBN's are the ``split == adabn_split`` part (a run trained with
    ``--adabn_eval_crops``: the same tiles in the same order, checked by their labels; a blend of
    ``--adabn_target_weights``: e.g. ``eval_adabn_w0.5``)."""
    run = run_margins.read_run(folder)
    arrays = run["arrays"]
    target, adapted = arrays["split"] == "eval", arrays["split"] == adabn_split
    if not target.any():
        raise ValueError(f"{folder}/margins.npz has no split == 'eval' entries (the left-out source)")
    labels = arrays["labels"][target]
    if adapted.any() and not np.array_equal(arrays["labels"][adapted], labels):
        raise ValueError(f"{folder}/margins.npz: its {adabn_split} tiles are not its eval tiles")
    return (arrays["margins"][:, target], labels, "+".join(sorted(set(arrays["sources"][target]))), run["point"],
            arrays["margins"][:, adapted] if adapted.any() else None)


def read_run(folder: str) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """(margins [V, N_eval], labels, left-out source name(s), stored point) of one run folder."""
    return read_left_out(folder)[:4]


def _left_out_npz(folder: str, name: str, labels: np.ndarray, keys: tuple[str, ...]) -> dict | None:
    """``keys`` of ``<folder>/<name>`` (None without the file; a key it lacks is None), after checking
    that its labels are the run's left-out margins' (the same tiles in the same order)."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with np.load(path) as data:  # an .npz reads only the arrays asked for
        if not np.array_equal(data["labels"].astype(np.int64), np.asarray(labels).astype(np.int64)):
            raise ValueError(f"{path}: its labels are not those of the run's left-out margins (another run's file?)")
        return {k: data[k] if k in data.files else None for k in keys}


def read_features(folder: str, labels: np.ndarray) -> dict | None:
    """``features.npz`` of a run (None without it): features [V, N, D] and head of the left-out tiles."""
    arrays = _left_out_npz(folder, "features.npz", labels, ("features", "kernel", "bias"))
    return arrays and {"features": arrays["features"], "head": (arrays["kernel"], arrays["bias"])}


def read_groups(folder: str, labels: np.ndarray) -> dict:
    """{"groups": each left-out tile's photo} from ``features.npz`` or ``groups.npz``
    (``tools/tile_groups.py``); {} when neither has them (or a source has no photo groups)."""
    for name in ("features.npz", "groups.npz"):
        arrays = _left_out_npz(folder, name, labels, ("groups",))
        if arrays and arrays["groups"] is not None and all(arrays["groups"]):
            return {"groups": arrays["groups"]}
    return {}


def adabn_variants(fits: list[str], priors: list[float], margins: np.ndarray, adapted: np.ndarray,
                   labels: np.ndarray, point: dict, by: float) -> list[tuple[str, str, float, np.ndarray, dict]]:
    """(label, fit, prior, margins, extra) of the AdaBN curves: every margin fit on the margins after
    AdaBN (the stored point, picked before adaptation, at n = 0), and on whichever of the two ranks
    each draw's sample better (``few_shot.choose_by_sample_auc``; n = 0: the model as it is)."""
    choose = few_shot.choose_by_sample_auc(margins, adapted, labels, point, by)
    out = []
    for fit in (f for f in fits if f in sc.MARGIN_FITS):
        for p in priors:
            label = f"{fit}, prior {p:g}" if p else fit
            out.append((f"AdaBN, {label}", fit, p, adapted, {}))
            out.append((f"AdaBN where the sample ranks better (by > {by:g}), {label}", fit, p, margins,
                        {"refit": choose}))
    return out


def curves(folders: list[str], ns: list[int], draws: int, fits: list[str], rule: str | None, seed: int,
           priors: list[float] = (0,), l2s: list[float] = (hr.DEFAULT_L2,), adabn: bool = False,
           adabn_by: float = 0.0, adabn_split: str = "eval_adabn") -> list[dict]:
    """Rows of every run x fit x prior (x l2 for ``last_layer``); ``fit`` reads "<fit>, prior <k>" for a
    prior of k > 0 tiles and "last_layer, l2 <l2>" for more than one ``l2``. ``adabn``: also the margin
    fits after AdaBN (:func:`adabn_variants`; the margins of ``adabn_split``) for the runs whose
    margins hold them."""
    rows = []
    for folder in folders:
        margins, labels, left_out, point, adapted = read_left_out(folder, adabn_split)
        feats = read_features(folder, labels) if "last_layer" in fits else None
        groups = read_groups(folder, labels)  # photos known: draws by photo, all fits alike
        variants = []  # (label, fit, prior, margins, few_shot_curve's extra arguments)
        if adabn and adapted is None:
            print(f"few_shot_curve: {folder} has no AdaBN margins ({adabn_split}; train with --adabn_eval_crops): "
                  "no AdaBN curve",
                  file=sys.stderr)
        elif adabn:
            variants += [(label, fit, prior, m, {**groups, **extra}) for label, fit, prior, m, extra
                         in adabn_variants(fits, priors, margins, adapted, labels, point, adabn_by)]
        for fit in fits:
            if fit == "last_layer" and feats is None:
                print(f"few_shot_curve: {folder} has no features.npz (train with --save_eval_features): "
                      "no last_layer curve", file=sys.stderr)
            elif fit in sc.MARGIN_FITS:
                variants += [(f"{fit}, prior {p:g}" if p else fit, fit, p, margins, groups) for p in priors]
            else:
                variants += [(f"{fit}, l2 {v:g}" if len(l2s) > 1 else fit, fit, 0, margins,
                              {"features": feats["features"], "head": feats["head"], "l2": v, **groups}) for v in l2s]
        name, resolved = os.path.basename(os.path.normpath(folder)), sc.resolve_rule(rule, point)
        for label, fit, prior, m, extra in variants:
            for row in few_shot.few_shot_curve(m, labels, ns, draws, resolved, seed, point, fit, prior, **extra):
                rows.append({"run": name, "left_out": left_out, "fit": label, **row})
    return rows


def write_outputs(rows: list[dict], out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "few_shot.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| run | left out | fit | n | accuracy | precision | recall | F1 | ROC AUC of the rest | draws (fallbacks) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in few_shot.CURVE_METRICS]
        lines.append(f"| {r['run']} | {r['left_out']} | {r['fit']} | {r['n']} | " + " | ".join(cells)
                     + f" | {r['draws']} ({r['fallbacks']}) |")
    with open(os.path.join(out, "few_shot.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    grouped: dict[str, list[dict]] = {}
    for r in rows:
        grouped.setdefault(f"{r['run']} ({r['left_out']}, {r['fit']})", []).append(r)
    few_shot.curve_png(grouped, os.path.join(out, "few_shot.png"))
    by_source = per_source(rows)
    few_shot.curve_png(by_source, os.path.join(out, "few_shot_by_source.png"),
                       title="few-shot site calibration: accuracy (mean +- std over runs)")
    lines = ["| left out, fit | runs | " + " | ".join(f"n = {r['n']}" for r in next(iter(by_source.values()))) + " |",
             "|---|---|" + "---|" * len(next(iter(by_source.values())))]
    for label, curve in by_source.items():
        lines.append(f"| {label} | {curve[0]['runs']} | "
                     + " | ".join(f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}" for r in curve) + " |")
    with open(os.path.join(out, "few_shot_by_source.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def per_source(rows: list[dict]) -> dict[str, list[dict]]:
    """{"<left out>, <fit>": one row per n}: each run's mean over draws, then the mean and sample std
    over the runs (seeds) of that left-out source and fit."""
    groups: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        groups.setdefault(f"{r['left_out']}, {r['fit']}", {}).setdefault(int(r["n"]), []).append(r["accuracy_mean"])
    out = {}
    for label, by_n in groups.items():
        out[label] = [{"n": n, "runs": len(v), "accuracy_mean": float(np.mean(v)),
                       "accuracy_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0} for n, v in sorted(by_n.items())]
    return out


def main_args(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="Glob of run folders (quote it).")
    parser.add_argument("--out", required=True, help="Output folder.")
    parser.add_argument("--ns", default=",".join(map(str, few_shot.DEFAULT_NS)), help="Sample sizes.")
    parser.add_argument("--draws", type=int, default=20, help="Random draws per sample size.")
    parser.add_argument("--fit", default="threshold", help=f"Comma-separated fits of {sc.FITS}.")
    parser.add_argument("--l2", default=f"{hr.DEFAULT_L2:g}",
                        help="--fit=last_layer: comma-separated pulls toward the old head (calibrate --l2).")
    parser.add_argument("--rule", default=None, help="Threshold rule (default: each run's stored rule, else f1).")
    parser.add_argument("--prior_tiles", default=f"0,{sc.DEFAULT_PRIOR_TILES}",
                        help="Comma-separated priors (tiles' worth of the stored threshold; 0 = plain re-pick).")
    parser.add_argument("--adabn", action="store_true",
                        help="Also each margin fit after AdaBN (the runs' eval_adabn margins) and where the "
                             "sample ranks the AdaBN margins better (ROC AUC larger by more than --adabn_by).")
    parser.add_argument("--adabn_by", type=float, default=0.0, help="--adabn: the sample's ROC AUC margin.")
    parser.add_argument("--adabn_split", default="eval_adabn",
                        help="--adabn: the margins.npz split after AdaBN (eval_adabn_w0.5: the blend at target weight "
                             "0.5 of a run trained with --adabn_target_weights=1,0.5).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folders = sorted(d for d in glob.glob(args.runs) if os.path.isdir(d))
    if not folders:
        raise ValueError(f"--runs={args.runs!r} matches no run folder")
    fits = [f for f in args.fit.split(",") if f]
    ns = [int(n) for n in args.ns.split(",") if n]
    priors = [float(k) for k in args.prior_tiles.split(",") if k]
    unknown = sorted(set(fits) - set(sc.FITS))
    if unknown:
        raise ValueError(f"--fit={','.join(unknown)}: choose from {', '.join(sc.FITS)}")
    rows = curves(folders, ns, args.draws, fits, args.rule, args.seed, priors,
                  [float(v) for v in args.l2.split(",") if v], args.adabn, args.adabn_by, args.adabn_split)
    if not rows:
        raise ValueError("no curve: every run lacked what its fits need (see above)")
    write_outputs(rows, args.out)
    return rows


if __name__ == "__main__":
    from crack_tf.cli import run_tool

    sys.exit(run_tool(main_args, lambda rows: f"few_shot_curve: {len(rows)} rows from {len({r['run'] for r in rows})} "
                      f"runs"))
