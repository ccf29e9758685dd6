#!/usr/bin/env bash
# Flight speed of crack_tf.predict / report (issue 24) on the GPU machine, before and after in one run:
# .before = the checkout of commit e162231 (`git archive e162231 | tar -x -C .before`, made beside this
# one before the call), its window-by-window path, against this checkout's --mode=dense and its
# --mode=windows cut on the device. A random-weight resnet50_aspp at 224 px (weights=None, float32: the
# speed does not depend on the weights), window 128, stride 64, --tta=none. Folders of N (default 200)
# synthetic JPEGs of 4096 x 4096 and of 6000 x 4000 (written once per machine); the slow "before" path
# and the warm-cache runs get the first NB (default 10) of them. One JSON line per run in
# $OUT/flight_speed.jsonl (tools/bench_flight.py flight: photos/s between the first and last row, the
# first photo's seconds, the process wall); the "cold" run starts from an empty JAX compile cache, the
# "warm" runs are later processes on that cache; dense_sq_bf16 is the dense run in bfloat16 (the
# shipped models train in it). Must end inside one 600 s call (about 6 minutes).
# SQ / WIDE="<width> <height>" change the two photo sizes (a small local try: SQ="300 300" WIDE="400 260").
SECONDS=0
source tools/gpu_jobs/common.sh
d=${FLIGHT_DIR:-/tmp/flight}; mkdir -p $d
N=${N:-200}; NB=${NB:-10}
J=$OUT/flight_speed.jsonl; : > "$J"
flight_inputs $d sq "$N" ${SQ:-4096 4096}
flight_inputs $d wide "$N" ${WIDE:-6000 4000}
for s in sq wide; do
  rm -rf $d/${s}_few; mkdir -p $d/${s}_few
  ls $d/$s | head -"$NB" | while read -r f; do ln -s $d/$s/$f $d/${s}_few/$f; done
done
echo "photos and model ready after ${SECONDS}s" | tee "$OUT/flight_speed.log"
common=(--model=$d/m.keras --tta=none --window=128 --stride=64)
cache=$d/jax_cache; rm -rf $cache
run() { python3 tools/bench_flight.py flight "$@" 2>&1 | tee -a "$OUT/flight_speed.log"; }
run before_sq .before $d/sq_few "$J" -- "${common[@]}"
run dense_sq_cold . $d/sq "$J" -- "${common[@]}" --mode=dense --compile_cache_dir=$cache
run dense_sq_warm . $d/sq_few "$J" -- "${common[@]}" --mode=dense --compile_cache_dir=$cache
run dense_sq_bf16 . $d/sq "$J" -- "${common[@]}" --mode=dense --precision=bf16 --compile_cache_dir=$cache
run windows_device_sq_b256 . $d/sq_few "$J" -- "${common[@]}" --mode=windows --batch=256 --compile_cache_dir=$cache
run windows_device_sq_b256_warm . $d/sq_few "$J" -- "${common[@]}" --mode=windows --batch=256 --compile_cache_dir=$cache
run before_wide .before $d/wide_few "$J" -- "${common[@]}"
run dense_wide_cold . $d/wide "$J" -- "${common[@]}" --mode=dense --compile_cache_dir=$cache
run dense_wide_warm . $d/wide_few "$J" -- "${common[@]}" --mode=dense --compile_cache_dir=$cache
rm -rf $d/report; run report_dense_sq . $d/sq_few "$J" -- "${common[@]}" --mode=dense --compile_cache_dir=$cache --out=$d/report
rm -rf $d/report; run report_before_sq .before $d/sq_few "$J" -- "${common[@]}" --out=$d/report
echo "done after ${SECONDS}s" | tee -a "$OUT/flight_speed.log"
