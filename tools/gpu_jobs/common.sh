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
# The crack-domain backbone (tools/pretrain.py --mode=crack) unless runs/pretrain already has it:
#   pretrain_backbone <default timeout s>   (PRETRAIN_S / PRETRAIN_STEPS override)
pretrain_backbone() {
  [ -f runs/pretrain/crack.weights.h5 ] && return 0
  mkdir -p runs/pretrain
  timeout "${PRETRAIN_S:-$1}" python3 tools/pretrain.py --mode=crack --data_dir=uavcrack,deepcrack \
      --data_root=../shared/data --image_size=224 --crop_side=96,192 --steps="${PRETRAIN_STEPS:-1000}" \
      --batch_size=128 --precision=bf16 --lr=0.002 --data_workers=14 --data_processes --log_every=100 \
      --output=runs/pretrain/crack.weights.h5 2>&1 | tee "$OUT/pretrain.log"
}
