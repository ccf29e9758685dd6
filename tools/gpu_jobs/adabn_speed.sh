#!/usr/bin/env bash
# AdaBN cost on the GPU machine (crack_tf.training.adabn): both methods on resnet50_aspp at 224 px
# (random init, bf16 like the trained models), 1,024 random crops in batches of 128, each timed
# twice (the first also pays JAX's per-op compilation); the lines land in $OUT/adabn_speed.log.
source tools/gpu_jobs/common.sh
timeout "${JOB_S:-500}" python3 - <<'PY' 2>&1 | tee "$OUT/adabn_speed.log"
import time

import keras
import numpy as np

import crack_tf.models
from crack_tf.training.adabn import adapt_batchnorm

keras.mixed_precision.set_global_policy("mixed_bfloat16")
model = crack_tf.models.get("resnet50_aspp", input_shape=(224, 224, 3))
crops = np.random.default_rng(0).integers(0, 256, (1024, 224, 224, 3), dtype=np.uint8)
for method in ("batch", "exact", "batch", "exact"):
    start = time.time()
    adapt_batchnorm(model, crops, batch_size=128, method=method)
    print(f"adabn {method}: 56 BatchNorm layers, 1,024 crops at 224 px, batch 128: {time.time() - start:.1f} s",
          flush=True)
PY
