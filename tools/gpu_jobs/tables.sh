#!/usr/bin/env bash
# The paper's tables 2 and 3 with the photos recipe and the crack-domain pretrained backbone
# standing in for ImageNet (run after recipe.sh in the same machine, or it pretrains first):
#   TABLE=table2 bash tools/gpu_jobs/tables.sh      # 13 rows x 3 seeds
#   TABLE=table3 bash tools/gpu_jobs/tables.sh      # 3 rows x 3 seeds
SECONDS=0
source tools/gpu_jobs/common.sh
table=${TABLE:-table2}
if [ ! -f runs/pretrain/crack.weights.h5 ]; then
  mkdir -p runs/pretrain
  timeout ${PRETRAIN_S:-170} python3 tools/pretrain.py --mode=crack --data_dir=uavcrack,deepcrack \
      --data_root=../shared/data --image_size=224 --crop_side=96,192 --steps=1000 --batch_size=128 \
      --precision=bf16 --lr=0.002 --data_workers=14 --data_processes --log_every=100 \
      --output=runs/pretrain/crack.weights.h5 2>&1 | tee "$OUT/pretrain.log"
fi
BUDGET_S=$(( ${JOB_S:-570} - SECONDS )) exec bash tools/gpu_jobs/grid.sh "configs/ablation_$table.cfg" 0,1,2 \
    ${PARALLEL:-13} --base_flagfile=configs/uav75_photos.cfg --output_dir="runs/ablation_${table}_pretrained" \
    --extra=--weights=runs/pretrain/crack.weights.h5,--tta=d4,--tensorboard=false
