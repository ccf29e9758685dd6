"""Results of an ablation grid: results.csv and the paper-shaped results.md (tools/ablate.py).

Every table cell is over the seeds of a row: mean ± sample std, and for the val accuracy also
a 95% confidence interval of the mean (Student t, n - 1 degrees of freedom). Rows come from each
run's ``run.json``: val metrics at the training threshold (0.5), the operating point stored
with the model (threshold picked on val by ``--threshold_rule``: metrics there, pooled and per
source) and, with ``--tta``, the test-time-augmented operating point. Leave-one-source-out grids
(``ablate.py --loso``) get one line per (row, fold) and a table of each left-out source scored at
the threshold its fold's model stores, with the mean over left-out sources per seed.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from crack_tf.evaluation import run_margins  # noqa: E402
from crack_tf.evaluation.run_margins import read_json  # noqa: E402  (re-exported for tools/ablate.py)

#: The paper's accuracies in percent (train, test); shared/PAPER.md tables 1-3.
PAPER: dict[str, dict[str, tuple[float, float]]] = {
    "table1": {"resnet50": (84.93, 73.78), "resnet50_aspp": (85.83, 81.86)},
    "table2": {
        "resnet50": (99.79, 93.65),
        "conv1_x4": (98.41, 95.80), "conv1_x8": (98.93, 93.16), "conv1_x32": (98.50, 92.66),
        "layer1_x4": (99.03, 96.70), "layer1_x8": (98.72, 92.75), "layer1_x16": (98.19, 91.76),
        "layer2_x8": (98.99, 91.76), "layer2_x16": (98.95, 93.65),
        "layer3_x4": (99.81, 91.92), "layer3_x8": (99.69, 89.12),
        "layer4_x8": (99.81, 87.96), "layer4_x16": (99.81, 88.29),
    },
    "table3": {"rates_2_4_8": (float("nan"), 96.70), "rates_2_4_6": (float("nan"), 94.31),
               "rates_3_6_9": (float("nan"), 94.64)},
    "ours": {},  # beyond the paper: no published numbers
}
#: Headline precision / false-alarm rate of the paper's best model (percent).
PAPER_HEADLINE = {"precision": 96.69, "false_alarm_rate": 3.31}

METRICS = ("accuracy", "precision", "recall", "f1", "missed_alarm_rate", "false_alarm_rate", "loss")
OPTION_KEYS = ("model", "insert_after", "depth_multiplier", "rates", "fusion", "image_size", "weights", "epochs")
CSV_FIELDS = (["table", "row", "fold", "seed", "run"] + list(OPTION_KEYS)
              + [f"val_{m}" for m in METRICS] + [f"train_{m}" for m in METRICS]
              + ["best_epoch", "best_value", "wall_seconds", "images_per_second", "backend"])
AT_THRESHOLD = ("accuracy", "precision", "recall", "f1")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def norm(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _row_dict(run, rj: dict) -> dict:
    """One CSV row of a finished run (``run``: an ablate.Run)."""
    cfg = rj.get("config", {})
    m = rj.get("metrics", {})
    row = {"table": run.table, "row": run.row, "fold": run.fold, "seed": run.seed, "run": run.name,
           "group": f"{run.row} [{run.fold}]" if run.fold else run.row}
    row.update({k: norm(cfg.get(k, "")) for k in OPTION_KEYS})
    for split in ("val", "train"):
        for k in METRICS:
            row[f"{split}_{k}"] = m.get(split, {}).get(k, "")
    for source, sm in (m.get("val_by_source") or {}).items():
        row.update({f"val_{source}_{k}": sm.get(k, "") for k in AT_THRESHOLD})
    point = rj.get("operating_point") or {}
    if point:
        row.update(threshold=point["threshold"], temperature=point["temperature"], ece_before=point["ece_before"],
                   ece_after=point["ece_after"])
        row.update({f"thr_{k}": point["val_at_threshold"][k] for k in AT_THRESHOLD})
        for source, sm in (point.get("val_at_threshold_by_source") or {}).items():
            row.update({f"thr_{source}_{k}": sm[k] for k in AT_THRESHOLD})
        for key, prefix in (("eval_sources_at_threshold_by_source", "thr_eval"),
                            ("eval_sources_adabn_at_threshold_by_source", "thr_adabn")):
            for source, sm in (point.get(key) or {}).items():
                row.update({f"{prefix}_{source}_{k}": sm[k] for k in AT_THRESHOLD})
        for weight, by_source in (point.get("eval_sources_adabn_by_target_weight") or {}).items():
            for source, sm in by_source.items():
                row.update({f"thr_adabn_w{weight}_{source}_{k}": sm[k] for k in AT_THRESHOLD})
    for source, sm in (m.get("eval_sources_by_source") or {}).items():
        row.update({f"eval_{source}_{k}": sm.get(k, "") for k in AT_THRESHOLD})
    for mode, tta_point in (rj.get("operating_points") or {}).items():
        if mode != (point.get("tta") or "none"):
            row.update({f"{mode}_thr_{k}": tta_point["val_at_threshold"][k] for k in AT_THRESHOLD})
    best = rj.get("best") or {}
    row.update(best_epoch=best.get("epoch", ""), best_value=best.get("value", ""),
               wall_seconds=rj.get("wall_seconds", ""), images_per_second=rj.get("throughput_images_per_second", ""),
               backend=rj.get("runtime", {}).get("backend", rj.get("versions", {}).get("backend", "")))
    return row


def collect(runs) -> list[dict]:
    """One dict per run that has a run.json (in grid order), or that was cut off after its final
    model's operating point (margins.npz and config.json, no run.json): its point recomputed from the
    margins as the trainer picked it (``cut_off``: true; no metrics at 0.5, no wall seconds)."""
    rows = []
    for run in runs:
        rj = read_json(os.path.join(run.model_dir, "run.json"))
        if rj is None and all(os.path.isfile(os.path.join(run.model_dir, f)) for f in ("margins.npz", "config.json")):
            cut = run_margins.read_run(run.model_dir)
            rj = {"config": cut["config"], "operating_point": cut["point"], "cut_off": True}
        if rj is not None:
            rows.append({**_row_dict(run, rj), **({"cut_off": "true"} if rj.get("cut_off") else {})})
    return rows


def _values(rows: list[dict], key: str) -> list[float]:
    return [100 * float(r[key]) for r in rows if r.get(key, "") != ""]


def mean_std_ci(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, sample std, half-width of the 95% t confidence interval of the mean); None if empty."""
    if not values:
        return None
    if len(values) == 1:
        return values[0], float("nan"), float("nan")
    n = len(values)
    sd = statistics.stdev(values)
    return statistics.fmean(values), sd, T_975.get(n - 1, 1.96) * sd / math.sqrt(n)


def _pct(values: list[float], ci: bool = False) -> str:
    stat = mean_std_ci(values)
    if stat is None:
        return "-"
    mean, sd, half = stat
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {sd:.2f}" + (f" [{mean - half:.1f}, {mean + half:.1f}]" if ci else "")


def _ci(values: list[float]) -> str:
    stat = mean_std_ci(values)
    if stat is None or len(values) < 2:
        return "-"
    return f"[{stat[0] - stat[2]:.1f}, {stat[0] + stat[2]:.1f}]"


def _paper(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def options_text(r: dict) -> str:
    if r["model"] == "resnet50_aspp":
        text = f"aspp@{r['insert_after']} x{r['depth_multiplier']} rates {r['rates']} {r['fusion']}"
    else:
        text = r["model"]
    return text + (" +w" if r.get("weights") else "")


def _sources(results: list[dict]) -> list[str]:
    return list(dict.fromkeys(k[4:-len("_accuracy")] for r in results for k in r
                              if k.startswith("thr_") and k.endswith("_accuracy") and k != "thr_accuracy"
                              and not k.startswith(("thr_eval_", "thr_adabn_"))))


def markdown(table: str, results: list[dict], row_order: list[str]) -> str:
    """Paper-shaped Markdown: one line per grid row, mean ± std over seeds (percent); then, for
    runs with a stored operating point, the val metrics at it (pooled and per source)."""
    paper = PAPER.get(table, {})
    lines = [f"## {table}", "",
             "Val/train accuracy, P, R, F1, MA, FA (of the final model, on val, at threshold 0.5) in percent, mean "
             "± sample std over n seeds, and the 95% CI of the mean val accuracy (Student t); best ep = epoch(s) of the best val "
             "accuracy; paper = its train / test accuracy (different data: the paper's test set is not available).",
             "", "| row | options | n | val acc | train acc | P | R | F1 | MA | FA | val acc 95% CI | best ep | s/run | "
             "paper train | paper test |", "|" + "---|" * 15]
    for name in row_order:
        rs = [r for r in results if r["group"] == name]
        p_train, p_test = paper.get(name, (None, None))
        if not rs:
            lines.append(f"| {name} | (not run) | 0 |" + " - |" * 10 + f" {_paper(p_train)} | {_paper(p_test)} |")
            continue
        cells = [_pct(_values(rs, "val_accuracy")), _pct(_values(rs, "train_accuracy"))]
        cells += [_pct(_values(rs, f"val_{k}")) for k in
                  ("precision", "recall", "f1", "missed_alarm_rate", "false_alarm_rate")]
        cells.append(_ci(_values(rs, "val_accuracy")))
        epochs = sorted({str(r["best_epoch"]) for r in rs})
        secs = [float(r["wall_seconds"]) for r in rs if r["wall_seconds"] != ""]
        cut = sum(r.get("cut_off") == "true" for r in rs)
        lines.append(f"| {name} | {options_text(rs[0])}{f' ({cut} cut off: point only)' if cut else ''} | {len(rs)} | "
                     + " | ".join(cells)
                     + f" | {','.join(epochs)} | {f'{statistics.fmean(secs):.0f}' if secs else '-'} | "
                     f"{_paper(p_train)} | {_paper(p_test)} |")
    lines += ["", f"Paper headline (best model): P {PAPER_HEADLINE['precision']}, FA "
              f"{PAPER_HEADLINE['false_alarm_rate']}.", ""]
    with_point = [r for r in results if r.get("thr_accuracy", "") != ""]
    if with_point:
        sources = _sources(with_point)
        tta_modes = sorted({k.split("_thr_")[0] for r in with_point for k in r if "_thr_accuracy" in k
                            and not k.startswith("thr_")})
        head = ["row", "n", "threshold", "acc", "P", "R", "F1"] + [f"{s} acc" for s in sources]
        head += [f"{s} P / R" for s in sources] + [f"{m} acc" for m in tta_modes] + ["ECE before -> after"]
        lines += ["### At the stored operating point (threshold picked on val; val metrics there, percent)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in row_order:
            rs = [r for r in with_point if r["group"] == name]
            if not rs:
                continue
            thr = [float(r["threshold"]) for r in rs]
            cells = [name, str(len(rs)), f"{statistics.fmean(thr):.3f} ({min(thr):.2f}-{max(thr):.2f})",
                     _pct(_values(rs, "thr_accuracy"), ci=True)]
            cells += [_pct(_values(rs, f"thr_{k}")) for k in ("precision", "recall", "f1")]
            cells += [_pct(_values(rs, f"thr_{s}_accuracy"), ci=True) for s in sources]
            cells += [f"{_pct(_values(rs, f'thr_{s}_precision'))} / {_pct(_values(rs, f'thr_{s}_recall'))}"
                      for s in sources]
            cells += [_pct(_values(rs, f"{m}_thr_accuracy"), ci=True) for m in tta_modes]
            ece = [(float(r["ece_before"]), float(r["ece_after"])) for r in rs]
            cells.append(f"{statistics.fmean(e[0] for e in ece):.3f} -> {statistics.fmean(e[1] for e in ece):.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += loso_markdown(results)
    return "\n".join(lines)


def loso_markdown(results: list[dict]) -> list[str]:
    """The leave-one-source-out table: each left-out source's accuracy (P / R) at the threshold its
    fold's model stores (picked on the other sources' val), at 0.5, and the fold's own pooled val;
    per row the mean over left-out sources (per seed, then mean ± std over seeds) beside the ``all``
    fold's per-source val at its stored threshold."""
    folded = [r for r in results if r.get("fold", "").startswith("no_")]
    if not folded:
        return []
    lines = ["### Leave one source out (percent, mean ± std over seeds)", "",
             "Each `no_<source>` fold trains on the other sources, picks its operating point on their val, and "
             "scores the left-out source's val tiles at that point (the threshold it would ship with) and at 0.5. "
             "AdaBN (`--adabn_eval_crops`): the same tiles after the BatchNorm statistics were re-estimated on "
             "unlabelled crops of the left-out source's train photos (at target weight w < 1, "
             "`--adabn_target_weights`: (1 - w) x the trained statistics + w x the target's). `all`: the whole "
             "mix's per-source val at its own stored threshold.", "",
             "| row | left out | n | threshold | left-out acc | left-out P / R | left-out acc at 0.5 | "
             "left-out acc after AdaBN | after AdaBN at w < 1 | val acc of the trained sources |", "|" + "---|" * 10]
    summary = []
    for row in dict.fromkeys(r["row"] for r in folded):
        rs = [r for r in folded if r["row"] == row]
        per_seed: dict[int, list[float]] = {}
        for fold in dict.fromkeys(r["fold"] for r in rs):
            fr = [r for r in rs if r["fold"] == fold and r.get(f"thr_eval_{fold[3:]}_accuracy", "") != ""]
            if not fr:
                continue
            src = fold[3:]
            thr = [float(r["threshold"]) for r in fr]
            lines.append(f"| {row} | {src} | {len(fr)} | {statistics.fmean(thr):.3f} | "
                         f"{_pct(_values(fr, f'thr_eval_{src}_accuracy'), ci=True)} | "
                         f"{_pct(_values(fr, f'thr_eval_{src}_precision'))} / {_pct(_values(fr, f'thr_eval_{src}_recall'))} | "
                         f"{_pct(_values(fr, f'eval_{src}_accuracy'))} | {_pct(_values(fr, f'thr_adabn_{src}_accuracy'))} | "
                         f"{_blends(fr, src)} | {_pct(_values(fr, 'thr_accuracy'))} |")
            for r in fr:
                per_seed.setdefault(int(r["seed"]), []).append(100 * float(r[f"thr_eval_{src}_accuracy"]))
        n_folds = max((len(v) for v in per_seed.values()), default=0)
        means = [statistics.fmean(v) for v in per_seed.values() if len(v) == n_folds]
        full = [r for r in results if r["row"] == row and r.get("fold") == "all" and r.get("thr_accuracy", "") != ""]
        sources = _sources(full)
        summary.append(f"| {row} | {n_folds} | {_pct(means, ci=True)} | {_pct(_values(full, 'thr_accuracy'))} | "
                       + " | ".join(f"{s} {_pct(_values(full, f'thr_{s}_accuracy'))}" for s in sources) + " |")
    lines += ["", "| row | left-out sources | mean left-out acc (per seed, then over seeds) | `all` pooled val | "
              "`all` val per source |", "|" + "---|" * 5, *summary, ""]
    return lines


def _blends(rows: list[dict], src: str) -> str:
    """The left-out accuracy after AdaBN at each target weight < 1 the runs scored ("w 0.5: 88.1 ± 1.0"), or -."""
    suffix = f"_{src}_accuracy"
    weights = sorted({k[len("thr_adabn_w"):-len(suffix)] for r in rows for k in r
                      if k.startswith("thr_adabn_w") and k.endswith(suffix) and r[k] != ""}, key=float)
    return "; ".join(f"w {w}: {_pct(_values(rows, f'thr_adabn_w{w}{suffix}'))}" for w in weights) or "-"


def write_results(output_dir: str, table: str, runs) -> list[dict]:
    results = collect(runs)
    os.makedirs(output_dir, exist_ok=True)
    fields = list(CSV_FIELDS) + sorted({k for r in results for k in r} - set(CSV_FIELDS))
    tmp = os.path.join(output_dir, "results.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(results)
    os.replace(tmp, os.path.join(output_dir, "results.csv"))
    order = list(dict.fromkeys(f"{r.row} [{r.fold}]" if r.fold else r.row for r in runs))
    with open(os.path.join(output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown(table, results, order))
    return results
