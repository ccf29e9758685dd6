#!/usr/bin/env bash
# After a GPU slice, here on the CPU: every table of one leave-one-source-out row, from the runs'
# margins (nothing re-run), over runs that came back in several slices' folders:
#   bash tools/loso_report.sh <row> <out dir> <results folder>...
#   bash tools/loso_report.sh synthpre_robustaug_epochs48 docs/results/h100_2026-12-06f \
#       docs/results/h100_2026-12-06d docs/results/h100_2026-12-06f
# Each results folder holds ablation_loso/<row>_<fold>_s<seed>/ (run.json, margins.npz, config.json);
# a run found in two folders is taken from the last one named. A run cut off after its final model's
# operating point (margins.npz and config.json, no run.json: a GPU call that ended while it scored
# best.keras) counts in every table, its point recomputed from the margins as the trainer picked it
# (crack_tf.evaluation.run_margins), without the metrics at 0.5 (run.json's); the report names it.
# Writes into <out dir>:
#   1. groups.npz into each no_* run that lacks it (tools/tile_groups.py: the photo of every left-out
#      tile, so the calibration curve draws whole photos; reads the data, DATA_ROOT=../shared/data)
#   2. loso_<row>.md / .csv: the row's val and leave-one-source-out tables over every run found
#      (tools/ablate.py --report_only over links to them in one folder)
#   3. few_shot_adabn_<row>/: a new site's calibration curve by photo, stored point, threshold with
#      the prior of 50 tiles, AdaBN (tools/few_shot_curve.py --adabn; NS, DRAWS override 0,10,25,50,100 / 20);
#      few_shot_adabn_w<w>_<row>/: the same after each AdaBN blend the runs scored (--adabn_target_weights)
#   4. threshold_rules_<row>.md: every --threshold_rule on these runs (tools/threshold_rules.py)
#   5. error_anatomy_<row>.md: where the runs' errors are, left out and on the trained sources' val
#      (misses by crack pixels, false alarms by distance to a crack and joints; tools/error_anatomy.py)
#   6. with BASELINE=<row>:<folder>[,<folder>...]: compare_<row>_vs_<baseline row>.md, the row against
#      that one per left-out source and seed, Welch's p, ROC AUC, and where both have `all` runs their
#      val per source with P / R (tools/compare_loso.py); the recommended recipe (since 2026-12-08):
#      BASELINE=simclrpre_robustaug_epochs48:docs/results/h100_2026-12-07f,docs/results/h100_2026-12-07h,docs/results/h100_2026-12-08a
#      (the one before it: BASELINE=synthpre_robustaug_epochs48:docs/results/h100_2026-12-06d,docs/results/h100_2026-12-06f,docs/results/h100_2026-12-06h)
set -euo pipefail
row=${1:?usage: loso_report.sh <row> <out dir> <results folder>...}
out=${2:?usage: loso_report.sh <row> <out dir> <results folder>...}
shift 2
[ $# -ge 1 ] || { echo "loso_report.sh: name at least one results folder (holding ablation_loso/)" >&2; exit 2; }
links=$(mktemp -d)
trap 'rm -rf "$links"' EXIT
for folder in "$@"; do
  for run in "$folder"/ablation_loso/"$row"_{all,no_*}_s*; do
    { [ -f "$run/run.json" ] || { [ -f "$run/margins.npz" ] && [ -f "$run/config.json" ]; }; } &&
        ln -sfn "$(realpath "$run")" "$links/$(basename "$run")"
  done
done
runs=$(find "$links" -mindepth 1 -maxdepth 1 | wc -l)
[ "$runs" -gt 0 ] || { echo "loso_report.sh: no finished run of row '$row' in: $*" >&2; exit 1; }
seeds=$(find "$links" -mindepth 1 -maxdepth 1 -printf '%f\n' | sed 's/.*_s\([0-9]*\)$/\1/' | sort -un | paste -sd,)
echo "loso_report.sh: $runs runs of $row (seeds $seeds)"
cut_off=$(for run in "$links"/*; do [ -f "$run/run.json" ] || basename "$run"; done | paste -sd' ')
[ -z "$cut_off" ] || echo "loso_report.sh: cut off after the final model's operating point (no run.json: the point" \
    "recomputed from the margins, no metrics at 0.5): $cut_off"
left_out=("$links/${row}_no_"*)
[ -e "${left_out[0]}" ] || { echo "loso_report.sh: no no_* run of '$row': no left-out table" >&2; exit 1; }
mkdir -p "$out"
for run in "${left_out[@]}"; do
  [ -f "$run/groups.npz" ] || python tools/tile_groups.py --runs="$run" --data_root="${DATA_ROOT:-../shared/data}"
done
python tools/ablate.py --flagfile=configs/ablation_loso.cfg --only="^${row}\$" --seeds="$seeds" \
    --folds=all,no_uav75,no_uavcrack,no_deepcrack --output_dir="$links" --report_only
mv "$links/results.md" "$out/loso_$row.md"
[ -z "$cut_off" ] || printf '\nCut off after the final model'"'"'s operating point (no run.json: the point recomputed from the
margins as the trainer picked it, no metrics at 0.5): %s\n' "$cut_off" >> "$out/loso_$row.md"
mv "$links/results.csv" "$out/loso_$row.csv"
python tools/few_shot_curve.py --runs="$links/${row}_no_*" --adabn --out="$out/few_shot_adabn_$row" \
    --ns="${NS:-0,10,25,50,100}" --draws="${DRAWS:-20}" --fit=threshold --prior_tiles=50
# the same curves after each AdaBN blend the runs scored (--adabn_target_weights: split eval_adabn_w<w>)
blends=$(python3 -c 'import sys, numpy as np
print(" ".join(sorted({s for run in sys.argv[1:] for s in np.load(run + "/margins.npz")["split"].tolist()
                       if s.startswith("eval_adabn_w")})))' "${left_out[@]}")
curves="$out/few_shot_adabn_$row/"
for split in $blends; do
  python tools/few_shot_curve.py --runs="$links/${row}_no_*" --adabn --adabn_split="$split" \
      --out="$out/few_shot_${split#eval_}_$row" --ns="${NS:-0,10,25,50,100}" --draws="${DRAWS:-20}" --fit=threshold \
      --prior_tiles=50
  curves+=", $out/few_shot_${split#eval_}_$row/"
done
python tools/threshold_rules.py --runs="$links/${row}_*" --out="$out/threshold_rules_$row.md"
python tools/error_anatomy.py --runs="$links/${row}_no_*" --split=eval,val --data_root="${DATA_ROOT:-../shared/data}" \
    --out="$out/error_anatomy_$row.md" > /dev/null
compared=""
if [ -n "${BASELINE:-}" ]; then
  compared=", $out/compare_${row}_vs_${BASELINE%%:*}.md"
  python tools/compare_loso.py --a="$row:$(IFS=,; echo "$*")" --b="$BASELINE" --out="${compared#, }"
fi
echo "loso_report.sh: wrote $out/loso_$row.md, $curves, $out/threshold_rules_$row.md, $out/error_anatomy_$row.md$compared"
