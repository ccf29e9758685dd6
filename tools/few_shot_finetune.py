"""Few-shot curve of ``calibrate --fit=finetune`` on leave-one-source-out runs (their models needed).

  python tools/few_shot_finetune.py --runs='runs/ablation_loso/*_no_*_s0' --out=runs/few_shot_finetune \\
      --starts=conv5_ --ns=0,10,25,50 --draws=5 --tta=none

For each run folder (``final.keras``, ``run.json``, ``margins.npz``; a GPU machine's grid, since the
models do not come back) the left-out source's val tiles are cut again at the model's input size by
the trainer's own code (their labels must equal the margins', else the data changed: the run is
skipped and named), and for each n and draw a sample of n tiles is drawn from whole photos
(``few_shot.draw_grouped``), the model's top (from each ``--starts`` layer on) is fine-tuned on it
(``crack_tf.evaluation.site_finetune``: BatchNorm frozen, balanced batches, random D4), temperature
and threshold are fitted on the sample's out-of-fold margins (5 fine-tunings on 4/5 of it, as
``calibrate --fit=finetune`` fits its point), and the other photos' tiles are scored by the
fine-tuning on the whole sample: six fine-tunings a draw.
Every draw starts from the run's own weights. Writes the files of ``tools/few_shot_curve.py``
(``few_shot.csv``, ``.md``, ``.png``, ``few_shot_by_source.{md,png}``; fit "finetune from <start>, lr <lr>"),
so the curve sits beside the threshold and last-layer ones; ``--lr=1e-5,1e-4`` draws a curve per
learning rate. The files are written after every curve, and a second call with the same ``--out``
and settings goes on with the curves still missing (a GPU call cut off by its time limit).
``--tta=none`` scores one view (8x less
work than D4; the n = 0 row is then the stored point applied to that view's margins).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from collections.abc import Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from few_shot_curve import read_run, write_outputs  # noqa: E402  (tools/ is not a package)
from tile_groups import check_labels, left_out_tile_sets, tile_photos  # noqa: E402

from crack_tf.evaluation import few_shot  # noqa: E402
from crack_tf.evaluation import site_calibration as sc  # noqa: E402
from crack_tf.evaluation import site_finetune as sf  # noqa: E402


def left_out_images(config: dict, data_root: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [N, S, S, 3] at the model's input size, labels [N], groups [N] "<source>/<photo>") of a
    run's left-out tiles, in its margins' order (``tools/tile_groups.py``: the trainer's ``eval_tiles``)."""
    tiles = left_out_tile_sets(config, data_root, config.get("image_size"))
    return np.concatenate([t.images for t in tiles]), np.concatenate([t.labels for t in tiles]), tile_photos(tiles)


def run_curves(folder: str, settings: list[tuple[str, str, float]], ns: list[int], draws: int, steps: int,
               tta: str | None, seed: int, data_root: str | None) -> Iterator[list[dict]]:
    """The rows of one run, one curve at a time: for each (fit label, start layer, learning rate) of
    ``settings`` (n = 0 included when asked). Nothing is loaded when ``settings`` is empty."""
    from crack_tf.predictor import load_model

    if not settings:
        return
    margins, labels, left_out, point = read_run(folder)
    with open(os.path.join(folder, "run.json"), encoding="utf-8") as f:
        config = json.load(f)["config"]
    images, tile_labels, groups = left_out_images(config, data_root)
    check_labels(folder, tile_labels, labels)
    predictor = load_model(os.path.join(folder, "final.keras"))
    model, views = predictor.model, tta or predictor.tta
    if views != point.get("tta", predictor.tta):
        margins = sf.array_margins(model, images, views)
    run = os.path.basename(os.path.normpath(folder))
    for label, start, lr in settings:
        tuner = sf.SiteFinetuner(model, start, lr, steps)
        rows = [{"run": run, "left_out": left_out, "fit": label, **row} for row in few_shot.few_shot_curve(
            margins, labels, ns, draws, sc.resolve_rule(None, point), seed, point, "finetune", groups=groups,
            refit=_refit(tuner, images, labels, views, seed))]
        tuner.restore()
        print(f"few_shot_finetune: {folder}, {label}: " + ", ".join(
            f"n={r['n']} {r['accuracy_mean']:.3f} (AUC {r['roc_auc_mean']:.3f})" for r in rows), flush=True)
        yield rows


def fit_settings(starts: list[str], lrs: list[float]) -> list[tuple[str, str, float]]:
    """(fit label, start layer, learning rate) of every curve."""
    return [(f"finetune from {start}, lr {lr:g}", start, lr) for start in starts for lr in lrs]


def read_rows(out: str, settings: dict) -> list[dict]:
    """The rows already in ``out`` (a call cut off, then called again) when they were drawn with the same
    ``settings``; ValueError when ``out`` holds a curve of other settings."""
    saved = os.path.join(out, "settings.json")
    if not os.path.isfile(saved):
        return []
    with open(saved, encoding="utf-8") as f:
        before = json.load(f)
    if before != settings:
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        raise ValueError(f"--out={out} holds a curve drawn with other settings ({', '.join(changed)}): "
                         "choose another --out, or delete it to draw again")
    table = os.path.join(out, "few_shot.csv")
    if not os.path.isfile(table):
        return []  # cut off before its first curve
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if key not in ("run", "left_out", "fit"):
                row[key] = int(value) if key in ("n", "draws", "fallbacks", "rest") else float(value)
    return rows


def _refit(tuner: sf.SiteFinetuner, images: np.ndarray, labels: np.ndarray, views: str, seed: int):
    """refit(sample indices) -> (every tile's margins after fine-tuning on the whole sample, the sample's
    out-of-fold margins from calibrate's cross-validation folds): calibrate --fit=finetune, a new seed a draw."""
    draws = iter(range(seed, seed + 10**9))

    def refit(picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        draw = next(draws)
        out_of_fold = sf.cross_fitted_margins(tuner, images[picked], labels[picked], views, sf.FOLDS, draw, draw)
        tuner.fit(images[picked], labels[picked], seed=draw)
        return sf.array_margins(tuner.model, images, views), out_of_fold

    return refit


def main_args(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="Glob of leave-one-source-out run folders (quote it).")
    parser.add_argument("--out", required=True, help="Output folder (called again, it goes on where it stopped).")
    parser.add_argument("--starts", default=sf.DEFAULT_START, help="Comma-separated first layers fine-tuned.")
    parser.add_argument("--ns", default="0,10,25,50", help="Sample sizes.")
    parser.add_argument("--draws", type=int, default=5, help="Random draws per sample size.")
    parser.add_argument("--steps", type=int, default=sf.DEFAULT_STEPS)
    parser.add_argument("--lr", default=str(sf.DEFAULT_LR), help="Learning rate(s), comma-separated: a curve each.")
    parser.add_argument("--tta", default=None, help="Test-time views (default: the run's).")
    parser.add_argument("--data_root", default=None, help="Replaces the runs' --data_root.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folders = sorted(d for d in glob.glob(args.runs)
                     if os.path.isfile(os.path.join(d, "final.keras")) and os.path.isfile(os.path.join(d, "margins.npz")))
    if not folders:
        raise ValueError(f"--runs={args.runs!r} matches no run folder with final.keras and margins.npz")
    ns = [int(n) for n in args.ns.split(",") if n]
    settings = fit_settings([s for s in args.starts.split(",") if s], [float(v) for v in args.lr.split(",") if v])
    drawn_with = {"ns": ns, "draws": args.draws, "steps": args.steps, "tta": args.tta, "seed": args.seed}
    rows = read_rows(args.out, drawn_with)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "settings.json"), "w", encoding="utf-8") as f:
        json.dump(drawn_with, f)
    for folder in folders:
        done = {r["fit"] for r in rows if r["run"] == os.path.basename(os.path.normpath(folder))}
        try:
            for curve in run_curves(folder, [s for s in settings if s[0] not in done], ns, args.draws, args.steps,
                                    args.tta, args.seed, args.data_root):
                rows += curve
                write_outputs(rows, args.out)  # after every curve: a call cut off keeps what ran
        except ValueError as err:
            print(f"few_shot_finetune: skipped {folder}: {err}", file=sys.stderr, flush=True)
    if not rows:
        raise ValueError("no curve: every run was skipped (see above)")
    return rows


if __name__ == "__main__":
    from crack_tf.cli import run_tool

    sys.exit(run_tool(main_args, lambda rows: f"few_shot_finetune: {len(rows)} rows from "
                      f"{len({r['run'] for r in rows})} runs"))
