#!/usr/bin/env bash
# AdaBN's cost on the GPU machine (crack_tf.training.adabn), its eager, compiled and cached passes:
# both methods on resnet50_aspp at 224 px (random init, bf16 like the trained models), 1,024 random
# crops in batches of 128, each timed twice (the first also pays the compilation), and how far the
# other kinds' statistics come out from the eager ones' (tools/bench_adabn.py). Lines in $OUT/adabn_speed.log, JSON in
# $OUT/adabn_speed.json. Carry .wheels only.
source tools/gpu_jobs/common.sh
timeout "${JOB_S:-500}" python3 tools/bench_adabn.py --image_size=224 --images="${IMAGES:-1024}" --batch_size=128 \
    --precision=bf16 --repeat=2 --output="$OUT/adabn_speed.json" 2>&1 | grep -v "^WARNING\|^I0000" | tee "$OUT/adabn_speed.log"
