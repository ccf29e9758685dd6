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
