#!/usr/bin/env bash
# The paper's tables 2 and 3 with the photos recipe and the crack-domain pretrained backbone
# standing in for ImageNet (run after recipe.sh in the same machine, or it pretrains first):
#   TABLE=table2 bash tools/gpu_jobs/tables.sh      # 13 rows x 3 seeds
#   TABLE=table3 bash tools/gpu_jobs/tables.sh      # 3 rows x 3 seeds
#   ONLY=<regex> picks rows (ablate --only). Rows that are the same training as a finished run of
#   the recipe grid (table 2 resnet50 / layer1_x4, table 3 rates_2_4_8 = resnet50_pretrained /
#   uav75_pretrained) link to it instead of training again (ablate checks the flags agree).
SECONDS=0
source tools/gpu_jobs/common.sh
table=${TABLE:-table2}
out_dir="runs/ablation_${table}_pretrained"
pretrain_backbone 170
reuse() {  # reuse <table row> <recipe row>
  for s in 0 1 2; do
    src="runs/ablation_recipe/${2}_s$s"
    [ -f "$src/run.json" ] && [ ! -e "$out_dir/${1}_s$s" ] && ln -s "$PWD/$src" "$out_dir/${1}_s$s"
  done
  return 0
}
mkdir -p "$out_dir"
if [ "$table" = table2 ]; then reuse resnet50 resnet50_pretrained; reuse layer1_x4 uav75_pretrained; fi
if [ "$table" = table3 ]; then reuse rates_2_4_8 uav75_pretrained; fi
GRID_OUT="$out_dir" BUDGET_S=$(( ${JOB_S:-570} - SECONDS )) exec bash tools/gpu_jobs/grid.sh "configs/ablation_$table.cfg" 0,1,2 \
    ${PARALLEL:-13} --base_flagfile=configs/uav75_photos.cfg ${ONLY:+--only=$ONLY} \
    --extra=--weights=runs/pretrain/crack.weights.h5,--tta=d4,--tensorboard=false,--loader_processes=false
