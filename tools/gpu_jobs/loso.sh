#!/usr/bin/env bash
# Leave-one-source-out on the GPU machine (issue 23): one crack-domain backbone per fold, pretrained on
# that fold's training sources only, then configs/ablation_loso.cfg (every row x folds x seeds), and
# one repeated run (fold no_uav75, seed 0, in runs/ablation_loso_repeat) to see whether --deterministic
# gives the same model twice. Resumable: backbones already in runs/pretrain and finished runs are kept
# (the machine stays warm between calls), a run cut off by the budget resumes from its checkpoint.
#   bash tools/gpu_jobs/stage_data.sh uav75 uavcrack deepcrack     # here, once: .data/ travels
#   JOB_S=520 bash tools/gpu_jobs/loso.sh                           # there; ONLY=<row regex>, SEEDS=0,1,2
#   FOLDS=no_uav75,no_uavcrack,no_deepcrack (default; add "all" for the whole mix),
#   PRETRAIN_STEPS=1000 (per backbone), PARALLEL=12 (fewer where the GPU's memory fits fewer),
#   REPEAT=0 skips the repeated run; FINETUNE_CURVE=0 skips the fine-tuning few-shot curve.
#   BACKBONE=synth_crack: every fold's backbone starts from one pretrained on synthetic cracks
#   (SYNTH_STEPS=1000; runs/pretrain/loso_synth_<fold>.weights.h5, the grid's `synthpre` row).
#   FOLD_STEPS=3000: longer fold backbones, runs/pretrain/loso_synth3000_<fold>.weights.h5 (common.sh)
#   BACKBONE=simclr_crack: SimCLR on the fold's train photos between the two (loso_simclr_<fold>)
#   GRID_EXTRA=--adabn_eval_crops=0: more trainer flags for every run of both grids (after the grid's
#   own --extra, so they win; e.g. rows whose AdaBN column is not the question, without its minutes)
# At most 8 files come back from $OUT, so $OUT gets only: machine.txt, loso.log (this job's output),
# the results of both grids and runs.tgz (run.json, margins.npz, history, logs, runs/few_shot and
# runs/few_shot_finetune; no models).
SECONDS=0
case ${BACKBONE:-crack} in crack|synth_crack|simclr_crack) ;;
  *) echo "BACKBONE=${BACKBONE}: choose crack (default), synth_crack or simclr_crack"; exit 2;; esac
source tools/gpu_jobs/common.sh
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-$RUN_FRACTION}
# 12 runs side by side (and the repeated run) where they fit the GPU's memory (common.sh: RUNS_FIT)
slots=$(( RUNS_FIT - (${REPEAT:-1} != 0) ))
parallel=${PARALLEL:-$(( slots < 12 ? slots : 12 ))}
[ "$parallel" -ge 1 ] || parallel=1
loader=$(loader_extra "${LOADER_RUNS:-$(( parallel + 1 ))}")  # LOADER_RUNS: loso_cv.sh's count, the same every call
[ -n "${GRID_EXTRA:-}" ] && loader="$loader,$GRID_EXTRA"  # one --extra: comma-separated trainer flags
exec > >(tee -a "$OUT/loso.log") 2>&1
grid=configs/ablation_loso.cfg
pack() {  # what has finished so far, in one archive
  cp runs/ablation_loso/results.md "$OUT/loso_results.md" 2>/dev/null
  pack_runs runs runs/ablation_loso runs/ablation_loso_repeat runs/pretrain_logs runs/few_shot runs/few_shot_finetune
}
start_packer pack
folds=${FOLDS:-no_uav75,no_uavcrack,no_deepcrack}
PRETRAIN_S=$(( ${JOB_S:-520} - SECONDS - 25 )) fold_backbones "${BACKBONE:-crack}" "$folds"
case $? in 0) ;; 3) final_pack; echo "loso.sh: backbones not finished: call again"; exit 0;; *) exit 1;; esac
echo "backbones ready at ${SECONDS}s"
train_budget "${JOB_S:-520}" || { final_pack; echo "loso.sh: ${budget}s left to train: call again"; exit 0; }
if [ "${REPEAT:-1}" != 0 ]; then
  timeout -k 10 --signal=TERM "$budget" python3 tools/ablate.py --flagfile=$grid --seeds=0 --folds=no_uav75 \
      ${ONLY:+--only=$ONLY} "$loader" --output_dir=runs/ablation_loso_repeat \
      > runs/pretrain_logs/repeat.log 2>&1 &
  repeat=$!
fi
timeout -k 10 --signal=TERM "$budget" python3 tools/ablate.py --flagfile=$grid --seeds="${SEEDS:-0,1,2}" \
    --folds="$folds" --parallel="$parallel" ${ONLY:+--only=$ONLY} "$loader" \
    --output_dir=runs/ablation_loso
grid_rc=$?  # 0: every run of the grid finished
[ -n "${repeat:-}" ] && wait "$repeat"
for d in runs/ablation_loso runs/ablation_loso_repeat; do
  python3 tools/ablate.py --flagfile=$grid --seeds=0,1,2 --output_dir=$d --report_only >/dev/null 2>&1
done
# Once the grid is complete, the few-shot curve of every left-out run here, where its features.npz is
# (--save_eval_features): threshold re-pick (plain / prior 50) and the last layer re-fitted at three
# pulls (calibrate --l2), in the time left.
curve_s=$(( ${JOB_S:-520} - SECONDS - 20 ))
[ "$curve_s" -le "${CURVE_S:-240}" ] || curve_s=${CURVE_S:-240}
[ "$grid_rc" = 0 ] && [ "$curve_s" -ge 30 ] && [ ! -f runs/few_shot/few_shot.csv ] && timeout "$curve_s" \
    python3 tools/few_shot_curve.py --runs='runs/ablation_loso/*_no_*_s*' --out=runs/few_shot \
    --fit=threshold,last_layer --prior_tiles=0,50 --l2=1,0.1,0.01 2>&1 | tail -3
# Then, with the models here, the curve of calibrate --fit=finetune on each fold's seed-0 run: the last
# stage (FINETUNE_STARTS=conv5_) fine-tuned on n labelled tiles drawn by photo (one view: --tta=none).
# It writes its files after each curve and a call cut off in the middle goes on at the next call
# with the curves still missing; runs/few_shot_finetune/done marks the whole set. FINETUNE_LRS=1e-5,1e-4:
# a curve per learning rate (default: calibrate's 1e-4).
ft_s=$(( ${JOB_S:-520} - SECONDS - 20 ))
if [ "$grid_rc" = 0 ] && [ "${FINETUNE_CURVE:-1}" != 0 ] && [ ! -f runs/few_shot_finetune/done ] && [ "$ft_s" -ge 90 ]; then
  mkdir -p runs/few_shot_finetune
  timeout "$ft_s" python3 tools/few_shot_finetune.py --runs='runs/ablation_loso/*_no_*_s0' \
      --out=runs/few_shot_finetune --starts="${FINETUNE_STARTS:-conv5_}" --ns=0,10,25,50 \
      --draws="${FINETUNE_DRAWS:-5}" --lr="${FINETUNE_LRS:-1e-4}" --tta=none >> runs/few_shot_finetune/log.txt 2>&1 && touch runs/few_shot_finetune/done
  grep "^few_shot_finetune" runs/few_shot_finetune/log.txt | tail -8
fi
final_pack
python3 - <<'PY'
import glob, json, os
for b in sorted(glob.glob("runs/ablation_loso_repeat/*_no_uav75_s0/run.json")):
    a = os.path.join("runs/ablation_loso", os.path.basename(os.path.dirname(b)), "run.json")
    if not os.path.isfile(a):
        continue
    ra, rb = (json.load(open(p)) for p in (a, b))
    same = ra["weights_sha256"] == rb["weights_sha256"]
    print(f"{os.path.basename(os.path.dirname(b))} twice (--deterministic): weights "
          f"{'IDENTICAL' if same else 'DIFFER'}; val acc "
          f"{ra['metrics']['val']['accuracy']:.4f} / {rb['metrics']['val']['accuracy']:.4f}; threshold "
          f"{ra['operating_point']['threshold']:.4f} / {rb['operating_point']['threshold']:.4f}; xla_flags "
          f"{ra['runtime'].get('xla_flags')!r}; wall {ra['wall_seconds']:.0f} s / {rb['wall_seconds']:.0f} s")
    break
else:
    print("repeat not finished")
PY
grep -A20 "Leave one source out" runs/ablation_loso/results.md 2>/dev/null
echo "loso.sh done at ${SECONDS}s"
