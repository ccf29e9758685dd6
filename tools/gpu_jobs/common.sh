# Sourced by the GPU job scripts: Keras on JAX from the carried wheels, the carried data
# (.data/) where the configs expect ../shared/data, results under $OUT.
set -uo pipefail
[ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps .wheels/*.whl || exit 1
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export OUT=${OUT:-$PWD/runs/gpu_out}
mkdir -p "$OUT" ../shared
[ -e ../shared/data ] || ln -s "$PWD/.data" ../shared/data
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; free -g | head -2;
  python3 -c "import jax, keras, numpy, PIL; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'numpy', numpy.__version__, 'PIL', PIL.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
# A pretrained backbone (tools/pretrain.py) unless its output file already exists:
#   pretrain_backbone <default timeout s>
# With no PRETRAIN_* set: the crack-domain backbone of the recipe (crack mode, uavcrack + deepcrack
# train splits, 1,000 steps) -> runs/pretrain/crack.weights.h5. Overrides (env): PRETRAIN_S (timeout),
# PRETRAIN_STEPS (1000), PRETRAIN_MODE (crack | simclr | ...), PRETRAIN_DATA (uavcrack,deepcrack),
# PRETRAIN_OUT (runs/pretrain/crack.weights.h5), PRETRAIN_INIT (start from these backbone weights),
# PRETRAIN_EXTRA (more flags, e.g. "--checkpoint_every=500 --gamma=0.3"), PRETRAIN_WORKERS (14 loader
# processes; fewer when backbones pretrain side by side), PRETRAIN_LOG ($OUT/pretrain.log). A run killed by the timeout
# with --checkpoint_every continues from its checkpoint at the next call (same machine).
pretrain_backbone() {
  local out=${PRETRAIN_OUT:-runs/pretrain/crack.weights.h5}
  [ -f "$out" ] && return 0
  mkdir -p "$(dirname "$out")"
  # shellcheck disable=SC2086  # PRETRAIN_EXTRA is a list of flags
  timeout "${PRETRAIN_S:-$1}" python3 tools/pretrain.py --mode="${PRETRAIN_MODE:-crack}" \
      --data_dir="${PRETRAIN_DATA:-uavcrack,deepcrack}" \
      --data_root=../shared/data --image_size=224 --crop_side=96,192 --steps="${PRETRAIN_STEPS:-1000}" \
      --batch_size=128 --precision=bf16 --lr=0.002 --data_workers="${PRETRAIN_WORKERS:-14}" --data_processes \
      --log_every=100 ${PRETRAIN_INIT:+--init="$PRETRAIN_INIT"} ${PRETRAIN_EXTRA:-} \
      --output="$out" 2>&1 | tee -a "${PRETRAIN_LOG:-$OUT/pretrain.log}"
}
