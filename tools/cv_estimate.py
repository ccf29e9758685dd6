"""One source's accuracy estimated by k-fold cross-validation over its photos (issue 23, point 1).

  python tools/cv_estimate.py --runs='docs/results/x/ablation_uav75_cv/fold*_s*' --source=uav75 \\
      --out=docs/results/x/uav75_cv_estimate.md

Each run of a CV grid (``configs/ablation_uav75_cv.cfg``: ``--val_split=cv<k>_<i>_val``) scored its
val fold at its own stored operating point (temperature, threshold; ``margins.npz``). Per seed, the
source's val tiles of all k folds are pooled -- every labelled photo is scored exactly once, by a
model that did not train on it -- and accuracy / precision / recall / F1 are counted over the pool
(as the project counts them: ``p > float32(threshold)``). The estimate is the mean ± sample std over
the seeds that have every one of the k folds (k read from the split names), with the 95% t interval;
seeds with folds missing are listed apart (their fold accuracies still appear in the per-fold table).
Nothing is re-run: the margins are the models'.

What it does not remove: each fold's operating point was picked on that fold's val (all sources'
val tiles, these included), as every shipped point is picked on val, so the estimate is optimistic by
that one choice; and the interval is over seeds (training noise), not over the photos (60 photos'
sampling error is larger).
"""

from __future__ import annotations

import glob
import os
import re
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablate_report import mean_std_ci  # noqa: E402  (tools/ is not a package)

from crack_tf.evaluation import run_margins, stats  # noqa: E402
from crack_tf.evaluation import site_calibration as sc  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("runs", None, "Glob of the CV grid's run folders (run.json / margins.npz).", required=True)
    flags.DEFINE_string("source", "uav75", "The source whose val tiles are pooled over the folds.")
    flags.DEFINE_string("out", None, "Write the Markdown table here (and <out>.json with every number).")


def fold_verdicts(folder: str, source: str) -> dict | None:
    """``{"seed", "fold", "labels", "predicted"}`` of ``source``'s val tiles in one run at its stored
    operating point; None for a run without margins (cut off before the trainer wrote them)."""
    if not os.path.isfile(os.path.join(folder, "margins.npz")):
        return None
    run = run_margins.read_run(folder)
    a, point = run["arrays"], run["point"]
    keep = (a["split"] == "val") & (a["sources"] == source)
    if not keep.any():
        raise ValueError(f"{folder}: no val tiles of source {source!r} (sources: {sorted(set(a['sources']))})")
    decided = sc.says_crack(sc.predictions(a["margins"][:, keep], point), point)
    fold = run["config"].get("val_split") or run["name"].split("_s")[0]
    return {"seed": int(run["config"].get("seed", 0)), "fold": str(fold), "labels": a["labels"][keep].astype(int),
            "predicted": decided.astype(int), "threshold": float(point["threshold"])}


def pooled_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 (fractions) of 0 / 1 decisions, counted over the pooled tiles."""
    values = stats.all_metrics(np.asarray(predicted, np.float64), labels, 0.5)
    return {k: float(values[k]) for k in ("accuracy", "precision", "recall", "f1")} | {"tiles": int(labels.size)}


def expected_folds(folds: list[str]) -> list[str]:
    """Every fold of the grid: ``cv<k>_0_val`` .. ``cv<k>_<k-1>_val`` when the split names say k (so a
    fold with no run yet still counts as missing), else the folds found."""
    ks = {m.group(1) for m in (re.fullmatch(r"cv(\d+)_\d+_val", f) for f in folds) if m}
    if len(ks) == 1:
        k = int(ks.pop())
        return [f"cv{k}_{i}_val" for i in range(k)]
    return sorted(set(folds))


def estimate(verdicts: list[dict]) -> dict:
    """Per-seed pooled metrics, which seeds are complete (each fold of the grid exactly once), and the estimate."""
    folds = expected_folds([v["fold"] for v in verdicts])
    by_seed: dict[int, list[dict]] = {}
    for v in verdicts:
        by_seed.setdefault(v["seed"], []).append(v)
    seeds = {}
    for seed, runs in sorted(by_seed.items()):
        pooled = pooled_metrics(np.concatenate([r["labels"] for r in runs]), np.concatenate([r["predicted"] for r in runs]))
        have = sorted(r["fold"] for r in runs)
        seeds[seed] = dict(pooled, folds=have, complete=have == folds)
    complete = [s for s, m in seeds.items() if m["complete"]]
    summary = {}
    for key in ("accuracy", "precision", "recall", "f1"):
        stat = mean_std_ci([100 * seeds[s][key] for s in complete])
        summary[key] = None if stat is None else {"mean": stat[0], "std": stat[1], "ci95_half": stat[2]}
    per_fold = {f: [100 * pooled_metrics(v["labels"], v["predicted"])["accuracy"] for v in verdicts if v["fold"] == f]
                for f in folds}
    return {"folds": folds, "seeds": seeds, "complete_seeds": complete, "estimate": summary, "per_fold": per_fold}


def markdown(result: dict, source: str) -> str:
    est = result["estimate"]["accuracy"]
    lines = [f"### {source}: {len(result['folds'])}-fold cross-validation estimate (percent)", ""]
    if est is None:
        lines.append("No seed has every fold yet: no estimate.")
    else:
        n = len(result["complete_seeds"])
        half = f" [{est['mean'] - est['ci95_half']:.1f}, {est['mean'] + est['ci95_half']:.1f}]" if n > 1 else ""
        sd = f" ± {est['std']:.1f}" if n > 1 else ""
        lines.append(f"**Accuracy {est['mean']:.1f}{sd}{half}** over seeds {result['complete_seeds']} "
                     "(each seed: every val tile of every fold, pooled, at its fold model's stored threshold).")
    lines += ["", "| seed | folds | tiles | accuracy | precision | recall | F1 |", "|---|---|---|---|---|---|---|"]
    for seed, m in result["seeds"].items():
        mark = "" if m["complete"] else " (incomplete: not in the estimate)"
        lines.append(f"| {seed}{mark} | {len(m['folds'])} | {m['tiles']} | {100 * m['accuracy']:.1f} | "
                     f"{100 * m['precision']:.1f} | {100 * m['recall']:.1f} | {100 * m['f1']:.1f} |")
    lines += ["", "| fold | runs | accuracy per run |", "|---|---|---|"]
    for fold, accs in result["per_fold"].items():
        lines.append(f"| {fold} | {len(accs)} | {' / '.join(f'{a:.1f}' for a in accs)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    folders = sorted(glob.glob(FLAGS.runs))
    verdicts = [v for v in (fold_verdicts(f, FLAGS.source) for f in folders) if v is not None]
    if not verdicts:
        raise SystemExit(f"cv_estimate: no run with margins.npz matches {FLAGS.runs!r}")
    skipped = len(folders) - len(verdicts)
    result = estimate(verdicts)
    text = markdown(result, FLAGS.source)
    print(text + (f"\n({skipped} folder(s) without margins.npz skipped)" if skipped else ""))
    if FLAGS.out:
        run_margins.write_table(FLAGS.out, text, result, default=str)


if __name__ == "__main__":
    define_flags()
    app.run(main)
