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
#   BESIDE_ONLY='^synthpre_robustaug_epochs48$' BESIDE_FOLDS=all BESIDE_SEEDS=0,1,2: another row's runs
#   of the same grid, in slots of their own from the start (e.g. long runs while the grid's short runs
#   and the fine-tuning curve leave the GPU half idle); the job is done once they are too
#   BACKBONE_REPEAT=1: the synthetic backbone pretrained twice, and whether the two are identical
# Files back (<= 8): machine.txt, loso.log, runs.tgz, uav75_cv.log, uav75_cv.tgz, agreement.json,
# agreement.log (the grids' results.md are inside the .tgz files).
SECONDS=0
job_s=${JOB_S:-570}
only=${ONLY:?ONLY=<the candidate row regex of configs/ablation_loso.cfg>}
source tools/gpu_jobs/common.sh
export SKIP_WHEELS=1  # installed once by common.sh above
folds=${FOLDS:-all,no_uav75,no_uavcrack,no_deepcrack}  # a later session: only the folds still missing
seeds=${SEEDS:-0,1,2} cv_seeds=${CV_SEEDS:-0,1,2}
wanted=$(( $(grid_rows configs/ablation_loso.cfg "$only") * $(csv_len "$seeds") * $(csv_len "$folds") ))  # every row ONLY names
repeats=$(( ${REPEAT:-1} != 0 ))
grid_done() { count_runs runs/ablation_loso "$only" "$seeds" "$folds"; }  # the wanted runs only
repeat_done() { count_runs runs/ablation_loso_repeat "$only" 0 no_uav75; }
cv_done() { count_runs runs/ablation_uav75_cv "${CV_ROWS:-.}" "$cv_seeds"; }
# Loader processes per run from the job's total slots, not from what is left to run: a call that
# resumes a run with another --loader_workers finds it "stale" and leaves it out (2026-12-06)
loader_runs=${LOADER_RUNS:-${PARALLEL:-$RUNS_FIT}}
beside_folds=${BESIDE_FOLDS:-$folds} beside_seeds=${BESIDE_SEEDS:-0,1,2} beside_wanted=0
[ -n "${BESIDE_ONLY:-}" ] && beside_wanted=$(( $(grid_rows configs/ablation_loso.cfg "$BESIDE_ONLY") \
    * $(csv_len "$beside_seeds") * $(csv_len "$beside_folds") ))
beside_done() { count_runs runs/ablation_loso "${BESIDE_ONLY:-.}" "$beside_seeds" "$beside_folds"; }
repack() {  # $OUT is emptied before every call: each call returns everything finished so far
  pack_runs runs runs/ablation_loso runs/ablation_loso_repeat runs/pretrain_logs runs/few_shot runs/few_shot_finetune
  [ -d runs/ablation_uav75_cv ] && pack_runs uav75_cv runs/ablation_uav75_cv
  rm -f "$OUT/loso_results.md" "$OUT/uav75_cv_results.md"
}
left() { echo $(( job_s - SECONDS )); }
gpu_memory() { echo "gpu memory used / total, utilisation at ${SECONDS}s: $(nvidia-smi \
    --query-gpu=memory.used,memory.total,utilization.gpu --format=csv,noheader 2>/dev/null)"; }

# 0. every backbone this job needs, side by side (the CV's is the no_uav75 fold's; none with CV=0).
# A row names its fold backbones' kind and steps in its weights path: loso_synth<steps>_{fold} (synthetic
# cracks, then crack mode), loso_simclr<steps>_{fold} (synthetic, SimCLR, crack mode); no steps: 1,000.
# The grid and the rows beside it share one kind, and the CV needs the 1,000-step synth_crack one.
row_backbones() {
  sed -n 's/^--row=\([^:]*\):.*weights=runs\/pretrain\/loso_\(synth\|simclr\)\([0-9]*\)_{fold}.*/\1 \2 \3/p' \
      configs/ablation_loso.cfg |
      awk -v re="$1" '$1 ~ re {print ($2 == "synth" ? "synth_crack" : "simclr_crack") ":" ($3 == "" ? 1000 : $3)}' |
      sort -u | paste -sd' '
}
backbone=$(row_backbones "$only${BESIDE_ONLY:+|$BESIDE_ONLY}")
[[ $backbone =~ ^[a-z_]+:[0-9]+$ ]] ||
    { echo "loso_cv.sh: the rows want backbones '$backbone' (kind:steps): one kind a job"; exit 2; }
FOLD_KIND=${backbone%:*} FOLD_STEPS=${backbone#*:}
[ "$backbone" = synth_crack:1000 ] || [ "${CV:-1}" = 0 ] || { echo "loso_cv.sh: CV=0 with $backbone backbones"; exit 2; }
export FOLD_STEPS
cv_fold=$([ "${CV:-1}" != 0 ] && [[ ,$folds, != *,no_uav75,* ]] && echo ,no_uav75)
backbones=$(tr ',' '\n' <<< "$folds$cv_fold${BESIDE_ONLY:+,$beside_folds}" | awk 'NF && !seen[$0]++' | paste -sd,)
PRETRAIN_S=$(( $(left) - 20 )) fold_backbones "$FOLD_KIND" "$backbones" > /dev/null
case $? in
  0) ;;
  3) repack; echo "loso_cv.sh: backbones not finished at ${SECONDS}s (checkpoints kept): call again"; exit 0;;
  *) repack; echo "loso_cv.sh: backbone pretraining failed (runs/pretrain_logs/)"; exit 1;;
esac
echo "loso_cv.sh: backbones ready at ${SECONDS}s"
cat runs/pretrain_logs/backbone_repeat.txt 2>/dev/null  # BACKBONE_REPEAT=1: the synthetic backbone twice
# backbones that end near the call's end leave no time to start a run (a negative timeout once,
# 2026-12-07: "timeout: invalid option"): the runs start at the next call
[ "$(left)" -ge "${MIN_RUN_S:-90}" ] ||
    { repack; echo "loso_cv.sh: $(left)s of this call left after the backbones, too few to start a run: call again"; exit 0; }

# (the few CV runs a fresh machine lacks, CV_ROWS / CV_SEEDS, run beside the grid in one slot)
cv_env=(ROWS="${CV_ROWS:-}" SEEDS="$cv_seeds")
cv_wanted=$(( $(grid_rows configs/ablation_uav75_cv.cfg "${CV_ROWS:-.}") * $(csv_len "$cv_seeds") ))
cv_pid=""
if [ "${CV:-1}" != 0 ] && [ -n "${CV_ROWS:-}" ] && [ "$(cv_done)" -lt "$cv_wanted" ] && [ $(( RUNS_FIT - repeats )) -ge 2 ]; then
  env "${cv_env[@]}" PARALLEL=1 LOADER_RUNS="$loader_runs" JOB_S=$(( $(left) - 5 )) bash tools/gpu_jobs/uav75_cv.sh > /dev/null &
  cv_pid=$!
fi
# (BESIDE_ONLY's runs, one slot each, in the background until the call's end)
beside_pid="" beside_slots=0
if [ "$beside_wanted" -gt 0 ] && [ "$(beside_done)" -lt "$beside_wanted" ]; then
  beside_slots=$(( beside_wanted - $(beside_done) ))
  XLA_PYTHON_CLIENT_MEM_FRACTION=$RUN_FRACTION timeout -k 10 --signal=TERM $(( $(left) - 25 )) python3 tools/ablate.py \
      --flagfile=configs/ablation_loso.cfg --seeds="$beside_seeds" --folds="$beside_folds" --only="$BESIDE_ONLY" \
      --parallel="$beside_slots" "$(loader_extra "$loader_runs")" --output_dir=runs/ablation_loso \
      >> runs/pretrain_logs/beside.log 2>&1 &
  beside_pid=$!
fi
# loso.sh's own count (at most its 12 grid runs), or, with runs beside it, every slot the GPU fits
# less the repeat and the slots taken beside it (the CV's where two fit)
grid_parallel=${PARALLEL:-}
taken=$(( beside_slots + (${#cv_pid} > 0) ))
if [ "$taken" -gt 0 ]; then
  grid_parallel=$(( ${PARALLEL:-$(( RUNS_FIT - repeats ))} - taken ))
  [ "$grid_parallel" -ge 1 ] || grid_parallel=1
fi

# 1. the candidate's grid: folds x 3 seeds, and the repeat of (no_uav75, seed 0) unless REPEAT=0
# (the grid's few-shot curves run once it is complete, on its left-out folds, unless CURVE_S < 30 /
# FINETUNE_CURVE=0 turn them off: loso.sh's conditions)
left_out_folds() { [[ ,$folds, == *,no_* ]]; }
curves_missing() {
  left_out_folds && { { [ "${CURVE_S:-240}" -ge 30 ] && [ ! -f runs/few_shot/few_shot.csv ]; } ||
                      { [ "${FINETUNE_CURVE:-1}" != 0 ] && [ ! -f runs/few_shot_finetune/done ]; }; }
}
if [ "$(grid_done)" -lt "$wanted" ] || [ "$(repeat_done)" -lt "$repeats" ] || curves_missing; then
  every 60 gpu_memory
  watch=$!
  BACKBONE=$FOLD_KIND FOLDS=$folds ONLY=$only REPEAT=$repeats PARALLEL=$grid_parallel LOADER_RUNS=$loader_runs JOB_S=$(left) \
      bash tools/gpu_jobs/loso.sh > /dev/null
  kill $watch 2>/dev/null
  tail -4 "$OUT/loso.log"
fi
echo "loso_cv.sh: candidate grid $(grid_done) of $wanted runs (+ repeat $(repeat_done) of $repeats) at ${SECONDS}s"
[ -n "$cv_pid" ] && { wait "$cv_pid"; tail -2 "$OUT/uav75_cv.log"; }
if [ "$beside_wanted" -gt 0 ]; then
  [ -n "$beside_pid" ] && { wait "$beside_pid"; tail -2 runs/pretrain_logs/beside.log; }
  echo "loso_cv.sh: beside it ($BESIDE_ONLY) $(beside_done) of $beside_wanted runs at ${SECONDS}s"
fi
{ [ "$(grid_done)" -ge "$wanted" ] && [ "$(beside_done)" -ge "$beside_wanted" ]; } ||
    { repack; echo "loso_cv.sh: call again"; exit 0; }

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
