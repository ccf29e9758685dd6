#!/usr/bin/env bash
# crack_tf.report's rate against --write_threads (issue 24: the report ran at 45% of predict's rate
# with 2 threads writing each photo's files), side by side in one call on the GPU machine: N (default
# 32) synthetic JPEGs of 4096 x 4096 (SQ="<w> <h>" for a small local try), the random 224-px model of
# flight_speed.sh, --mode=dense --tta=none, one uncounted run first for a warm compile cache, then
# THREADS (default "2 4 8 2": the repeat of 2 shows the drift). One JSON line per run in
# $OUT/report_threads.jsonl (tools/bench_flight.py flight: progress_rate_per_s, wall_s); about 2 minutes.
SECONDS=0
source tools/gpu_jobs/common.sh
d=${FLIGHT_DIR:-/tmp/flight}; mkdir -p $d
J=$OUT/report_threads.jsonl; : > "$J"
flight_inputs $d rt "${N:-32}" ${SQ:-4096 4096}
echo "photos and model ready after ${SECONDS}s" | tee "$OUT/report_threads.log"
for t in warmup ${THREADS:-2 4 8 2}; do
  rm -rf $d/report
  python3 tools/bench_flight.py flight "report_threads_$t" . $d/rt "$J" -- --model=$d/m.keras --tta=none \
      --window=128 --stride=64 --mode=dense --compile_cache_dir=$d/jax_cache --out=$d/report \
      --write_threads=${t/warmup/2} 2>&1 | tee -a "$OUT/report_threads.log"
done
echo "done after ${SECONDS}s" | tee -a "$OUT/report_threads.log"
