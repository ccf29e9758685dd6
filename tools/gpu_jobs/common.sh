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
# GPU memory of one fine-tuning run side by side with others: 9.3 GB (0.065 of an H200, what the
# 2026-12-04 grids ran with), as a fraction of this GPU's memory, and how many such runs fit (leaving
# room for the CUDA contexts). An H100 (80 GB) fits 7, an H200 13. RUN_GB overrides the 9.3.
gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -dc 0-9)
RUN_FRACTION=$(awk -v m="${gpu_mib:-143771}" -v g="${RUN_GB:-9.3}" 'BEGIN {f = g * 1024 / m;
    printf "%.3f", (f > 0.9 ? 0.9 : f)}')
RUNS_FIT=$(awk -v f="$RUN_FRACTION" 'BEGIN {n = int(0.86 / f); print (n < 1 ? 1 : n)}')
export RUN_FRACTION RUNS_FIT
# The crop loader of runs side by side: worker processes sharing the machine's cores (threads in one
# process held the GIL: on 2026-12-06, 7 robustaug runs on an H100 rendered 130 img/s each and the GPU
# sat at 0-56 %). Same batches either way (docs/DATA.md). Prints the ablate flag:
#   loader_extra <runs side by side>
loader_extra() {
  local workers=$(( ($(nproc) - 2) / ${1:-1} ))
  echo "--extra=--loader_processes=true,--loader_workers=$(( workers < 1 ? 1 : workers ))"
}
# A pretrained backbone (tools/pretrain.py) unless its output file already exists:
#   pretrain_backbone <default timeout s>
# With no PRETRAIN_* set: the crack-domain backbone of the recipe (crack mode, uavcrack + deepcrack
# train splits, 1,000 steps) -> runs/pretrain/crack.weights.h5. Overrides (env): PRETRAIN_S (timeout),
# PRETRAIN_STEPS (1000), PRETRAIN_MODE (crack | simclr | ...), PRETRAIN_DATA (uavcrack,deepcrack),
# PRETRAIN_OUT (runs/pretrain/crack.weights.h5), PRETRAIN_INIT (start from these backbone weights),
# PRETRAIN_EXTRA (more flags, e.g. "--checkpoint_every=500 --gamma=0.3"), PRETRAIN_WORKERS (14 loader
# processes; fewer when backbones pretrain side by side), PRETRAIN_LOG ($OUT/pretrain.log). A run killed
# by the timeout with --checkpoint_every continues from its checkpoint at the next call (same machine).
# Deterministic kernels (--deterministic): without them two H100 calls on 2026-12-06 pretrained one
# seed into two backbones (losses apart from the first 100 steps), so "one seed, one model" failed there;
# the synthetic batches also varied with the loader's worker count until tools/pretrain.py's Batches fix
# (docs/RESULTS.md 00000000).
pretrain_backbone() {
  local out=${PRETRAIN_OUT:-runs/pretrain/crack.weights.h5}
  [ -f "$out" ] && return 0
  mkdir -p "$(dirname "$out")"
  # shellcheck disable=SC2086  # PRETRAIN_EXTRA is a list of flags
  timeout "${PRETRAIN_S:-$1}" python3 tools/pretrain.py --mode="${PRETRAIN_MODE:-crack}" \
      --data_dir="${PRETRAIN_DATA:-uavcrack,deepcrack}" \
      --data_root=../shared/data --image_size=224 --crop_side=96,192 --steps="${PRETRAIN_STEPS:-1000}" \
      --batch_size=128 --precision=bf16 --lr=0.002 --data_workers="${PRETRAIN_WORKERS:-14}" --data_processes \
      --log_every=100 --deterministic ${PRETRAIN_INIT:+--init="$PRETRAIN_INIT"} ${PRETRAIN_EXTRA:-} \
      --output="$out" 2>&1 | tee -a "${PRETRAIN_LOG:-$OUT/pretrain.log}"
}

# Leave-one-source-out backbones, side by side on the one GPU:
#   fold_backbones <crack | synth_crack | simclr_crack> <fold,fold,...>
#       -> runs/pretrain/<loso | loso_synth | loso_simclr>_<fold>.weights.h5
# Each fold's backbone is pretrained (crack mode) on that fold's sources only (FOLD_SOURCES); with
# synth_crack all start from one backbone pretrained on synthetic cracks (SYNTH_STEPS=1000, no real
# source seen); simclr_crack puts self-supervised contrastive pretraining (SimCLR, SIMCLR_STEPS=1000 of
# 64 pairs: the 128 images of a crack step, which fit the fold's fifth of an H100; masks unused) on the
# train photos of that fold's sources between the two, so that no stage sees the left-out source
# (runs/pretrain/simclr_<fold>.weights.h5, checkpoints every 250 steps, the crack stage's every 500:
# the chain goes on over calls). Logs and sidecars in runs/pretrain_logs/.
# Existing backbones are kept. BACKBONE_REPEAT=1 (synth_crack): the synthetic backbone pretrained a
# second time beside the folds, and whether the two are identical (same_backbone), the check that
# --deterministic makes a seed one backbone.
# FOLD_STEPS (default 1000): each fold's crack-mode steps; another count makes backbones of their own,
# <stem><steps>_<fold> (e.g. loso_synth3000_no_uav75: the longer-pretraining candidate), with a
# checkpoint every 500 steps so that one cut off at its time limit goes on at the next call. For
# simclr_crack the count is the SimCLR stage's steps instead (loso_simclr3000_<fold> from
# simclr3000_<fold>: longer self-supervised pretraining; its crack stage stays 1,000 steps).
# Returns 3 when a backbone stopped with its checkpoint kept (call again), 1 when one failed.
declare -A FOLD_SOURCES=([all]=uav75,uavcrack,deepcrack [no_uav75]=uavcrack,deepcrack
                         [no_uavcrack]=uav75,deepcrack [no_deepcrack]=uav75,uavcrack)
fold_backbones() {
  local kind=$1 folds=$2 stem=loso init="" fold pids=()
  mkdir -p runs/pretrain runs/pretrain_logs
  case $kind in crack) ;; synth_crack) stem=loso_synth;; simclr_crack) stem=loso_simclr;;
    *) echo "fold_backbones: unknown kind $kind: crack, synth_crack or simclr_crack"; return 1;; esac
  if [ "$kind" != crack ]; then
    init=runs/pretrain/synthetic.weights.h5
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 PRETRAIN_MODE=synthetic PRETRAIN_STEPS="${SYNTH_STEPS:-1000}" \
        PRETRAIN_OUT=$init PRETRAIN_LOG=runs/pretrain_logs/synthetic.log pretrain_backbone 200 > /dev/null
    tail -1 runs/pretrain_logs/synthetic.log 2>/dev/null
    cp $init.json runs/pretrain_logs/synthetic.pretrain.json 2>/dev/null
    [ -f $init ] || { echo "synthetic pretraining failed: no weights"; return 1; }
  fi
  local steps=${FOLD_STEPS:-1000} resumable="" crack_steps simclr_steps=${SIMCLR_STEPS:-1000} simclr=simclr
  [ "$steps" = 1000 ] || { stem+=$steps; resumable="--checkpoint_every=500"; }
  crack_steps=$steps
  if [ "$kind" = simclr_crack ]; then  # the count is SimCLR's (its files named by it), crack mode 1,000
    resumable="--checkpoint_every=500" crack_steps=1000
    [ "$steps" = 1000 ] || { simclr_steps=$steps simclr=simclr$steps; }
  fi
  # the machine's loader processes shared by the folds (4 each for three on 16 cores, 14 for one alone:
  # the batches do not depend on the count, tools/pretrain.py Batches)
  local n_folds; n_folds=$(csv_len "$folds")
  local workers=$(( ($(nproc) - 2) / (n_folds > 0 ? n_folds : 1) ))
  workers=$(( workers < 2 ? 2 : (workers > 14 ? 14 : workers) ))
  for fold in ${folds//,/ }; do  # each with a fifth of the GPU's memory
    [ -n "${FOLD_SOURCES[$fold]:-}" ] || { echo "unknown fold $fold: choose from ${!FOLD_SOURCES[*]}"; return 1; }
    (  # the fold's chain: [SimCLR on its sources' train photos ->] crack mode on its sources
      export XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 PRETRAIN_DATA="${FOLD_SOURCES[$fold]}" PRETRAIN_WORKERS=$workers
      fold_init=$init start=$SECONDS
      if [ "$kind" = simclr_crack ]; then
        fold_init=runs/pretrain/${simclr}_$fold.weights.h5
        PRETRAIN_MODE=simclr PRETRAIN_INIT="$init" PRETRAIN_OUT=$fold_init PRETRAIN_STEPS="$simclr_steps" \
            PRETRAIN_EXTRA="--crop=128 --batch_size=64 --checkpoint_every=250" \
            PRETRAIN_LOG="runs/pretrain_logs/${simclr}_$fold.log" pretrain_backbone $(( 900 * simclr_steps / 1000 )) > /dev/null
        cp "$fold_init.json" "runs/pretrain_logs/${simclr}_$fold.pretrain.json" 2>/dev/null
        [ -f "$fold_init" ] || exit 0  # cut off (its checkpoint kept) or failed: told apart below
        [ -z "${PRETRAIN_S:-}" ] || export PRETRAIN_S=$(( PRETRAIN_S - (SECONDS - start) ))  # the call's rest
        [ "${PRETRAIN_S:-1}" -gt 0 ] || exit 0
      fi
      PRETRAIN_INIT="$fold_init" PRETRAIN_OUT="runs/pretrain/${stem}_$fold.weights.h5" PRETRAIN_STEPS="$crack_steps" \
          PRETRAIN_EXTRA="${PRETRAIN_EXTRA:-}${resumable:+ $resumable}" \
          PRETRAIN_LOG="runs/pretrain_logs/${stem}_$fold.log" pretrain_backbone $(( 300 * crack_steps / 1000 )) > /dev/null
    ) &
    pids+=($!)
  done
  if [ "$kind" = synth_crack ] && [ "${BACKBONE_REPEAT:-0}" != 0 ]; then  # the synthetic backbone again, beside
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.15 PRETRAIN_MODE=synthetic PRETRAIN_STEPS="${SYNTH_STEPS:-1000}" \
        PRETRAIN_OUT=runs/pretrain/synthetic_repeat.weights.h5 PRETRAIN_WORKERS=2 \
        PRETRAIN_LOG=runs/pretrain_logs/synthetic_repeat.log pretrain_backbone 300 > /dev/null &
    pids+=($!)
  fi
  [ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
  if [ -f runs/pretrain/synthetic_repeat.weights.h5.json ]; then
    cp runs/pretrain/synthetic_repeat.weights.h5.json runs/pretrain_logs/synthetic_repeat.pretrain.json
    same_backbone $init.json runs/pretrain/synthetic_repeat.weights.h5.json | tee runs/pretrain_logs/backbone_repeat.txt
  fi
  local out rc=0
  for fold in ${folds//,/ }; do
    out=runs/pretrain/${stem}_$fold.weights.h5
    tail -1 "runs/pretrain_logs/${stem}_$fold.log" 2>/dev/null
    cp "$out.json" "runs/pretrain_logs/${stem}_$fold.pretrain.json" 2>/dev/null
    [ -f "$out" ] && continue
    if [ "$kind" = simclr_crack ]; then  # the chain goes on where it stopped: SimCLR's checkpoint or weights
      [ -d "$out.ckpt" ] || [ -d "runs/pretrain/${simclr}_$fold.weights.h5.ckpt" ] ||
          [ -f "runs/pretrain/${simclr}_$fold.weights.h5" ] || { echo "pretraining $fold failed: no weights"; return 1; }
    else
      [ -n "$resumable" ] && [ -d "$out.ckpt" ] || { echo "pretraining $fold failed: no weights"; return 1; }
    fi
    echo "pretraining $fold stopped at its time limit, checkpoint kept: call again"
    rc=3
  done
  return $rc
}

# Whether two pretraining sidecars (tools/pretrain.py's <weights>.json) hold the same backbone weights
# (their weights_sha256), printed as one line (status 1 when they differ):  same_backbone <a.json> <b.json>
same_backbone() { python3 tools/same_backbones.py "$1" "$2"; }

# Packs what has finished so far into $OUT/<name>.tgz (run.json, margins, histories, logs; no models and
# no features.npz: ~80 MB a run, read on the machine by tools/few_shot_curve.py --fit=last_layer):
#   pack_runs <name> <folder>...
pack_runs() {
  local name=$1; shift
  tar czf "$OUT/.$name.tgz" --exclude='*.keras' --exclude='ckpt' --exclude='*.weights.h5' --exclude='tensorboard' \
      --exclude='features.npz' \
      "$@" 2>/dev/null; mv -f "$OUT/.$name.tgz" "$OUT/$name.tgz"
}
# Runs <command...> every <s> seconds in the background until killed (kill $!):  every <s> <command...>
every() {
  local s=$1; shift
  ( trap 'kill $nap 2>/dev/null; exit 0' TERM  # the sleep too: else it holds the job's output open
    while :; do sleep "$s" & nap=$!; wait $nap; "$@"; done ) &
}
# Runs <command...> every 30 s until the job exits (e.g. a pack_runs), so a call cut short still
# returns what had finished:  start_packer <command...>
start_packer() {
  PACK_COMMAND=("$@")
  every 30 "$@"
  PACKER=$!
  trap 'kill $PACKER 2>/dev/null' EXIT  # also when a step fails
}
# Stops start_packer's loop, then runs its command a last time (nothing packs beside it)
final_pack() {
  kill $PACKER 2>/dev/null
  "${PACK_COMMAND[@]}"
}

# The seconds of a call of <job s> left for training once its backbones are made, packing included
# (25 s kept back): sets budget; returns 1 under 30 s, where the job packs and says call again
# (backbones made near a call's end once gave `timeout` a negative limit, 2026-12-07):
#   train_budget <job s> || { final_pack; echo "<job>: ${budget}s left to train: call again"; exit 0; }
train_budget() {
  budget=$(( $1 - SECONDS - 25 ))
  [ "$budget" -ge 30 ]
}

# Finished runs of a grid folder among the wanted ones (other rows, folds or seeds on a warm machine
# do not count): count_runs <grid dir> <row regex (ablate's --only)> <seeds,csv> [<folds,csv>]
# A run folder is <row>_<fold>_s<seed> (folds given) or <row>_s<seed>, finished when it has run.json.
count_runs() {
  local dir=$1 rows=$2 seeds=",$3," folds=${4:-} n=0 path name seed rest fold row
  for path in "$dir"/*/run.json; do
    [ -f "$path" ] || continue
    name=$(basename "$(dirname "$path")"); seed=${name##*_s}; rest=${name%_s*}
    [[ $seeds == *",$seed,"* ]] || continue
    row=$rest
    if [ -n "$folds" ]; then
      row=""
      for fold in ${folds//,/ }; do [[ $rest == *"_$fold" ]] && { row=${rest%_"$fold"}; break; }; done
      [ -n "$row" ] || continue
    fi
    grep -qE -- "$rows" <<< "$row" && n=$((n + 1))
  done
  echo "$n"
}
# How many entries a comma-separated list has (seeds, folds): csv_len <a,b,c>
csv_len() { tr ',' '\n' <<< "$1" | grep -c .; }
# How many rows of an ablate grid flagfile match a row regex: grid_rows <cfg> <regex>
grid_rows() { sed -n 's/^--row=\([^:]*\):.*/\1/p' "$1" | grep -cE -- "${2:-.}"; }

# The inputs of the flight benchmarks, each made once per machine: <count> synthetic JPEGs of
# <width> x <height> in <dir>/<name>, and the random-weight 224-px resnet50_aspp <dir>/m.keras
# (weights=None: the speed does not depend on them).
#   flight_inputs <dir> <name> <count> <width> <height>
flight_inputs() {
  [ -d "$1/$2" ] || python3 tools/bench_flight.py photos "$1/$2" "$3" "$4" "$5"
  [ -f "$1/m.keras" ] || python3 -c "from crack_tf import models
models.get('resnet50_aspp', input_shape=(224, 224, 3)).save('$1/m.keras')"
}
