#!/usr/bin/env bash
# One GPU slice of issue 23 in one resumable job: a candidate row's leave-one-source-out grid
# (loso.sh, synthetic-crack backbones, every fold incl. `all`, and the repeated run), then the UAV75
# 5-fold estimate of the recommended recipe (uav75_cv.sh, which reuses the no_uav75 backbone), then,
# with time left, dense vs windows agreement on the candidate's `all` model (dense_agreement.sh,
# issue 24). Each stage runs only until JOB_S (seconds of this call) and is skipped once done, so the
# same command is called again on the warm machine until it prints "loso_cv.sh: done".
#   bash tools/gpu_jobs/stage_data.sh uav75 uavcrack deepcrack     # here, once: .data/ travels
#   ONLY='^synthpre_robustaug$' JOB_S=570 bash tools/gpu_jobs/loso_cv.sh     # there
#   FOLDS=no_uavcrack,no_deepcrack REPEAT=0: a later session's call, for the folds still missing;
#   CV=0 skips the UAV75 5-fold, AGREE=0 the agreement (once they have run); SEEDS=0 (default 0,1,2); CV_ROWS='^fold4$'
#   CV_SEEDS=2: only the CV runs still missing, trained beside the candidate's grid (one slot)
# Files back (<= 8): machine.txt, loso.log, runs.tgz, uav75_cv.log, uav75_cv.tgz, agreement.json,
# agreement.log (the grids' results.md are inside the .tgz files).
SECONDS=0
job_s=${JOB_S:-570}
only=${ONLY:?ONLY=<the candidate row regex of configs/ablation_loso.cfg>}
source tools/gpu_jobs/common.sh
export SKIP_WHEELS=1  # installed once by common.sh above
folds=${FOLDS:-all,no_uav75,no_uavcrack,no_deepcrack}  # a later session: only the folds still missing
seeds=${SEEDS:-0,1,2} cv_seeds=${CV_SEEDS:-0,1,2}
wanted=$(( $(csv_len "$seeds") * $(csv_len "$folds") ))
repeats=$(( ${REPEAT:-1} != 0 ))
grid_done() { count_runs runs/ablation_loso "$only" "$seeds" "$folds"; }  # the wanted runs only
repeat_done() { count_runs runs/ablation_loso_repeat "$only" 0 no_uav75; }
cv_done() { count_runs runs/ablation_uav75_cv "${CV_ROWS:-.}" "$cv_seeds"; }
repack() {  # $OUT is emptied before every call: each call returns everything finished so far
  pack_runs runs runs/ablation_loso runs/ablation_loso_repeat runs/pretrain_logs runs/few_shot runs/few_shot_finetune
  [ -d runs/ablation_uav75_cv ] && pack_runs uav75_cv runs/ablation_uav75_cv
  rm -f "$OUT/loso_results.md" "$OUT/uav75_cv_results.md"
}
left() { echo $(( job_s - SECONDS )); }
gpu_memory() { echo "gpu memory used / total, utilisation at ${SECONDS}s: $(nvidia-smi \
    --query-gpu=memory.used,memory.total,utilization.gpu --format=csv,noheader 2>/dev/null)"; }

# 0. every backbone this job needs, side by side (the CV's is the no_uav75 fold's; none with CV=0)
cv_fold=$([ "${CV:-1}" != 0 ] && [[ ,$folds, != *,no_uav75,* ]] && echo ,no_uav75)
fold_backbones synth_crack "$folds$cv_fold" > /dev/null || exit 1
echo "loso_cv.sh: backbones ready at ${SECONDS}s"

# (the few CV runs a fresh machine lacks, CV_ROWS / CV_SEEDS, run beside the grid in one slot)
cv_env=(ROWS="${CV_ROWS:-}" SEEDS="$cv_seeds")
cv_wanted=$(( $(grid_rows configs/ablation_uav75_cv.cfg "${CV_ROWS:-.}") * $(csv_len "$cv_seeds") ))
cv_pid=""
if [ "${CV:-1}" != 0 ] && [ -n "${CV_ROWS:-}" ] && [ "$(cv_done)" -lt "$cv_wanted" ] && [ $(( RUNS_FIT - repeats )) -ge 2 ]; then
  env "${cv_env[@]}" PARALLEL=1 LOADER_RUNS="$RUNS_FIT" JOB_S=$(( $(left) - 5 )) bash tools/gpu_jobs/uav75_cv.sh > /dev/null &
  cv_pid=$!
fi
grid_parallel=${PARALLEL:-}  # loso.sh's own count, less the CV's slot (started only where two fit)
if [ -n "$cv_pid" ]; then
  grid_parallel=$(( ${PARALLEL:-$(( RUNS_FIT - repeats < 13 ? RUNS_FIT - repeats : 13 ))} - 1 ))
fi

# 1. the candidate's grid: folds x 3 seeds, and the repeat of (no_uav75, seed 0) unless REPEAT=0
if [ "$(grid_done)" -lt "$wanted" ] || [ "$(repeat_done)" -lt "$repeats" ] ||
   [ ! -f runs/few_shot/few_shot.csv ] ||  # (the grid's few-shot curves run once it is complete)
   { [ "${FINETUNE_CURVE:-1}" != 0 ] && [ ! -f runs/few_shot_finetune/done ]; }; then
  every 60 gpu_memory
  watch=$!
  BACKBONE=synth_crack FOLDS=$folds ONLY=$only REPEAT=$repeats PARALLEL=$grid_parallel JOB_S=$(left) \
      bash tools/gpu_jobs/loso.sh > /dev/null
  kill $watch 2>/dev/null
  tail -4 "$OUT/loso.log"
fi
echo "loso_cv.sh: candidate grid $(grid_done) of $wanted runs (+ repeat $(repeat_done) of $repeats) at ${SECONDS}s"
[ -n "$cv_pid" ] && { wait "$cv_pid"; tail -2 "$OUT/uav75_cv.log"; }
[ "$(grid_done)" -ge "$wanted" ] || { repack; echo "loso_cv.sh: call again"; exit 0; }

# 2. the UAV75 5-fold estimate (15 runs, or CV_ROWS x CV_SEEDS)
if [ "${CV:-1}" = 0 ]; then
  echo "loso_cv.sh: CV=0, no UAV75 5-fold"
else
  if [ "$(cv_done)" -lt "$cv_wanted" ] && [ "$(left)" -gt 120 ]; then
    env "${cv_env[@]}" JOB_S=$(left) bash tools/gpu_jobs/uav75_cv.sh > /dev/null
    tail -2 "$OUT/uav75_cv.log"
  fi
  [ "$(cv_done)" -ge "$cv_wanted" ] || { repack; echo "loso_cv.sh: call again"; exit 0; }
fi

# 3. dense vs windows on a trained 224-px model (refine bands included), while time is left: the
# candidate's `all` model, else (a call for the folds still missing) any of its seed-0 models
model=$(ls runs/ablation_loso/*_all_s0/final.keras runs/ablation_loso/*_s0/final.keras 2>/dev/null | head -1)
if [ "${AGREE:-1}" != 0 ] && [ ! -f runs/agreement.json ] && [ -n "$model" ] && [ "$(left)" -gt 90 ]; then
  MODEL=$model TTA=${AGREE_TTA:-none} timeout $(( $(left) - 10 )) bash tools/gpu_jobs/dense_agreement.sh > /dev/null
  cp "$OUT/agreement.json" runs/ 2>/dev/null
  tail -3 "$OUT/agreement.log" 2>/dev/null
fi
repack
echo "loso_cv.sh: done at ${SECONDS}s"
