#!/usr/bin/env bash
# Leave-one-source-out on the GPU machine (issue 23): one crack-domain backbone per fold, pretrained on
# that fold's training sources only, then configs/ablation_loso.cfg (every row x 4 folds x seeds), and
# one repeated run (fold no_uav75, seed 0, in runs/ablation_loso_repeat) to see whether --deterministic
# gives the same model twice. Resumable: backbones already in runs/pretrain and finished runs are kept
# (the machine stays warm between calls), a run cut off by the budget resumes from its checkpoint.
#   bash tools/gpu_jobs/stage_data.sh uav75 uavcrack deepcrack     # here, once: .data/ travels
#   JOB_S=570 bash tools/gpu_jobs/loso.sh                           # there; ONLY=<row regex>, SEEDS=0,1,2
#   PRETRAIN_STEPS=1000 (per backbone), PARALLEL=12, REPEAT=0 skips the repeated run.
SECONDS=0
# At most 8 files come back from $OUT: everything goes under $OUT/loso and is packed into one archive.
final_out=${OUT:-$PWD/runs/gpu_out}
export OUT=$final_out/loso
source tools/gpu_jobs/common.sh
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.065}
grid=configs/ablation_loso.cfg
out_dir=runs/ablation_loso
declare -A FOLD_SOURCES=([all]=uav75,uavcrack,deepcrack [no_uav75]=uavcrack,deepcrack
                         [no_uavcrack]=uav75,deepcrack [no_deepcrack]=uav75,uavcrack)
mkdir -p runs/pretrain
for fold in "${!FOLD_SOURCES[@]}"; do
  weights=runs/pretrain/loso_$fold.weights.h5
  [ -f "$weights" ] && continue
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 timeout "${PRETRAIN_S:-300}" python3 tools/pretrain.py --mode=crack \
      --data_dir="${FOLD_SOURCES[$fold]}" --data_root=../shared/data --image_size=224 --crop_side=96,192 \
      --steps="${PRETRAIN_STEPS:-1000}" --batch_size=128 --precision=bf16 --lr=0.002 --data_workers=4 \
      --data_processes --log_every=250 --output="$weights" > "$OUT/pretrain_$fold.log" 2>&1 &
done
wait
for fold in "${!FOLD_SOURCES[@]}"; do
  tail -2 "$OUT/pretrain_$fold.log" 2>/dev/null
  [ -f "runs/pretrain/loso_$fold.weights.h5" ] || { echo "pretraining $fold failed: no weights"; exit 1; }
  cp "runs/pretrain/loso_$fold.weights.h5.json" "$OUT/pretrain_$fold.json" 2>/dev/null
done
echo "backbones ready at ${SECONDS}s"
budget=$(( ${JOB_S:-570} - SECONDS ))
if [ "${REPEAT:-1}" != 0 ]; then
  timeout --signal=TERM "$((budget - 30))" python3 tools/ablate.py --flagfile=$grid --seeds=0 --folds=no_uav75 \
      ${ONLY:+--only=$ONLY} --output_dir=runs/ablation_loso_repeat > "$OUT/repeat.log" 2>&1 &
fi
GRID_OUT=$out_dir BUDGET_S=$((budget - 30)) bash tools/gpu_jobs/grid.sh $grid "${SEEDS:-0,1,2}" "${PARALLEL:-12}" \
    ${ONLY:+--only=$ONLY}
wait
python3 tools/ablate.py --flagfile=$grid --seeds=0 --folds=no_uav75 --output_dir=runs/ablation_loso_repeat \
    --report_only >/dev/null 2>&1
tar czf "$OUT/loso_repeat.tgz" --exclude='*.keras' --exclude='ckpt' --exclude='*.weights.h5' \
    runs/ablation_loso_repeat 2>/dev/null
python3 - <<'PY' | tee "$OUT/determinism.txt"
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
    print("repeat not finished yet")
PY
cat runs/ablation_loso/results.md 2>/dev/null | grep -A30 "Leave one source out"
tar czf "$final_out/loso_out.tgz" -C "$final_out" loso && rm -rf "$OUT"
echo "loso.sh done at ${SECONDS}s"
