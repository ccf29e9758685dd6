#!/usr/bin/env bash
# The recipe grid of issue 15 on the GPU machine: crack-domain pretraining of the ResNet50 backbone
# (alone on the GPU), then configs/ablation_recipe.cfg (fine-tunes from it and scratch candidates).
#   ONLY=<regex> picks grid rows (ablate --only); a backbone already in runs/pretrain is kept (the
#   machine stays warm between calls, so a second call resumes the grid where the first stopped).
SECONDS=0
source tools/gpu_jobs/common.sh
pretrain_backbone 200
cp runs/pretrain/crack.weights.h5.json "$OUT/" 2>/dev/null
[ -f runs/pretrain/crack.weights.h5 ] || { echo "pretraining failed: no weights"; exit 1; }
# The whole job must end (packed) inside one 600 s call: the grid gets what is left.
BUDGET_S=$(( ${JOB_S:-565} - SECONDS )) exec bash tools/gpu_jobs/grid.sh configs/ablation_recipe.cfg 0,1,2 ${PARALLEL:-12} \
    ${ONLY:+--only=$ONLY}
