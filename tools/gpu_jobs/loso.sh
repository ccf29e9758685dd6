#!/usr/bin/env bash
# Leave-one-source-out on the GPU machine (issue 23): one crack-domain backbone per fold, pretrained on
# that fold's training sources only, then configs/ablation_loso.cfg (every row x folds x seeds), and
# one repeated run (fold no_uav75, seed 0, in runs/ablation_loso_repeat) to see whether --deterministic
# gives the same model twice. Resumable: backbones already in runs/pretrain and finished runs are kept
# (the machine stays warm between calls), a run cut off by the budget resumes from its checkpoint.
#   bash tools/gpu_jobs/stage_data.sh uav75 uavcrack deepcrack     # here, once: .data/ travels
#   JOB_S=520 bash tools/gpu_jobs/loso.sh                           # there; ONLY=<row regex>, SEEDS=0,1,2
#   FOLDS=no_uav75,no_uavcrack,no_deepcrack (default; add "all" for the whole mix),
#   PRETRAIN_STEPS=1000 (per backbone), PARALLEL=12, REPEAT=0 skips the repeated run.
#   BACKBONE=synth_crack: every fold's backbone starts from one pretrained on synthetic cracks
#   (SYNTH_STEPS=1000; runs/pretrain/loso_synth_<fold>.weights.h5, the grid's `synthpre` row).
# At most 8 files come back from $OUT, so $OUT gets only: machine.txt, loso.log (this job's output),
# the results of both grids and runs.tgz (run.json, margins.npz, history, logs; no models).
SECONDS=0
case ${BACKBONE:-crack} in crack|synth_crack) ;; *) echo "BACKBONE=${BACKBONE}: choose crack (default) or synth_crack"; exit 2;; esac
source tools/gpu_jobs/common.sh
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.065}
exec > >(tee -a "$OUT/loso.log") 2>&1
grid=configs/ablation_loso.cfg
pack() {  # what has finished so far, in one archive (also every 30 s: a call cut short still returns it)
  cp runs/ablation_loso/results.md "$OUT/loso_results.md" 2>/dev/null
  tar czf "$OUT/.runs.tgz" --exclude='*.keras' --exclude='ckpt' --exclude='*.weights.h5' --exclude='tensorboard' \
      runs/ablation_loso runs/ablation_loso_repeat runs/pretrain_logs 2>/dev/null; mv -f "$OUT/.runs.tgz" "$OUT/runs.tgz"
}
( while sleep 30; do pack; done ) &
packer=$!
trap 'kill $packer 2>/dev/null' EXIT  # also when a step below fails
folds=${FOLDS:-no_uav75,no_uavcrack,no_deepcrack}
declare -A FOLD_SOURCES=([all]=uav75,uavcrack,deepcrack [no_uav75]=uavcrack,deepcrack
                         [no_uavcrack]=uav75,deepcrack [no_deepcrack]=uav75,uavcrack)
mkdir -p runs/pretrain runs/pretrain_logs
stem=loso
if [ "${BACKBONE:-crack}" = synth_crack ]; then  # synthetic cracks first (no real source seen), shared by the folds
  stem=loso_synth
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 PRETRAIN_MODE=synthetic PRETRAIN_STEPS="${SYNTH_STEPS:-1000}" PRETRAIN_OUT=runs/pretrain/synthetic.weights.h5 \
      PRETRAIN_LOG=runs/pretrain_logs/synthetic.log pretrain_backbone 200 > /dev/null
  tail -1 runs/pretrain_logs/synthetic.log 2>/dev/null
  cp runs/pretrain/synthetic.weights.h5.json runs/pretrain_logs/synthetic.pretrain.json 2>/dev/null
  [ -f runs/pretrain/synthetic.weights.h5 ] || { echo "synthetic pretraining failed: no weights"; exit 1; }
  init=runs/pretrain/synthetic.weights.h5
fi
pids=()
for fold in ${folds//,/ }; do  # side by side on the one GPU, each with a fifth of its memory
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 PRETRAIN_DATA="${FOLD_SOURCES[$fold]}" PRETRAIN_INIT="${init:-}" \
      PRETRAIN_OUT="runs/pretrain/${stem}_$fold.weights.h5" PRETRAIN_WORKERS=4 \
      PRETRAIN_LOG="runs/pretrain_logs/${stem}_$fold.log" pretrain_backbone 300 > /dev/null &
  pids+=($!)
done
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
for fold in ${folds//,/ }; do
  tail -1 "runs/pretrain_logs/${stem}_$fold.log" 2>/dev/null
  cp "runs/pretrain/${stem}_$fold.weights.h5.json" "runs/pretrain_logs/${stem}_$fold.pretrain.json" 2>/dev/null
  [ -f "runs/pretrain/${stem}_$fold.weights.h5" ] || { echo "pretraining $fold failed: no weights"; exit 1; }
done
echo "backbones ready at ${SECONDS}s"
budget=$(( ${JOB_S:-520} - SECONDS - 25 ))  # what is left for training, packing included
if [ "${REPEAT:-1}" != 0 ]; then
  timeout -k 10 --signal=TERM "$budget" python3 tools/ablate.py --flagfile=$grid --seeds=0 --folds=no_uav75 \
      ${ONLY:+--only=$ONLY} --output_dir=runs/ablation_loso_repeat > runs/pretrain_logs/repeat.log 2>&1 &
  repeat=$!
fi
timeout -k 10 --signal=TERM "$budget" python3 tools/ablate.py --flagfile=$grid --seeds="${SEEDS:-0,1,2}" \
    --folds="$folds" --parallel="${PARALLEL:-12}" ${ONLY:+--only=$ONLY} --output_dir=runs/ablation_loso
[ -n "${repeat:-}" ] && wait "$repeat"
for d in runs/ablation_loso runs/ablation_loso_repeat; do
  python3 tools/ablate.py --flagfile=$grid --seeds=0,1,2 --output_dir=$d --report_only >/dev/null 2>&1
done
kill $packer 2>/dev/null
pack
python3 - <<'PY'
import json, os
a, b = "runs/ablation_loso/pretrained_no_uav75_s0/run.json", "runs/ablation_loso_repeat/pretrained_no_uav75_s0/run.json"
if os.path.isfile(a) and os.path.isfile(b):
    ra, rb = (json.load(open(p)) for p in (a, b))
    same = ra["weights_sha256"] == rb["weights_sha256"]
    print(f"same seed twice (--deterministic): weights {'IDENTICAL' if same else 'DIFFER'}; val acc "
          f"{ra['metrics']['val']['accuracy']:.4f} / {rb['metrics']['val']['accuracy']:.4f}; threshold "
          f"{ra['operating_point']['threshold']:.4f} / {rb['operating_point']['threshold']:.4f}; xla_flags "
          f"{ra['runtime'].get('xla_flags')!r}; wall {ra['wall_seconds']:.0f} s / {rb['wall_seconds']:.0f} s")
else:
    print("repeat not finished")
PY
grep -A20 "Leave one source out" runs/ablation_loso/results.md 2>/dev/null
echo "loso.sh done at ${SECONDS}s"
