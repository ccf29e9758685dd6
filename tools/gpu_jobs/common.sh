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
