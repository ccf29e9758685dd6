#!/usr/bin/env bash
# Where a leave-one-source-out run's ~200 s after its last epoch go (docs/RESULTS.md 000000000000),
# measured without training: tools/bench_finish.py scores a random resnet50_aspp (224 px, bf16, D4
# TTA) on each fold's tile counts through the trainer's own _store_operating_point, AdaBN on 1,024
# crops of the left-out source's real train photos included, the three folds side by side as a grid
# runs them (each with a grid run's GPU memory), once per AdaBN pass kind (PASSES, default
# cached,eager; an H100 ran compiled,eager on 2026-12-07: docs/RESULTS.md 00000000000000). A process
# stopped at its limit (FOLD_S, 150 s) still prints the parts timed so far.
# Lines: $OUT/finish_speed.jsonl (one JSON per fold and pass kind: seconds, operating-point parts,
# predict compiles), logs $OUT/finish_speed_<passes>_<fold>.log. Carry .wheels and .data; about
# 2 x FOLD_S seconds. FOLDS=no_uavcrack: one fold (the largest left-out split) only; CROPS: AdaBN's
# crops (1,024, the grids' --adabn_eval_crops); ADABN_BATCH: crops a pass (64, the trainer's default; 128:
# half the eager passes' per-op Python cost per crop, measured slower on the 2-core CPU).
source tools/gpu_jobs/common.sh
# val tiles of the fold's training sources, then the left-out source's (the splits of 2026-12-06)
declare -A FOLD_TILES=([no_uav75]="uavcrack:1539,deepcrack:560 uav75:151"
                       [no_uavcrack]="deepcrack:560,uav75:151 uavcrack:1539"
                       [no_deepcrack]="uavcrack:1539,uav75:151 deepcrack:560")
folds=$(tr ',' ' ' <<< "${FOLDS:-no_uav75,no_uavcrack,no_deepcrack}")
for fold in $folds; do  # all checked before any starts
  [ -n "${FOLD_TILES[$fold]:-}" ] || { echo "finish_speed.sh: unknown fold $fold (${!FOLD_TILES[*]})"; exit 2; }
done
for passes in $(tr ',' ' ' <<< "${PASSES:-cached,eager}"); do
  for fold in $folds; do
    read -r val left_out <<< "${FOLD_TILES[$fold]}"
    log=$OUT/finish_speed_${passes}_$fold.log
    ( XLA_PYTHON_CLIENT_MEM_FRACTION=$RUN_FRACTION timeout -k 10 "${FOLD_S:-150}" python3 tools/bench_finish.py \
          --size=224 --batch=128 --tta=d4 --precision=bf16 --adabn_crops="${CROPS:-1024}" --data_root=../shared/data \
          --adabn_batch_size="${ADABN_BATCH:-64}" \
          --adabn_passes="$passes" --val="$val" --eval="$left_out" > "$log" 2>&1
      tail -1 "$log" | grep "^{" | sed "s/^{/{\"fold\": \"$fold\", /" >> "$OUT/finish_speed.jsonl" ) &
  done
  wait
  echo "finish_speed.sh: $passes passes done at ${SECONDS}s"
done
cat "$OUT/finish_speed.jsonl" 2>/dev/null
