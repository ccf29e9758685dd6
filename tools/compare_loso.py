"""Two leave-one-source-out rows side by side: per left-out source, per seed, with Welch's test.

  python tools/compare_loso.py \\
      --a=synthpre3000_robustaug_epochs48:docs/results/h100_2026-12-07c \\
      --b=synthpre_robustaug_epochs48:docs/results/h100_2026-12-06f,docs/results/h100_2026-12-06h \\
      --out=docs/results/h100_2026-12-07c/compare_synthpre3000_vs_recommended.md

Each side is ``<row>:<results folder>[,<results folder>...]``; a folder holds
``ablation_loso/<row>_no_<source>_s<seed>/`` (``margins.npz`` + ``run.json``, as the LOSO grids bring
them back). A run found in two folders is taken from the last one named (as ``tools/loso_report.sh``).

For every left-out source and every split of its tiles the runs scored (``eval``: as trained;
``eval_adabn``: after AdaBN; ``eval_adabn_w<w>``: after an AdaBN blend), from the margins at each run's
stored operating point (temperature, threshold: the point it would ship with; decided as the project
decides, ``p > float32(threshold)``):

* accuracy per seed, mean ± sample std, A - B, and Welch's two-sided p (unequal variances; ``-`` with
  fewer than two seeds on a side);
* the ROC AUC of the shipped probability (the mean over test-time views), per seed: the ranking, free
  of any threshold;
* the mean over the left-out sources per seed (seeds with every source only), with its own test;
* where both rows have ``<row>_all_s<seed>`` runs (the whole mix: the model a recipe ships), their val
  per source and pooled at the stored point: accuracy per seed with Welch's p, precision and recall
  (the targets: every source >= 95 with P, R >= 90).

Nothing is re-run: the margins are the models'. Seeds are few (2-3): a p-value here flags a
difference worth more seeds, it does not settle one.
"""

from __future__ import annotations

import glob
import os
import re
import statistics
import sys
import warnings

import numpy as np
from absl import app, flags
from scipy import stats as scipy_stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablate_report import _pct  # noqa: E402  (tools/ is not a package; the grids' "mean ± std" format)

from crack_tf.evaluation import run_margins, stats  # noqa: E402
from crack_tf.evaluation import site_calibration as sc  # noqa: E402

FLAGS = flags.FLAGS
MEAN = "mean of the left-out sources"


def define_flags() -> None:
    flags.DEFINE_string("a", None, "<row>:<results folder>[,...] of the candidate.", required=True)
    flags.DEFINE_string("b", None, "<row>:<results folder>[,...] it is compared with.", required=True)
    flags.DEFINE_string("out", None, "Write the Markdown table here (and <out>.json with every number).")


def parse_side(spec: str) -> tuple[str, list[str]]:
    """``"row:f1,f2"`` -> (row, [f1, f2]); ValueError naming what is missing."""
    row, sep, folders = spec.partition(":")
    if not sep or not row or not folders:
        raise ValueError(f"{spec!r}: expected <row>:<results folder>[,<results folder>...]")
    return row, [f for f in folders.split(",") if f]


def find_runs(row: str, folders: list[str], whole_mix: bool = False) -> dict[str, str]:
    """{run name: folder} of the row's left-out runs (``whole_mix``: its `all` runs) with margins; a
    later folder replaces an earlier one."""
    runs: dict[str, str] = {}
    pattern = re.compile(re.escape(row) + (r"_all_s\d+" if whole_mix else r"_no_[a-z0-9+]+_s\d+"))
    for folder in folders:
        if not os.path.isdir(os.path.join(folder, "ablation_loso")):
            raise ValueError(f"{folder}: no ablation_loso/ folder (a results folder of a LOSO grid)")
        for run in sorted(glob.glob(os.path.join(folder, "ablation_loso", f"{glob.escape(row)}_*_s*"))):
            name = os.path.basename(run)
            if pattern.fullmatch(name) and os.path.isfile(os.path.join(run, "margins.npz")):
                runs[name] = run
    return runs


def at_point(arrays: dict, point: dict, keep: np.ndarray) -> dict:
    """:func:`stats.all_metrics` of the ``keep`` tiles at the stored ``point`` (temperature, threshold),
    decided as the predictor decides."""
    return stats.all_metrics(sc.predictions(arrays["margins"][:, keep], point), arrays["labels"][keep].astype(int),
                             float(np.float32(point["threshold"])))


def read_with(folder: str, split: str, what: str = "") -> tuple[dict, np.ndarray]:
    """(:func:`run_margins.read_run`'s run, its ``split`` tiles' mask); ValueError when it has none."""
    run = run_margins.read_run(folder)
    tiles = run["arrays"]["split"] == split
    if not tiles.any():
        raise ValueError(f"{folder}: margins.npz has no split == {split!r} tiles{what}")
    return run, tiles


def score_run(folder: str) -> dict:
    """``{"seed", "left_out", "splits": {split: {"accuracy", "roc_auc", "tiles"}}}`` of one left-out run."""
    run, eval_tiles = read_with(folder, "eval", " (not a left-out run)")
    a, point = run["arrays"], run["point"]
    splits = {}
    for split in sorted(s for s in set(a["split"].tolist()) if s == "eval" or s.startswith("eval_adabn")):
        keep = a["split"] == split
        metrics = at_point(a, point, keep)
        splits[split] = {"accuracy": metrics["accuracy"], "roc_auc": float(metrics["roc_auc"]),
                         "tiles": int(keep.sum())}
    return {"seed": int(run["config"].get("seed", 0)),
            "left_out": "+".join(sorted(set(a["sources"][eval_tiles].tolist()))), "splits": splits}


def side_values(runs: dict[str, str]) -> dict[str, dict[str, dict[int, dict]]]:
    """{left-out source: {split: {seed: {"accuracy", "roc_auc"}}}}, plus the per-seed mean over sources."""
    out: dict[str, dict[str, dict[int, dict]]] = {}
    for folder in runs.values():
        scored = score_run(folder)
        for split, values in scored["splits"].items():
            out.setdefault(scored["left_out"], {}).setdefault(split, {})[scored["seed"]] = values
    sources = sorted(out)
    for split in sorted({s for by_split in out.values() for s in by_split}):
        seeds = set.intersection(*(set(out[src].get(split, {})) for src in sources)) if sources else set()
        if seeds:
            out.setdefault(MEAN, {})[split] = {seed: {k: float(np.mean([out[src][split][seed][k] for src in sources]))
                                                      for k in ("accuracy", "roc_auc")} for seed in sorted(seeds)}
    return out


POOLED = "pooled"


def score_val(folder: str) -> dict:
    """``{"seed", "sources": {source or "pooled": {"accuracy", "precision", "recall", "tiles"}}}``: a
    whole-mix run's val tiles at its stored point."""
    run, val = read_with(folder, "val")
    a, point = run["arrays"], run["point"]
    out = {}
    for source in [*sorted(set(a["sources"][val].tolist())), POOLED]:
        keep = val if source == POOLED else val & (a["sources"] == source)
        m = at_point(a, point, keep)
        out[source] = {k: m[k] for k in ("accuracy", "precision", "recall")} | {"tiles": int(keep.sum())}
    return {"seed": int(run["config"].get("seed", 0)), "sources": out}


def compare_val(a_runs: dict[str, str], b_runs: dict[str, str]) -> list[dict]:
    """Per val source both rows' whole-mix runs have (then pooled): accuracy, precision, recall per seed
    (percent, seeds in order), A - B in accuracy, Welch's p."""
    sides = {side: sorted((score_val(folder) for folder in runs.values()), key=lambda r: r["seed"])
             for side, runs in (("a", a_runs), ("b", b_runs))}
    common = set.intersection(*(set(r["sources"]) for runs in sides.values() for r in runs))
    rows = []
    for source in [*sorted(common - {POOLED}), POOLED]:
        values = {side: {k: [100 * r["sources"][source][k] for r in runs] for k in ("accuracy", "precision", "recall")}
                  for side, runs in sides.items()}
        rows.append({"source": source, "a": values["a"], "b": values["b"],
                     "seeds": {side: [r["seed"] for r in runs] for side, runs in sides.items()},
                     "difference": statistics.fmean(values["a"]["accuracy"]) - statistics.fmean(values["b"]["accuracy"]),
                     "welch_p": welch_p(values["a"]["accuracy"], values["b"]["accuracy"])})
    return rows


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Welch's two-sided p (unequal variances); None with fewer than two values on a side or no spread."""
    if len(a) < 2 or len(b) < 2 or (statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0):
        return None
    with warnings.catch_warnings():  # two near-equal seeds: scipy warns of precision loss, the p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare(a: dict, b: dict) -> list[dict]:
    """One row per (left-out source, split) both sides have: per-seed accuracy and AUC, means, A - B, p."""
    rows = []
    for source in [s for s in sorted(a) if s != MEAN] + ([MEAN] if MEAN in a else []):
        for split in sorted(set(a[source]) & set(b.get(source, {}))):
            per_seed = {side: [v for _, v in sorted(vals[source][split].items())] for side, vals in (("a", a), ("b", b))}
            acc = {side: [100 * v["accuracy"] for v in values] for side, values in per_seed.items()}
            auc = {side: [v["roc_auc"] for v in values] for side, values in per_seed.items()}
            rows.append({"left_out": source, "split": split, "accuracy": acc, "roc_auc": auc,
                         "seeds": {side: sorted(vals[source][split]) for side, vals in (("a", a), ("b", b))},
                         "difference": statistics.fmean(acc["a"]) - statistics.fmean(acc["b"]),
                         "welch_p": welch_p(acc["a"], acc["b"]), "auc_welch_p": welch_p(auc["a"], auc["b"])})
    return rows


def markdown(rows: list[dict], row_a: str, row_b: str) -> str:
    lines = [f"### `{row_a}` (A) against `{row_b}` (B), left out, at each run's stored point (percent)", "",
             "| left out | A accuracy (per seed) | B accuracy (per seed) | A - B | Welch p | "
             "ROC AUC A (per seed) | ROC AUC B (per seed) | AUC Welch p |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, auc_p = ("-" if r[k] is None else f"{r[k]:.3f}" for k in ("welch_p", "auc_welch_p"))
        per = {s: " / ".join(f"{v:.1f}" for v in r["accuracy"][s]) for s in ("a", "b")}
        auc = {s: " / ".join(f"{v:.3f}" for v in r["roc_auc"][s]) for s in ("a", "b")}
        label = r["left_out"] + ("" if r["split"] == "eval" else f", {r['split'].removeprefix('eval_')}")
        lines.append(f"| {label} | {_pct(r['accuracy']['a'])} ({per['a']}) | "
                     f"{_pct(r['accuracy']['b'])} ({per['b']}) | {r['difference']:+.2f} | {p} | {auc['a']} | {auc['b']} | {auc_p} |")
    lines += ["", "Seeds: A " + ", ".join(sorted({str(s) for r in rows for s in r["seeds"]["a"]})) + "; B "
              + ", ".join(sorted({str(s) for r in rows for s in r["seeds"]["b"]})) + ". `adabn`: after AdaBN on the "
              "left-out source's unlabelled crops; `adabn_w<w>`: its blend with the trained statistics. The mean row "
              "averages each seed's left-out sources (seeds with all of them)."]
    return "\n".join(lines) + "\n"


def markdown_val(rows: list[dict], row_a: str, row_b: str) -> str:
    lines = [f"### The whole mix (`all` fold): val at each run's stored point, `{row_a}` (A) against `{row_b}` "
             "(B), percent", "",
             "| val of | A accuracy (per seed) | B accuracy (per seed) | A - B | Welch p | A P / R | B P / R |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        per = {s: " / ".join(f"{v:.1f}" for v in r[s]["accuracy"]) for s in ("a", "b")}
        pr = {s: f"{_pct(r[s]['precision'])} / {_pct(r[s]['recall'])}" for s in ("a", "b")}
        p = "-" if r["welch_p"] is None else f"{r['welch_p']:.3f}"
        lines.append(f"| {r['source']} | {_pct(r['a']['accuracy'])} ({per['a']}) | {_pct(r['b']['accuracy'])} "
                     f"({per['b']}) | {r['difference']:+.2f} | {p} | {pr['a']} | {pr['b']} |")
    seeds = {s: ", ".join(str(k) for k in rows[0]["seeds"][s]) for s in ("a", "b")}
    return "\n".join([*lines, "", f"Seeds: A {seeds['a']}; B {seeds['b']}."]) + "\n"


def main(argv: list[str]) -> None:
    del argv
    sides = {}
    for key, spec in (("a", FLAGS.a), ("b", FLAGS.b)):
        try:
            row, folders = parse_side(spec)
            runs = find_runs(row, folders)
        except ValueError as e:
            raise SystemExit(f"compare_loso: --{key}: {e}") from None
        if not runs:
            raise SystemExit(f"compare_loso: no left-out run of {row!r} with margins.npz in {folders}")
        whole = find_runs(row, folders, whole_mix=True)
        print(f"compare_loso: {key.upper()} = {row}: {len(runs)} left-out runs, {len(whole)} `all` runs", flush=True)
        sides[key] = (row, side_values(runs), whole)
    (row_a, a, a_all), (row_b, b, b_all) = sides["a"], sides["b"]
    rows = compare(a, b)
    if not rows:
        raise SystemExit("compare_loso: the two rows share no left-out source")
    text = markdown(rows, row_a, row_b)
    val_rows = compare_val(a_all, b_all) if a_all and b_all else []
    if val_rows:
        text += "\n" + markdown_val(val_rows, row_a, row_b)
    print(text)
    if FLAGS.out:
        run_margins.write_table(FLAGS.out, text, {"left_out": rows, "all_val": val_rows})


if __name__ == "__main__":
    define_flags()
    app.run(main)
