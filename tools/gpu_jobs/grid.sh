#!/usr/bin/env bash
# Runs one ablation grid on the GPU machine within a time budget and packs what it produced:
#   tools/gpu_jobs/grid.sh configs/ablation_photos.cfg 0,1,2 15 [extra ablate flags]
# run.json / history.jsonl / logs of every run come back in $OUT/<table>.tgz (no models: they are
# larger than what returns); results.md / results.csv also as plain files (<grid folder>_results.*).
source tools/gpu_jobs/common.sh
grid=$1; seeds=$2; parallel=$3; shift 3
budget=${BUDGET_S:-520}
out_dir=${GRID_OUT:-runs/$(basename "$grid" .cfg)}  # GRID_OUT: the grid folder when not the default
[ -d ../shared/data/uav75_tiles ] || [ ! -d ../shared/data/uav75 ] || python3 tools/prepare_tiles.py \
    --input_dir=../shared/data/uav75 --keep_splits --tile_size=128 --min_crack_pixels=40 \
    --out_dir=../shared/data/uav75_tiles > "$OUT/tiles.log" 2>&1
timeout --signal=TERM "$budget" python3 tools/ablate.py --flagfile="$grid" --seeds="$seeds" --parallel="$parallel" \
    "$@" --output_dir="$out_dir" 2>&1 | tee "$OUT/$(basename "$grid" .cfg).log"
python3 tools/ablate.py --flagfile="$grid" --seeds="$seeds" "$@" --output_dir="$out_dir" --report_only >/dev/null 2>&1
for f in results.md results.csv; do cp "$out_dir/$f" "$OUT/$(basename "$out_dir")_$f" 2>/dev/null; done
tar czf "$OUT/$(basename "$grid" .cfg).tgz" --exclude='*.keras' --exclude='ckpt' --exclude='tensorboard' \
    --exclude='*.weights.h5' "$out_dir"
ls -la "$OUT"
