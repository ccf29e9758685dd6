#!/usr/bin/env bash
# Copies the photo sources a GPU job needs into .data/ (git-ignored; carried with the job):
#   tools/gpu_jobs/stage_data.sh uav75 uavcrack deepcrack
# plus the MANIFEST.csv rows of those sources (deepcrack's val fold groups by its source_image).
set -euo pipefail
src=${SHARED_DATA:-../shared/data}
rm -rf .data && mkdir -p .data
for name in "$@"; do cp -r "$src/$name" .data/; done
{ head -1 "$src/MANIFEST.csv"; for name in "$@"; do grep "^$name/" "$src/MANIFEST.csv" || true; done; } > .data/MANIFEST.csv
du -sh --apparent-size .data
# What a call would carry (the tree + .data + .wheels) against the device's 64 MiB limit; the
# tool also counts .git, so leave some room.
tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
extra=$(du -sb .data .wheels 2>/dev/null | awk '{s+=$1} END {print s+0}')
git_dir=$(du -sb .git 2>/dev/null | cut -f1)
total=$(( tree + extra + ${git_dir:-0} ))
echo "stage_data: tree $(( tree / 1048576 )) MiB + .data/.wheels $(( extra / 1048576 )) MiB + .git $(( ${git_dir:-0} / 1048576 )) MiB = $(( total / 1048576 )) MiB of 64"
if [ "$total" -gt $(( 64 * 1048576 )) ]; then
  echo "stage_data: over 64 MiB: move docs/results aside for the call (mv docs/results /tmp/), then restore it"
fi
