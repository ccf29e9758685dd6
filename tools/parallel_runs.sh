#!/usr/bin/env bash
# Runs several trainings of crack_tf.train at once on ONE accelerator (small models leave
# most of an H100/H200 idle), each with its own overrides, log and model_dir.
#
#   tools/parallel_runs.sh OUT_ROOT "name1: --flag=v ..." "name2: --flag=v ..." -- COMMON FLAGS...
#
# JAX preallocation is capped per process so the runs share the GPU memory. The trainings end
# with this script: interrupted (Ctrl-C, TERM) it stops them, killed (-9) the kernel does
# (each runs under `python -m crack_tf.procs`, which ties it to this shell).
set -uo pipefail
out_root=$1; shift
specs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do specs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
common=("$@")
n=${#specs[@]}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-$(python -c "print(round(0.9/$n, 3))")}
mkdir -p "$out_root"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
for spec in "${specs[@]}"; do
  name=${spec%%:*}; flags=${spec#*:}
  # shellcheck disable=SC2086
  python -m crack_tf.procs -- python -m crack_tf.train "${common[@]}" $flags --model_dir="$out_root/$name" > "$out_root/$name.log" 2>&1 &
  pids+=($!)
  echo "started $name (pid $!): $flags"
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { status=1; echo "FAILED: ${specs[$i]%%:*} (see $out_root/${specs[$i]%%:*}.log)"; }
done
for spec in "${specs[@]}"; do
  name=${spec%%:*}
  python - "$out_root/$name" <<'PY'
import json, sys, os
d = sys.argv[1]
p = os.path.join(d, "run.json")
if os.path.exists(p):
    r = json.load(open(p))
    v, t = r["metrics"]["val"], r["metrics"]["train"]
    print(f"{os.path.basename(d):28s} val acc={v['accuracy']:.4f} P={v['precision']:.4f} R={v['recall']:.4f} "
          f"train acc={t['accuracy']:.4f} best={r['best']['value']} @ep{r['best']['epoch']} "
          f"img/s={r['throughput_images_per_second']:.0f} wall={r['wall_seconds']:.0f}s")
PY
done
exit $status
