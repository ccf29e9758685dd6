#!/usr/bin/env bash
# UAV75 by 5-fold cross-validation (issue 23 point 1) on the GPU machine: the recommended recipe's
# backbone made without any UAV75 photo (synthetic cracks, then crack mode on uavcrack + deepcrack:
# runs/pretrain/loso_synth_no_uav75.weights.h5, shared with loso.sh), then configs/ablation_uav75_cv.cfg
# (5 folds of 12 UAV75 photos x SEEDS), resumable: call again on the warm machine until it prints
# "uav75_cv.sh: done". At most 8 files come back: machine.txt, uav75_cv.log, uav75_cv_results.md,
# uav75_cv.tgz (run.json, margins.npz, histories, logs; no models).
#   bash tools/gpu_jobs/stage_data.sh uav75 uavcrack deepcrack     # here, once: .data/ travels
#   JOB_S=565 bash tools/gpu_jobs/uav75_cv.sh                       # there; SEEDS=0,1,2, PARALLEL=15 (or what fits)
#   ROWS='^fold4$' SEEDS=2: only the runs a fresh machine still lacks (ablate's --only row regex)
#   CV_BASE=configs/crackmix_synthpre_robust48.cfg CV_DIR=runs/ablation_uav75_cv_robust48: the same folds
#   for another recipe (the grid's --base_flagfile; its backbone stays the no-UAV75 one), in its own folder
#   CV_BACKBONE=simclr_crack: the no-UAV75 backbone of that kind instead (fold_backbones in common.sh:
#   synthetic, SimCLR, then crack mode, none of them on UAV75; the row simclrpre_robustaug_epochs48's),
#   e.g. with CV_BASE=configs/crackmix_simclrpre_robust48.cfg CV_DIR=runs/ablation_uav75_cv_simclr48
SECONDS=0
source tools/gpu_jobs/common.sh
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-$RUN_FRACTION}
exec > >(tee -a "$OUT/uav75_cv.log") 2>&1
grid=configs/ablation_uav75_cv.cfg
seeds=${SEEDS:-0,1,2}
cv_dir=${CV_DIR:-runs/ablation_uav75_cv}
recipe=(${CV_BASE:+--base_flagfile="$CV_BASE"})
[ -z "${CV_BASE:-}" ] || [ -f "$CV_BASE" ] || { echo "uav75_cv.sh: CV_BASE=$CV_BASE: no such trainer flagfile"; exit 2; }
kind=${CV_BACKBONE:-synth_crack}
case $kind in
  synth_crack) ;;  # the grid file's --weights (loso_synth_no_uav75)
  simclr_crack) recipe+=(--extra=--weights=runs/pretrain/loso_simclr_no_uav75.weights.h5);;  # after it: wins
  *) echo "uav75_cv.sh: CV_BACKBONE=$kind: choose synth_crack (default) or simclr_crack"; exit 2;;
esac
pack() {
  cp "$cv_dir/results.md" "$OUT/uav75_cv_results.md" 2>/dev/null
  pack_runs uav75_cv "$cv_dir" runs/pretrain_logs
}
start_packer pack
fold_backbones "$kind" no_uav75 || exit 1
echo "backbone ready at ${SECONDS}s"
parallel=${PARALLEL:-$(( RUNS_FIT < 15 ? RUNS_FIT : 15 ))}
train_budget "${JOB_S:-565}" ||
    { final_pack; echo "uav75_cv.sh: ${budget}s left to train: call again"; exit 0; }
timeout -k 10 --signal=TERM "$budget" python3 tools/ablate.py --flagfile=$grid "${recipe[@]}" --seeds="$seeds" \
    ${ROWS:+--only=$ROWS} --parallel="$parallel" "$(loader_extra "${LOADER_RUNS:-$parallel}")" --output_dir="$cv_dir"
python3 tools/ablate.py --flagfile=$grid "${recipe[@]}" --seeds="$seeds" ${ROWS:+--only=$ROWS} --output_dir="$cv_dir" \
    --report_only >/dev/null 2>&1
final_pack
wanted=$(( $(grid_rows $grid "${ROWS:-.}") * $(csv_len "$seeds") ))
finished=$(count_runs "$cv_dir" "${ROWS:-.}" "$seeds")
echo "uav75_cv.sh: $finished of $wanted runs finished at ${SECONDS}s"
[ "$finished" -ge "$wanted" ] && echo "uav75_cv.sh: done" || echo "uav75_cv.sh: call again"
