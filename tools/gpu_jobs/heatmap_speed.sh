#!/usr/bin/env bash
# Heatmap wall time of one 4096 x 4096 photo (SIDE=<pixels> for another size) at window 128, stride 64 on the GPU machine (issue 16:
# <= 5 s), this checkout against .before (= commit 746f4dc, `git archive 746f4dc | tar -x -C .before`)
# side by side in one run: a random-weight resnet50_aspp at 224 px (the photos recipe's model;
# weights do not change the speed), two copies of the photo per process (the first pays model load
# and compilation, the second is warm), every output written (maps, overlay, boxes).
source tools/gpu_jobs/common.sh
d=/tmp/hmspeed; rm -rf $d; mkdir -p $d
python3 -c "
import numpy as np; from PIL import Image
rng = np.random.default_rng(0)
Image.fromarray(np.clip(rng.normal(140, 25, (${SIDE:-4096}, ${SIDE:-4096}, 3)), 0, 255).astype('uint8')).save('$d/p1.jpg', quality=90)"
cp $d/p1.jpg $d/p2.jpg
(cd .before && python3 -c "from crack_tf import models; models.get('resnet50_aspp', input_shape=(224, 224, 3)).save('$d/m.keras')")
timed() {  # timed <label> <dir to run in> <heatmap flags...>
  local label=$1 dir=$2; shift 2; local start=$EPOCHREALTIME
  (cd "$dir" && python3 -m crack_tf.heatmap --model=$d/m.keras --window=128 --stride=64 "$@" \
      --output_dir=$d/out_$label $d/p1.jpg $d/p2.jpg) 2>&1 | grep -E "^\[|^summary|^error|Error:" | sed "s/^/$label: /"
  awk -v a="$start" -v b="$EPOCHREALTIME" -v l="$label" 'BEGIN { printf "%s: process wall %.1f s\n", l, b - a }'
}
{ timed before_b64 .before --batch=64
  timed after_b64 . --batch=64
  timed after_b256 . --batch=256
  timed after_b512 . --batch=512; } 2>&1 | tee "$OUT/heatmap_speed.log"
