#!/usr/bin/env bash
# The recipe grid of issue 15 on the GPU machine: crack-domain pretraining of the ResNet50 backbone
# (alone on the GPU), then configs/ablation_recipe.cfg (fine-tunes from it and scratch candidates).
#   ONLY=<regex> picks grid rows (ablate --only); a backbone already in runs/pretrain is kept (the
#   machine stays warm between calls, so a second call resumes the grid where the first stopped).
SECONDS=0
source tools/gpu_jobs/common.sh
mkdir -p runs/pretrain
[ -f runs/pretrain/crack.weights.h5 ] || timeout ${PRETRAIN_S:-200} python3 tools/pretrain.py --mode=crack --data_dir=uavcrack,deepcrack \
    --data_root=../shared/data --image_size=224 --crop_side=96,192 --steps=${PRETRAIN_STEPS:-1000} \
    --batch_size=128 --precision=bf16 --lr=0.002 --data_workers=14 --data_processes --log_every=100 \
    --output=runs/pretrain/crack.weights.h5 2>&1 | tee "$OUT/pretrain.log"
cp runs/pretrain/crack.weights.h5.json "$OUT/" 2>/dev/null
[ -f runs/pretrain/crack.weights.h5 ] || { echo "pretraining failed: no weights"; exit 1; }
# The whole job must end (packed) inside one 600 s call: the grid gets what is left.
BUDGET_S=$(( ${JOB_S:-565} - SECONDS )) exec bash tools/gpu_jobs/grid.sh configs/ablation_recipe.cfg 0,1,2 ${PARALLEL:-12} \
    ${ONLY:+--only=$ONLY}
