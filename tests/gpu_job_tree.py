"""tools/gpu_jobs test tree: a checkout-like folder with a recording ``python3`` on PATH, so the
tests check the jobs' shell logic without training anything (the ``job_tree`` fixture, registered
in conftest.py)."""

import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = os.path.join(REPO, "tools", "gpu_jobs")

RECORDER = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
"""


@pytest.fixture()
def job_tree(tmp_path):
    """A checkout-like folder (tools/, configs/), ../shared/data beside it, a recorder python3."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(os.path.join(REPO, "tools", "gpu_jobs"), repo / "tools" / "gpu_jobs")
    shutil.copy(os.path.join(REPO, "tools", "same_backbones.py"), repo / "tools")  # common.sh's same_backbone
    os.symlink(os.path.join(REPO, "configs"), repo / "configs")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "nvidia-smi"):
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    (repo / "runs" / "pretrain").mkdir(parents=True)
    (repo / "runs" / "pretrain" / "crack.weights.h5").write_bytes(b"")  # pretraining is skipped
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SKIP_WHEELS="1", OUT=str(tmp_path / "out"),
               CALLS=str(tmp_path / "calls.txt"))
    return repo, env, tmp_path / "calls.txt"


def slice_recorder(repo, finish_runs: bool):
    """python3 that leaves pretraining outputs and, for ablate grids, a run.json per requested run."""
    script = RECORDER + 'for a in "$@"; do case $a in --output=*) touch "${a#--output=}";; esac; done\n'
    if finish_runs:
        script += """case "$*" in *tools/ablate.py*--report_only*) ;; *tools/ablate.py*)
  out=$(printf '%s\\n' "$@" | sed -n 's/^--output_dir=//p' | tail -1)
  seeds=$(printf '%s\\n' "$@" | sed -n 's/^--seeds=//p' | tr , ' ')
  folds=$(printf '%s\\n' "$@" | sed -n 's/^--folds=//p' | tr , ' ')
  row=$(printf '%s\\n' "$@" | sed -n 's/^--only=//p' | tr -d '^$'); row=${row:-r}
  for s in $seeds; do for f in ${folds:-cv}; do
    if [ -n "$folds" ]; then runs="${row}_${f}"; else runs="fold0 fold1 fold2 fold3 fold4"; fi
    for r in $runs; do mkdir -p "$out/${r}_s$s"; echo {} > "$out/${r}_s$s/run.json"; touch "$out/${r}_s$s/final.keras"; done
  done; done;;
*tools/dense_agreement.py*) echo '{}' > "$(printf '%s\\n' "$@" | sed -n 's/^--json_out=//p')";;
*tools/few_shot_curve.py*) mkdir -p runs/few_shot; touch runs/few_shot/few_shot.csv;;
*tools/few_shot_finetune.py*) mkdir -p runs/few_shot_finetune; touch runs/few_shot_finetune/few_shot.csv;; esac
"""
    (repo.parent / "bin" / "python3").write_text(script)
