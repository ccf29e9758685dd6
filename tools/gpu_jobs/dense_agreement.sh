#!/usr/bin/env bash
# Dense vs window-by-window verdicts on the val photos of every source, and what D4 buys, with a
# trained model (issue 24, points 1 and 3), on the GPU machine. MODEL=<.keras> uses a model already
# there (e.g. the shipped one, carried); else configs/crackmix.cfg (UAV75 + uavcrack + deepcrack, from
# scratch, about 2 minutes on an H200) is trained first into runs/crackmix. Needs the three sources in
# .data/ (tools/gpu_jobs/stage_data.sh uav75 uavcrack deepcrack, carried). JSON in $OUT/agreement.json.
# TTA=none,d4 (default) and LIMIT=<photos per source> for a shorter try.
SECONDS=0
source tools/gpu_jobs/common.sh
model=${MODEL:-runs/crackmix/final.keras}
if [ ! -f "$model" ]; then
  timeout "${TRAIN_S:-300}" python3 -m crack_tf.train --flagfile=configs/crackmix.cfg --data_root=../shared/data \
      --model_dir=runs/crackmix 2>&1 | tail -25 | tee "$OUT/train_crackmix.log"
  cp runs/crackmix/run.json "$OUT/crackmix_run.json" 2>/dev/null
fi
[ -f "$model" ] || { echo "no model at $model"; exit 1; }
echo "model ready after ${SECONDS}s" | tee "$OUT/agreement.log"
python3 tools/dense_agreement.py --model="$model" --sources=uav75,uavcrack,deepcrack --data_root=../shared/data \
    --tta=${TTA:-none,d4} ${LIMIT:+--limit=$LIMIT} --json_out="$OUT/agreement.json" 2>&1 | grep -v "^WARNING\|^I0000" | tee -a "$OUT/agreement.log"
echo "done after ${SECONDS}s" | tee -a "$OUT/agreement.log"
