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
(``few_shot.csv``, ``.md``, ``.png``, ``few_shot_by_source.{md,png}``; fit "finetune from <start>"),
so the curve sits beside the threshold and last-layer ones. ``--tta=none`` scores one view (8x less
work than D4; the n = 0 row is then the stored point applied to that view's margins).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

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


def run_curves(folder: str, starts: list[str], ns: list[int], draws: int, steps: int, lr: float, tta: str | None,
               seed: int, data_root: str | None) -> list[dict]:
    """The rows of one run: one curve per start layer (n = 0 included when asked)."""
    from crack_tf.predictor import load_model

    margins, labels, left_out, point = read_run(folder)
    with open(os.path.join(folder, "run.json"), encoding="utf-8") as f:
        config = json.load(f)["config"]
    images, tile_labels, groups = left_out_images(config, data_root)
    check_labels(folder, tile_labels, labels)
    predictor = load_model(os.path.join(folder, "final.keras"))
    model, views = predictor.model, tta or predictor.tta
    if views != point.get("tta", predictor.tta):
        margins = sf.array_margins(model, images, views)
    rows = []
    for start in starts:
        tuner = sf.SiteFinetuner(model, start, lr, steps)
        for row in few_shot.few_shot_curve(margins, labels, ns, draws, sc.resolve_rule(None, point), seed, point,
                                           "finetune", groups=groups,
                                           refit=_refit(tuner, images, labels, views, seed)):
            rows.append({"run": os.path.basename(os.path.normpath(folder)), "left_out": left_out,
                         "fit": f"finetune from {start}", **row})
        tuner.restore()
        print(f"few_shot_finetune: {folder} from {start}: " + ", ".join(
            f"n={r['n']} {r['accuracy_mean']:.3f}" for r in rows if r["fit"] == f"finetune from {start}"), flush=True)
    return rows


def _refit(tuner: sf.SiteFinetuner, images: np.ndarray, labels: np.ndarray, views: str, seed: int):
    """refit(sample indices) -> (every tile's margins after fine-tuning on the whole sample, the sample's
    out-of-fold margins from calibrate's cross-validation folds): calibrate --fit=finetune, a new seed a draw."""
    draws = iter(range(seed, seed + 10**9))

    def refit(picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        draw = next(draws)
        out_of_fold, _ = sf.cross_fitted_margins(tuner, images[picked], labels[picked], views, sf.FOLDS, draw, draw)
        tuner.fit(images[picked], labels[picked], seed=draw)
        return sf.array_margins(tuner.model, images, views), out_of_fold

    return refit


def main_args(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="Glob of leave-one-source-out run folders (quote it).")
    parser.add_argument("--out", required=True, help="Output folder.")
    parser.add_argument("--starts", default=sf.DEFAULT_START, help="Comma-separated first layers fine-tuned.")
    parser.add_argument("--ns", default="0,10,25,50", help="Sample sizes.")
    parser.add_argument("--draws", type=int, default=5, help="Random draws per sample size.")
    parser.add_argument("--steps", type=int, default=sf.DEFAULT_STEPS)
    parser.add_argument("--lr", type=float, default=sf.DEFAULT_LR)
    parser.add_argument("--tta", default=None, help="Test-time views (default: the run's).")
    parser.add_argument("--data_root", default=None, help="Replaces the runs' --data_root.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folders = sorted(d for d in glob.glob(args.runs)
                     if os.path.isfile(os.path.join(d, "final.keras")) and os.path.isfile(os.path.join(d, "margins.npz")))
    if not folders:
        raise ValueError(f"--runs={args.runs!r} matches no run folder with final.keras and margins.npz")
    starts = [s for s in args.starts.split(",") if s]
    ns = [int(n) for n in args.ns.split(",") if n]
    rows = []
    for folder in folders:
        try:
            rows += run_curves(folder, starts, ns, args.draws, args.steps, args.lr, args.tta, args.seed, args.data_root)
        except ValueError as err:
            print(f"few_shot_finetune: skipped {folder}: {err}", file=sys.stderr, flush=True)
        if rows:  # after every run: a call cut off keeps what ran
            write_outputs(rows, args.out)
    if not rows:
        raise ValueError("no curve: every run was skipped (see above)")
    return rows


if __name__ == "__main__":
    from crack_tf.cli import run_tool

    sys.exit(run_tool(main_args, lambda rows: f"few_shot_finetune: {len(rows)} rows from "
                      f"{len({r['run'] for r in rows})} runs"))
