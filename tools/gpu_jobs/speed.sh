#!/usr/bin/env bash
# End-to-end trainer throughput vs model-only, one run on the GPU machine (docs/PERFORMANCE.md):
# the loader alone (threads / processes), the trainer before this work (.before = commit 746f4dc,
# configs/uav75.cfg on the UAV75 tiles) and after (configs/uav75_photos.cfg, cold then warm
# compile cache, threads, processes with shared-memory batches and with pickles), all at resnet50_aspp, 224 px, bf16, batch 128.
#   data: .data/uav75 (photos + masks); the tiles are cut from it here (= uav75_tiles).
source tools/gpu_jobs/common.sh
[ -d ../shared/data/uav75_tiles ] || python3 tools/prepare_tiles.py --input_dir=../shared/data/uav75 --keep_splits \
    --tile_size=128 --min_crack_pixels=40 --out_dir=../shared/data/uav75_tiles > "$OUT/tiles.log" 2>&1 || exit 1
python3 tools/benchmark.py --models=resnet50_aspp --aspp_impls=auto --impls=keras --modes=train --batch=128 \
    --size=224 --precision=bf16 --steps=${STEPS:-30} --warmup=5 --loader_workers=${LOADER_WORKERS:-8,14} \
    --e2e="flagfile=configs/uav75_photos.cfg;label=photos_threads" \
    --e2e="flagfile=configs/uav75.cfg;label=before_tiles;repo=.before;repeat=1" \
    --e2e="flagfile=configs/uav75_photos.cfg;label=photos_processes;repeat=1;extra=--loader_processes=true --loader_workers=12" \
    --e2e="flagfile=configs/uav75_photos.cfg;label=photos_processes_pipe;repeat=1;extra=--loader_processes=true --loader_workers=12 --loader_shared_memory=false" \
    --e2e_repeat=2 --e2e_steps=${E2E_STEPS:-60} --json_out="$OUT/bench.jsonl" "$@" 2>&1 | tee "$OUT/bench.log"
