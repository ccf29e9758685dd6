#!/usr/bin/env bash
# Leave-one-source-out runs for the few-shot site-calibration curve (docs/CALIBRATE.md). For each
# source in LEFT_OUT (default deepcrack): the crack-domain backbone pretrained without it
# (uav75 left out: the usual uavcrack + deepcrack backbone), configs/crackmix_pretrained.cfg trained
# on the two other sources (their crackmix weights) with --eval_sources=<it>, then
# tools/site_margins.py. run.json + margins.npz of each run come back in $OUT/loso/<run>/, and
# the curve in $OUT/few_shot/ (tools/few_shot_curve.py; it also runs on any CPU from those files).
#   LEFT_OUT=uav75,uavcrack,deepcrack SEEDS=0,1,2 bash tools/gpu_jobs/few_shot.sh
# A finished run (run.json) or backbone is kept, so a second call goes on where the first stopped.
source tools/gpu_jobs/common.sh
declare -A WEIGHT=([uav75]=0.5 [uavcrack]=0.3 [deepcrack]=0.2)  # configs/crackmix.cfg
LEFT_OUT=${LEFT_OUT:-deepcrack} SEEDS=${SEEDS:-0}
for src in ${LEFT_OUT//,/ }; do
  [ -n "${WEIGHT[$src]:-}" ] || { echo "LEFT_OUT: unknown source $src (uav75, uavcrack, deepcrack)"; exit 2; }
done
for src in ${LEFT_OUT//,/ }; do
  train=""; pre=""
  for s in uav75 uavcrack deepcrack; do
    [ "$s" = "$src" ] && continue
    train="${train:+$train,}$s:${WEIGHT[$s]}"
    [ "$s" = uav75 ] || pre="${pre:+$pre,}$s"
  done
  if [ "$src" = uav75 ]; then
    pretrain_backbone 200
    backbone=runs/pretrain/crack.weights.h5
  else
    backbone=runs/pretrain/crack_no_$src.weights.h5
    [ -f "$backbone" ] || timeout "${PRETRAIN_S:-200}" python3 tools/pretrain.py --mode=crack --data_dir="$pre" \
        --data_root=../shared/data --image_size=224 --crop_side=96,192 --steps="${PRETRAIN_STEPS:-1000}" \
        --batch_size=128 --precision=bf16 --lr=0.002 --data_workers=14 --data_processes --log_every=100 \
        --output="$backbone" 2>&1 | tee "$OUT/pretrain_no_$src.log"
  fi
  [ -f "$backbone" ] || { echo "no backbone $backbone"; exit 1; }
  for seed in ${SEEDS//,/ }; do
    run=runs/loso_${src}_s$seed
    [ -f "$run/run.json" ] || python3 -m crack_tf.train --flagfile=configs/crackmix_pretrained.cfg \
        --data_dir="$train" --eval_sources="$src" --weights="$backbone" --seed="$seed" --model_dir="$run" \
        2>&1 | tee "$OUT/$(basename "$run").log"
    python3 tools/site_margins.py --run="$run" || continue
    mkdir -p "$OUT/loso/$(basename "$run")"
    cp "$run/run.json" "$run/margins.npz" "$OUT/loso/$(basename "$run")/"
  done
done
python3 tools/few_shot_curve.py --runs="$OUT/loso/*" --out="$OUT/few_shot" --fit=threshold,temperature+threshold
ls -la "$OUT"
