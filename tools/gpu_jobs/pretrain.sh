#!/usr/bin/env bash
# Pretraining candidates of issue 23 point 3 on the GPU machine (one H200, 16 cores), resumable:
# each call trains until JOB_S (565 s) with a checkpoint every 500 steps; call it again on the warm
# machine until it prints "pretrain.sh: done". The weights land in runs/pretrain/ (fine-tune with
# --weights=<file>); each step's sidecar <file>.json is copied to $OUT.
#   RECIPE=long          crack mode, 10x the recipe's steps (10,000 x 128 crops at 224 px), the train
#                        splits of all three sources -> runs/pretrain/crack_long.weights.h5
#   RECIPE=simclr_crack  simclr on every train photo of the three sources (2,000 steps of 128 pairs),
#                        then crack mode from it (1,000 steps) -> runs/pretrain/simclr_crack.weights.h5
#   RECIPE=robust        crack mode as the recipe (1,000 steps) with the domain-robust augmentation
#                        (gamma, grayscale, hue, blur, JPEG) -> runs/pretrain/crack_robust.weights.h5
#   RECIPE=synth_crack   the recommended backbone (configs/crackmix_synthpre.cfg): synthetic cracks
#                        (1,000 steps), then crack mode from it (1,000) -> runs/pretrain/synth_crack.weights.h5
#   RECIPE=synth_simclr_crack  the leave-one-source-out SimCLR fold chain (common.sh fold_backbones
#                        simclr_crack) on the three sources: synthetic cracks (1,000 steps), SimCLR from it
#                        (1,000 steps of 64 pairs, 128-px crops), crack mode from that (1,000)
#                        -> runs/pretrain/synth_simclr_crack.weights.h5 (configs/crackmix_simclrpre_robust48.cfg)
#   DATA=<sources> replaces the three sources (e.g. uavcrack,deepcrack for a leave-uav75-out run).
SECONDS=0
source tools/gpu_jobs/common.sh
data=${DATA:-uav75,uavcrack,deepcrack}
robust="--gamma=0.3 --grayscale=0.1 --hue=0.03 --blur=0.25 --jpeg=0.3 --contrast=0.2"
left() { echo $(( ${JOB_S:-565} - SECONDS )); }
step() {  # step <mode> <steps> <output> [init] [extra flags]: false until <output> exists
  [ -f "$3" ] || [ "$(left)" -ge 60 ] || { echo "pretrain.sh: no time left for $3: call again"; return 1; }
  PRETRAIN_MODE=$1 PRETRAIN_STEPS=$2 PRETRAIN_OUT=$3 PRETRAIN_INIT=${4:-} PRETRAIN_DATA=$data \
      PRETRAIN_EXTRA="--checkpoint_every=500 ${5:-}" pretrain_backbone "$(left)"
  cp "$3.json" "$OUT/" 2>/dev/null
  [ -f "$3" ] || { echo "pretrain.sh: $3 not finished in this call (checkpoint kept): call again"; return 1; }
}
case ${RECIPE:-long} in
  long) step crack 10000 runs/pretrain/crack_long.weights.h5 || exit 0 ;;
  simclr_crack) step simclr 2000 runs/pretrain/simclr.weights.h5 "" "--crop=128" || exit 0
                step crack 1000 runs/pretrain/simclr_crack.weights.h5 runs/pretrain/simclr.weights.h5 || exit 0 ;;
  synth_crack) step synthetic 1000 runs/pretrain/synthetic.weights.h5 || exit 0
               step crack 1000 runs/pretrain/synth_crack.weights.h5 runs/pretrain/synthetic.weights.h5 || exit 0 ;;
  synth_simclr_crack) step synthetic 1000 runs/pretrain/synthetic.weights.h5 || exit 0
                      step simclr 1000 runs/pretrain/synth_simclr.weights.h5 runs/pretrain/synthetic.weights.h5 \
                          "--crop=128 --batch_size=64" || exit 0
                      step crack 1000 runs/pretrain/synth_simclr_crack.weights.h5 runs/pretrain/synth_simclr.weights.h5 \
                          || exit 0 ;;
  robust) step crack 1000 runs/pretrain/crack_robust.weights.h5 "" "$robust" || exit 0 ;;
  *) echo "RECIPE=${RECIPE}: use long, simclr_crack, synth_crack, synth_simclr_crack or robust"; exit 2 ;;
esac
echo "pretrain.sh: done in ${SECONDS}s"
