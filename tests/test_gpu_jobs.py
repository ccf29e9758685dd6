"""tools/gpu_jobs: what the table job hands to ablate, and which recipe runs it reuses.

The jobs run on the GPU machine; here `python3` is a recorder on PATH, so the test checks the
shell logic (row filter, grid folder, reused runs) without training anything.
"""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = os.path.join(REPO, "tools", "gpu_jobs")

RECORDER = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
"""


@pytest.mark.parametrize("script", sorted(f for f in os.listdir(JOBS) if f.endswith(".sh")))
def test_job_scripts_are_valid_bash(script):
    done = subprocess.run(["bash", "-n", os.path.join(JOBS, script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture()
def job_tree(tmp_path):
    """A checkout-like folder (tools/, configs/), ../shared/data beside it, a recorder python3."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(os.path.join(REPO, "tools", "gpu_jobs"), repo / "tools" / "gpu_jobs")
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


def test_table_job_filters_rows_and_reuses_finished_recipe_runs(job_tree):
    repo, env, calls = job_tree
    recipe = repo / "runs" / "ablation_recipe"
    (recipe / "uav75_pretrained_s0").mkdir(parents=True)
    (recipe / "uav75_pretrained_s0" / "run.json").write_text("{}")
    (recipe / "uav75_pretrained_s1").mkdir()  # unfinished: no run.json, so not reused
    done = subprocess.run(["bash", "tools/gpu_jobs/tables.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, TABLE="table3", ONLY="rates_2_4_6|rates_3_6_9", JOB_S="100"), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr

    grid = repo / "runs" / "ablation_table3_pretrained"
    assert os.path.realpath(grid / "rates_2_4_8_s0") == os.path.realpath(recipe / "uav75_pretrained_s0")
    assert not os.path.lexists(grid / "rates_2_4_8_s1") and not os.path.lexists(grid / "rates_2_4_8_s2")
    ablate = [line.split() for line in calls.read_text().splitlines() if line.startswith("tools/ablate.py")]
    assert len(ablate) == 2 and "--report_only" in ablate[1]  # the grid, then its report
    for args in ablate:
        assert "--flagfile=configs/ablation_table3.cfg" in args
        assert "--base_flagfile=configs/uav75_photos.cfg" in args and "--only=rates_2_4_6|rates_3_6_9" in args
        assert any(a.startswith("--extra=--weights=runs/pretrain/crack.weights.h5") for a in args)
        # The grid folder is given after the grid flagfile's own --output_dir, so it wins.
        outputs = [a for a in args if a.startswith("--output_dir=")]
        assert outputs[-1] == "--output_dir=runs/ablation_table3_pretrained"
    assert (repo.parent / "out" / "ablation_table3.tgz").is_file()


def test_loso_job_pretrains_each_fold_without_its_left_out_source(job_tree):
    repo, env, calls = job_tree
    (repo / "runs" / "pretrain" / "loso_no_uavcrack.weights.h5").write_bytes(b"")  # kept: not pretrained again
    recorder = (repo.parent / "bin" / "python3")  # pretraining must leave its --output behind
    recorder.write_text(RECORDER + 'for a in "$@"; do case $a in --output=*) touch "${a#--output=}";; esac; done\n')
    done = subprocess.run(["bash", "tools/gpu_jobs/loso.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, ONLY="^pretrained$", JOB_S="200"), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line.split() for line in calls.read_text().splitlines()]
    pre = {next(a for a in args if a.startswith("--output=")): next(a for a in args if a.startswith("--data_dir="))
           for args in lines if args[0] == "tools/pretrain.py"}
    assert pre == {"--output=runs/pretrain/loso_no_uav75.weights.h5": "--data_dir=uavcrack,deepcrack",
                   "--output=runs/pretrain/loso_no_deepcrack.weights.h5": "--data_dir=uav75,uavcrack"}
    grids = [args for args in lines if args[0] == "tools/ablate.py" and "--report_only" not in args]
    main = next(a for a in grids if "--output_dir=runs/ablation_loso" in a)
    assert "--folds=no_uav75,no_uavcrack,no_deepcrack" in main and "--only=^pretrained$" in main
    repeat = next(a for a in grids if "--output_dir=runs/ablation_loso_repeat" in a)
    assert "--folds=no_uav75" in repeat and "--seeds=0" in repeat
    curve = next(args for args in lines if args[0] == "tools/few_shot_curve.py")  # on the machine: features stay
    assert "--runs=runs/ablation_loso/*_no_*_s*" in curve and "--fit=threshold,last_layer" in curve
    # then the fine-tuning curve on each fold's seed-0 model (the models are only on the machine)
    tuned = next(args for args in lines if args[0] == "tools/few_shot_finetune.py")
    assert {"--runs=runs/ablation_loso/*_no_*_s0", "--tta=none", "--starts=conv5_"} <= set(tuned)
    calls.write_text("")
    subprocess.run(["bash", "tools/gpu_jobs/loso.sh"], cwd=repo, capture_output=True, text=True,
                   env=dict(env, ONLY="^pretrained$", JOB_S="200", FINETUNE_CURVE="0"), timeout=60)
    assert "few_shot_finetune" not in calls.read_text()
    out = repo.parent / "out"
    assert sorted(p.name for p in out.iterdir()) == ["loso.log", "machine.txt", "runs.tgz"]  # <= 8 files back


def test_loso_job_synth_crack_backbones_start_from_one_synthetic_backbone(job_tree):
    repo, env, calls = job_tree
    recorder = (repo.parent / "bin" / "python3")
    recorder.write_text(RECORDER + 'for a in "$@"; do case $a in --output=*) touch "${a#--output=}";; esac; done\n')
    done = subprocess.run(["bash", "tools/gpu_jobs/loso.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, ONLY="^synthpre$", JOB_S="200", BACKBONE="synth_crack", FOLDS="no_deepcrack",
                                   REPEAT="0"), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    pre = [line.split() for line in calls.read_text().splitlines() if line.startswith("tools/pretrain.py")]
    assert len(pre) == 2 and "--mode=synthetic" in pre[0] and "--output=runs/pretrain/synthetic.weights.h5" in pre[0]
    assert "--mode=crack" in pre[1] and "--data_dir=uav75,uavcrack" in pre[1]
    assert "--init=runs/pretrain/synthetic.weights.h5" in pre[1]
    assert "--output=runs/pretrain/loso_synth_no_deepcrack.weights.h5" in pre[1]
    bad = subprocess.run(["bash", "tools/gpu_jobs/loso.sh"], cwd=repo, capture_output=True, text=True,
                         env=dict(env, BACKBONE="imagenet"), timeout=60)
    assert bad.returncode == 2 and "choose crack (default) or synth_crack" in bad.stdout


def test_uav75_cv_job_pretrains_without_uav75_then_runs_the_cv_grid(job_tree):
    repo, env, calls = job_tree
    recorder = (repo.parent / "bin" / "python3")
    recorder.write_text(RECORDER + 'for a in "$@"; do case $a in --output=*) touch "${a#--output=}";; esac; done\n')
    done = subprocess.run(["bash", "tools/gpu_jobs/uav75_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, JOB_S="200", SEEDS="0,1"), timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line.split() for line in calls.read_text().splitlines()]
    pre = [args for args in lines if args[0] == "tools/pretrain.py"]
    assert [next(a for a in args if a.startswith("--output=")) for args in pre] == [
        "--output=runs/pretrain/synthetic.weights.h5", "--output=runs/pretrain/loso_synth_no_uav75.weights.h5"]
    assert "--data_dir=uavcrack,deepcrack" in pre[1] and "--init=runs/pretrain/synthetic.weights.h5" in pre[1]
    grid = next(args for args in lines if args[0] == "tools/ablate.py" and "--report_only" not in args)
    assert "--flagfile=configs/ablation_uav75_cv.cfg" in grid and "--seeds=0,1" in grid
    # the grid's backbone is the one the job made (no UAV75 photo in its pretraining)
    cfg = open(os.path.join(REPO, "configs", "ablation_uav75_cv.cfg")).read()
    assert "--weights=runs/pretrain/loso_synth_no_uav75.weights.h5" in cfg
    assert "uav75_cv.sh: 0 of 10 runs finished" in done.stdout and "call again" in done.stdout
    calls.write_text("")  # a fresh machine's call for the one run still missing: ROWS x SEEDS
    done = subprocess.run(["bash", "tools/gpu_jobs/uav75_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, JOB_S="200", SEEDS="2", ROWS="^fold4$"), timeout=90)
    grids = [a.split() for a in calls.read_text().splitlines() if a.startswith("tools/ablate.py")]
    assert grids and all("--only=^fold4$" in a and "--seeds=2" in a for a in grids)
    assert "uav75_cv.sh: 0 of 1 runs finished" in done.stdout


PRETRAIN_RECORDER = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
for a in "$@"; do case $a in --output=*) [ -n "${FINISH:-}" ] && touch "${a#--output=}";; esac; done
exit 0
"""
RECIPE_PRETRAIN = ("tools/pretrain.py --mode=crack --data_dir=uavcrack,deepcrack --data_root=../shared/data "
                   "--image_size=224 --crop_side=96,192 --steps=1000 --batch_size=128 --precision=bf16 --lr=0.002 "
                   "--data_workers=14 --data_processes --log_every=100 --deterministic --output=runs/pretrain/crack.weights.h5")


def _pretrain_calls(calls):
    return [line for line in calls.read_text().splitlines() if line.startswith("tools/pretrain.py")]


def test_pretrain_backbone_defaults_and_the_pretraining_recipes(job_tree):
    repo, env, calls = job_tree
    (repo.parent / "bin" / "python3").write_text(PRETRAIN_RECORDER)
    os.remove(repo / "runs" / "pretrain" / "crack.weights.h5")
    script = "source tools/gpu_jobs/common.sh; pretrain_backbone 170"
    done = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _pretrain_calls(calls) == [RECIPE_PRETRAIN]  # no PRETRAIN_* set: the recipe's command exactly
    calls.write_text("")
    # simclr, then crack from it; a step that does not finish stops the job (the next call resumes).
    unfinished = subprocess.run(["bash", "tools/gpu_jobs/pretrain.sh"], cwd=repo, capture_output=True, text=True,
                                env=dict(env, RECIPE="simclr_crack"), timeout=60)
    assert "simclr.weights.h5 not finished in this call" in unfinished.stdout and len(_pretrain_calls(calls)) == 1
    calls.write_text("")
    done = subprocess.run(["bash", "tools/gpu_jobs/pretrain.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, RECIPE="simclr_crack", FINISH="1"), timeout=60)
    assert "pretrain.sh: done" in done.stdout, done.stdout + done.stderr
    simclr, crack = (line.split() for line in _pretrain_calls(calls))
    assert "--mode=simclr" in simclr and "--data_dir=uav75,uavcrack,deepcrack" in simclr
    assert "--mode=crack" in crack and "--init=runs/pretrain/simclr.weights.h5" in crack
    assert all("--checkpoint_every=500" in args for args in (simclr, crack))
    assert crack[-1] == "--output=runs/pretrain/simclr_crack.weights.h5"
    calls.write_text("")
    done = subprocess.run(["bash", "tools/gpu_jobs/pretrain.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, RECIPE="long", FINISH="1"), timeout=60)
    (long_run,) = (line.split() for line in _pretrain_calls(calls))
    assert "--steps=10000" in long_run and "--output=runs/pretrain/crack_long.weights.h5" in long_run
    calls.write_text("")
    done = subprocess.run(["bash", "tools/gpu_jobs/pretrain.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, RECIPE="synth_crack", FINISH="1"), timeout=60)
    synthetic, crack = (line.split() for line in _pretrain_calls(calls))  # configs/crackmix_synthpre.cfg's
    assert "--mode=synthetic" in synthetic and synthetic[-1] == "--output=runs/pretrain/synthetic.weights.h5"
    assert "--init=runs/pretrain/synthetic.weights.h5" in crack and "--data_dir=uav75,uavcrack,deepcrack" in crack
    weights = next(line for line in open(os.path.join(REPO, "configs", "crackmix_synthpre.cfg"))
                   if line.startswith("--weights="))
    assert crack[-1] == "--output=" + weights.strip().split("=", 1)[1]


def test_packed_runs_leave_models_and_features_on_the_machine(job_tree):
    import tarfile

    repo, env, _ = job_tree
    run = repo / "runs" / "ablation_loso" / "r_no_uav75_s0"
    run.mkdir(parents=True)
    for name in ("run.json", "margins.npz", "features.npz", "final.keras"):
        (run / name).write_bytes(b"x")
    done = subprocess.run(["bash", "-c", "source tools/gpu_jobs/common.sh && pack_runs runs runs/ablation_loso"],
                          cwd=repo, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    with tarfile.open(repo.parent / "out" / "runs.tgz") as tar:
        names = {os.path.basename(n) for n in tar.getnames()}
    assert {"run.json", "margins.npz"} <= names and not {"features.npz", "final.keras"} & names


def test_gpu_memory_sets_how_many_runs_fit(job_tree):
    """common.sh: an H200 fits 13 runs of 9.3 GB (0.065 each, as the 2026-12-04 grids ran), an H100 7."""
    repo, env, _ = job_tree
    fits = {}
    for name, mib in (("h200", 143771), ("h100", 81559)):
        smi = repo.parent / "bin" / "nvidia-smi"
        smi.write_text(f"#!/usr/bin/env bash\necho {mib}\n")
        done = subprocess.run(["bash", "-c", "source tools/gpu_jobs/common.sh; echo $RUN_FRACTION $RUNS_FIT"],
                              cwd=repo, capture_output=True, text=True, env=env, timeout=60)
        fits[name] = done.stdout.split()[-2:]
    assert fits == {"h200": ["0.066", "13"], "h100": ["0.117", "7"]}


def _slice_recorder(repo, finish_runs: bool):
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


def test_slice_job_runs_the_candidate_grid_then_the_uav75_cv_and_resumes(job_tree):
    repo, env, calls = job_tree
    env = dict(env, ONLY="^synthpre_robustaug$", JOB_S="300")
    _slice_recorder(repo, finish_runs=False)  # a call in which no run finishes: the job says so, packs, stops
    done = subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=env, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "candidate grid 0 of 12 runs" in done.stdout and "call again" in done.stdout
    lines = [line.split() for line in calls.read_text().splitlines()]
    grid = next(a for a in lines if a[0] == "tools/ablate.py" and "--output_dir=runs/ablation_loso" in a)
    assert "--folds=all,no_uav75,no_uavcrack,no_deepcrack" in grid and "--only=^synthpre_robustaug$" in grid
    assert not any("ablation_uav75_cv" in " ".join(a) for a in lines)  # the CV waits for the candidate
    pre = [next(x for x in a if x.startswith("--output=")) for a in lines if a[0] == "tools/pretrain.py"]
    assert pre[0] == "--output=runs/pretrain/synthetic.weights.h5" and len(pre) == 5  # synthetic + 4 folds
    calls.write_text("")
    _slice_recorder(repo, finish_runs=True)  # the next call: both grids finish, then the agreement
    done = subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=env, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "candidate grid 12 of 12 runs (+ repeat 1 of 1)" in done.stdout and "loso_cv.sh: done" in done.stdout
    lines = [line.split() for line in calls.read_text().splitlines()]
    assert not any(a[0] == "tools/pretrain.py" for a in lines)  # backbones kept from the first call
    cv = next(a for a in lines if a[0] == "tools/ablate.py" and "--output_dir=runs/ablation_uav75_cv" in a)
    assert "--flagfile=configs/ablation_uav75_cv.cfg" in cv
    out = sorted(p.name for p in (repo.parent / "out").iterdir())
    assert len(out) <= 8 and {"runs.tgz", "uav75_cv.tgz", "loso.log", "uav75_cv.log"} <= set(out)
    calls.write_text("")  # a third call has nothing left to train
    done = subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=env, timeout=90)
    assert "loso_cv.sh: done" in done.stdout
    assert not any(line.startswith("tools/ablate.py") for line in calls.read_text().splitlines())


def test_slice_job_for_the_folds_still_missing(job_tree):
    """A later session's call: FOLDS names the folds left, REPEAT=0; the CV's backbone is made up front."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    done = subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, ONLY="^synthpre_robustaug$", JOB_S="300", FOLDS="no_uavcrack",
                                   REPEAT="0"), timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "candidate grid 3 of 3 runs (+ repeat 0 of 0)" in done.stdout
    lines = [line.split() for line in calls.read_text().splitlines()]
    pre = {next(x for x in a if x.startswith("--output=")) for a in lines if a[0] == "tools/pretrain.py"}
    assert pre == {"--output=runs/pretrain/synthetic.weights.h5", "--output=runs/pretrain/loso_synth_no_uavcrack.weights.h5",
                   "--output=runs/pretrain/loso_synth_no_uav75.weights.h5"}
    grids = [a for a in lines if a[0] == "tools/ablate.py" and "--report_only" not in a]
    assert not any("--output_dir=runs/ablation_loso_repeat" in a for a in grids)
    loso = next(a for a in grids if "--output_dir=runs/ablation_loso" in a)
    assert "--folds=no_uavcrack" in loso
    # runs side by side render crops in worker processes, the cores shared among them
    assert any(x.startswith("--extra=--loader_processes=true,--loader_workers=") for x in loso)
    # no `all` fold in this call: the agreement (issue 24) runs on the fold's seed-0 model
    agree = next(a for a in lines if a[0] == "tools/dense_agreement.py")
    assert "--model=runs/ablation_loso/synthpre_robustaug_no_uavcrack_s0/final.keras" in agree


def test_slice_job_trains_the_missing_cv_runs_beside_the_grid(job_tree):
    """CV_ROWS / CV_SEEDS: the CV runs a fresh machine lacks start with the grid, in one slot of its own."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    other = repo / "runs" / "ablation_uav75_cv" / "fold0_s0"  # another CV run on the warm machine: not fold 4, seed 2
    other.mkdir(parents=True)
    (other / "run.json").write_text("{}")
    done = subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, ONLY="^synthpre_robustaug_epochs48$", JOB_S="300", FOLDS="all,no_uav75",
                                   REPEAT="0", CV_ROWS="^fold4$", CV_SEEDS="2", AGREE="0", RUN_GB="20"), timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loso_cv.sh: done" in done.stdout
    grids = [a.split() for a in calls.read_text().splitlines() if a.startswith("tools/ablate.py")
             and "--report_only" not in a]
    cv = [a for a in grids if "--output_dir=runs/ablation_uav75_cv" in a]
    loso = [a for a in grids if "--output_dir=runs/ablation_loso" in a]
    assert len(cv) == 1 and "--only=^fold4$" in cv[0] and "--seeds=2" in cv[0] and "--parallel=1" in cv[0]
    assert len(loso) == 1 and "--parallel=5" in loso[0]  # 6 runs of 20 GB fit: one left to the CV


def test_slice_job_with_one_seed_is_done_when_that_seed_is(job_tree):
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    done = subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, ONLY="^synthpre$", JOB_S="300", FOLDS="no_uavcrack,no_deepcrack", REPEAT="0",
                                   SEEDS="0", CV="0", AGREE="0"), timeout=90)
    assert "candidate grid 2 of 2 runs" in done.stdout and "loso_cv.sh: done" in done.stdout
    grid = next(a.split() for a in calls.read_text().splitlines() if "--output_dir=runs/ablation_loso" in a)
    assert "--seeds=0" in grid
    backbones = [a for a in calls.read_text().splitlines() if a.startswith("tools/pretrain.py")]
    assert len(backbones) == 3 and not any("no_uav75" in a for a in backbones)  # synthetic + 2 folds, none for the CV
    assert all("--deterministic" in a.split() for a in backbones)  # one seed, one backbone


def test_count_runs_counts_only_the_wanted_row_folds_and_seeds(job_tree):
    repo, env, _ = job_tree
    grid = repo / "runs" / "g"
    for name in ("a_all_s0", "a_no_x_s0", "a_no_x_s1", "a_no_x_s2", "ab_no_x_s0", "a_no_y_s0", "fold4_s2"):
        (grid / name).mkdir(parents=True)
        (grid / name / "run.json").write_text("{}")
    (grid / "a_no_x_s3").mkdir()  # unfinished: no run.json
    counts = subprocess.run(["bash", "-c", "source tools/gpu_jobs/common.sh; count_runs runs/g '^a$' 0,1,3 all,no_x; "
                             "count_runs runs/g '^fold4$' 2; count_runs runs/g '^a' 0 no_x,no_y; "
                             "grid_rows configs/ablation_uav75_cv.cfg '^fold[34]$'"],
                            cwd=repo, capture_output=True, text=True, env=env, timeout=60)
    assert counts.stdout.split()[-4:] == ["3", "1", "3", "2"], counts.stdout + counts.stderr


def test_slice_job_cv_and_agreement_can_be_skipped(job_tree):
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    done = subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, ONLY="^synthpre_epochs48$", JOB_S="300", CV="0", AGREE="0"), timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CV=0, no UAV75 5-fold" in done.stdout and "loso_cv.sh: done" in done.stdout
    assert "ablation_uav75_cv" not in calls.read_text() and "dense_agreement" not in calls.read_text()


def test_slice_job_trains_another_row_beside_the_grid(job_tree):
    """BESIDE_ONLY / BESIDE_FOLDS / BESIDE_SEEDS: another row's runs start with the grid, one slot each,
    on backbones made once (a fold shared by both is pretrained once), and the job waits for them."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    done = subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, ONLY="^synthpre$", JOB_S="300", FOLDS="no_uavcrack,no_deepcrack", REPEAT="0",
                                   SEEDS="0", CV="0", AGREE="0", BESIDE_ONLY="^synthpre_robustaug_epochs48$",
                                   BESIDE_FOLDS="all,no_deepcrack", BESIDE_SEEDS="0,1,2"), timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "beside it (^synthpre_robustaug_epochs48$) 6 of 6 runs" in done.stdout and "loso_cv.sh: done" in done.stdout
    lines = [line.split() for line in calls.read_text().splitlines()]
    pre = [next(x for x in a if x.startswith("--output=")) for a in lines if a[0] == "tools/pretrain.py"]
    assert sorted(pre) == sorted(["--output=runs/pretrain/synthetic.weights.h5"] + [
        f"--output=runs/pretrain/loso_synth_{f}.weights.h5" for f in ("no_uavcrack", "no_deepcrack", "all")])
    grids = [a for a in lines if a[0] == "tools/ablate.py" and "--report_only" not in a]
    beside = [a for a in grids if "--only=^synthpre_robustaug_epochs48$" in a]
    assert len(beside) == 1 and "--folds=all,no_deepcrack" in beside[0] and "--seeds=0,1,2" in beside[0]
    assert "--parallel=6" in beside[0] and "--output_dir=runs/ablation_loso" in beside[0]
    loso = next(a for a in grids if "--only=^synthpre$" in a)
    assert "--parallel=7" in loso  # 13 runs fit (an H200 when nvidia-smi says nothing): 6 taken beside it
    calls.write_text("")  # a second call: both finished, nothing trains again
    done = subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, ONLY="^synthpre$", JOB_S="300", FOLDS="no_uavcrack,no_deepcrack", REPEAT="0",
                                   SEEDS="0", CV="0", AGREE="0", BESIDE_ONLY="^synthpre_robustaug_epochs48$",
                                   BESIDE_FOLDS="all,no_deepcrack", BESIDE_SEEDS="0,1,2"), timeout=90)
    assert "loso_cv.sh: done" in done.stdout
    assert not any("--only=^synthpre_robustaug_epochs48$" in line for line in calls.read_text().splitlines())


def test_backbone_repeat_pretrains_the_synthetic_backbone_twice_and_compares(job_tree):
    """BACKBONE_REPEAT=1: a second synthetic backbone beside the folds; same_backbone reads the sidecars."""
    repo, env, calls = job_tree
    sidecar = ('for a in "$@"; do case $a in --output=*) o="${a#--output=}"; touch "$o"; '
               'printf \'{"mode": "synthetic", "seed": 0, "deterministic": true, "weights_sha256": "%s", '
               '"history": {"loss": [0.5]}}\' "${DIGEST:-abc}" > "$o.json";; esac; done\n')
    (repo.parent / "bin" / "python3").write_text(RECORDER + sidecar)
    done = subprocess.run(["bash", "-c", "source tools/gpu_jobs/common.sh && BACKBONE_REPEAT=1 fold_backbones "
                           "synth_crack no_uav75"], cwd=repo, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = [a.split() for a in calls.read_text().splitlines() if a.startswith("tools/pretrain.py")]
    repeat = [a for a in outputs if "--output=runs/pretrain/synthetic_repeat.weights.h5" in a]
    assert len(outputs) == 3 and len(repeat) == 1 and "--mode=synthetic" in repeat[0]
    assert "--deterministic" in repeat[0] and not any("--init=" in x for x in repeat[0])
    assert (repo / "runs" / "pretrain_logs" / "synthetic_repeat.pretrain.json").is_file()
    # same_backbone runs on the real python (the recorder is first on PATH in env: use the system one)
    real = dict(env, PATH=os.environ["PATH"])
    first = repo / "runs" / "pretrain" / "synthetic.weights.h5.json"
    other = repo / "runs" / "pretrain" / "other.json"
    other.write_text(first.read_text().replace('"abc"', '"abd"'))
    same = subprocess.run(["bash", "-c", f"source tools/gpu_jobs/common.sh; same_backbone {first} "
                           f"runs/pretrain/synthetic_repeat.weights.h5.json; same_backbone {first} {other}"],
                          cwd=repo, capture_output=True, text=True, env=dict(real, SKIP_WHEELS="1"), timeout=60)
    lines = [line for line in same.stdout.splitlines() if line.startswith("backbone pretrained twice")]
    assert len(lines) == 2 and "IDENTICAL" in lines[0] and "DIFFER" in lines[1], same.stdout + same.stderr
