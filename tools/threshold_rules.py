"""Which threshold rule carries over to a source the model never saw: scored by leave-one-source-out.

  python tools/threshold_rules.py --runs='runs/ablation_loso/pretrained_*' --out=docs/results/x/rules.md

For every finished run with a ``margins.npz`` (written by the trainer): the temperature is re-fitted
on the run's val tiles (as the trainer does), each rule picks its threshold on them, and

* ``no_<source>`` runs (``split == "eval"`` tiles = the left-out source): the left-out source's
  accuracy / P / R at that threshold: what the rule would have shipped to a new site;
* every run: each val source's accuracy at that threshold (in-sample: the rule saw these tiles).

Mean ± sample std over seeds per (rule, left-out source); the rules are ranked by the mean over
left-out sources (per seed, then over seeds). Nothing is re-run: the margins are the model's.
"""

from __future__ import annotations

import glob
import os
import statistics
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from crack_tf.evaluation import calibration, run_margins, stats  # noqa: E402

RULES = ("f1", "mean_source_accuracy", "min_source_accuracy", "mean_source_balanced_accuracy",
         "min_source_balanced_accuracy", "mean_source_f1", "min_source_f1")
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("runs", None, "Glob of run folders (each with run.json and margins.npz).", required=True)
    flags.DEFINE_list("rules", list(RULES), "Threshold rules to compare.")
    flags.DEFINE_string("out", None, "Write the Markdown table here (and <out>.json with every number).")


def load_run(folder: str) -> dict | None:
    """Seed, fold and margins of a run folder (None without margins.npz)."""
    if not os.path.isfile(os.path.join(folder, "margins.npz")):
        return None
    run = run_margins.read_run(folder)
    left_out = sorted(set(run["arrays"]["sources"][run["arrays"]["split"] == "eval"].tolist()))
    return {"name": run["name"], "seed": int(run["config"].get("seed", 0)),
            "fold": "no_" + "+".join(left_out) if left_out else "all", "arrays": run["arrays"]}


def score_rules(arrays: dict, rules: list[str]) -> dict[str, dict]:
    """{rule: {"threshold", "val": {source: acc}, "eval": {source: {accuracy, precision, recall}}}}."""
    margins, labels, sources, split = arrays["margins"], arrays["labels"], arrays["sources"], arrays["split"]
    val = split == "val"
    temperature = calibration.fit_temperature(margins[:, val], labels[val])
    probs = calibration.calibrated_probability(margins, temperature)
    out = {}
    for rule in rules:
        t = stats.pick_threshold(probs[val], labels[val], rule, groups=sources[val])["threshold"]
        entry = {"threshold": t, "temperature": temperature, "val": {}, "eval": {}}
        for part, keep in (("val", val), ("eval", split == "eval")):
            for src in dict.fromkeys(sources[keep].tolist()):
                m = stats.all_metrics(probs[keep & (sources == src)], labels[keep & (sources == src)], t)
                entry[part][src] = {k: float(m[k]) for k in ("accuracy", "precision", "recall")}
        out[rule] = entry
    return out


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(runs: list[dict], rules: list[str]) -> tuple[str, dict]:
    """Markdown ranking of the rules by leave-one-source-out accuracy, and the numbers behind it."""
    scored = [(r, score_rules(r["arrays"], rules)) for r in runs]
    left_out = sorted({s for r, _ in scored for s in r["arrays"]["sources"][r["arrays"]["split"] == "eval"].tolist()})
    val_sources = list(dict.fromkeys(s for r, _ in scored if r["fold"] == "all" for s in r["arrays"]["sources"].tolist()))
    rows, numbers = [], {}
    for rule in rules:
        cells, per_seed = {}, {}
        for src in left_out:
            accs = []
            for r, sc in scored:
                if src in sc[rule]["eval"]:
                    accs.append(100 * sc[rule]["eval"][src]["accuracy"])
                    per_seed.setdefault(r["seed"], []).append(accs[-1])
            cells[src] = accs
        complete = [statistics.fmean(v) for v in per_seed.values() if len(v) == len(left_out)]
        full = {src: [100 * sc[rule]["val"][src]["accuracy"] for r, sc in scored if r["fold"] == "all"
                      and src in sc[rule]["val"]] for src in val_sources}
        thresholds = [sc[rule]["threshold"] for _, sc in scored]
        numbers[rule] = {"left_out": cells, "mean_over_left_out_per_seed": complete, "all_fold_val": full,
                         "thresholds": thresholds}
        rows.append((statistics.fmean(complete) if complete else -1, rule, cells, complete, full, thresholds))
    rows.sort(key=lambda row: -row[0])
    head = (["rule", "mean left-out acc"] + [f"left out {s}" for s in left_out]
            + [f"`all` val {s}" for s in val_sources] + ["thresholds"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, rule, cells, complete, full, thresholds in rows:
        lines.append("| " + " | ".join([f"`{rule}`", _ms(complete)] + [_ms(cells[s]) for s in left_out]
                                       + [_ms(full[s]) for s in val_sources]
                                       + [f"{min(thresholds):.2f}-{max(thresholds):.2f}"]) + " |")
    return "\n".join(lines) + "\n", numbers


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for rule in FLAGS.rules:
        stats.check_rule(rule)
    runs = [r for r in (load_run(f) for f in sorted(glob.glob(FLAGS.runs)) if os.path.isdir(f)) if r]
    if not runs:
        raise app.UsageError(f"--runs={FLAGS.runs}: no run folder with margins.npz")
    md, numbers = table(runs, FLAGS.rules)
    print(f"{len(runs)} runs: " + ", ".join(r["name"] for r in runs))
    print(md)
    if FLAGS.out:
        run_margins.write_table(FLAGS.out, md, numbers)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
