"""tools/gpu_jobs: what the table job hands to ablate, and which recipe runs it reuses.

The jobs run on the GPU machine; here `python3` is a recorder on PATH, so the test checks the
shell logic (row filter, grid folder, reused runs) without training anything.
"""

import os
import shutil
import subprocess

import pytest

from tests.gpu_job_tree import JOBS, RECORDER, REPO


@pytest.mark.parametrize("script", sorted(f for f in os.listdir(JOBS) if f.endswith(".sh")))
def test_job_scripts_are_valid_bash(script):
    done = subprocess.run(["bash", "-n", os.path.join(JOBS, script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


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
                                   REPEAT="0", GRID_EXTRA="--adabn_eval_crops=0"), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    grid = next(line.split() for line in calls.read_text().splitlines()
                if line.startswith("tools/ablate.py") and "--report_only" not in line)
    extra = next(a for a in grid if a.startswith("--extra=--loader_processes=true"))
    assert extra.endswith(",--adabn_eval_crops=0")  # GRID_EXTRA: after the loader flags, in the same --extra
    pre = [line.split() for line in calls.read_text().splitlines() if line.startswith("tools/pretrain.py")]
    assert len(pre) == 2 and "--mode=synthetic" in pre[0] and "--output=runs/pretrain/synthetic.weights.h5" in pre[0]
    assert "--mode=crack" in pre[1] and "--data_dir=uav75,uavcrack" in pre[1]
    assert "--init=runs/pretrain/synthetic.weights.h5" in pre[1]
    assert "--output=runs/pretrain/loso_synth_no_deepcrack.weights.h5" in pre[1]
    bad = subprocess.run(["bash", "tools/gpu_jobs/loso.sh"], cwd=repo, capture_output=True, text=True,
                         env=dict(env, BACKBONE="imagenet"), timeout=60)
    assert bad.returncode == 2 and "choose crack (default), synth_crack or simclr_crack" in bad.stdout


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
    assert all("--base_flagfile" not in " ".join(a) for a in grids)  # the grid's own recipe by default
    calls.write_text("")  # the same folds for the recommended recipe, in a folder of its own
    (repo / "runs" / "ablation_uav75_cv" / "fold0_s0").mkdir(parents=True)  # the other recipe's: not counted
    (repo / "runs" / "ablation_uav75_cv" / "fold0_s0" / "run.json").write_text("{}")
    done = subprocess.run(["bash", "tools/gpu_jobs/uav75_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, JOB_S="200", SEEDS="0", CV_BASE="configs/crackmix_synthpre_robust48.cfg",
                                   CV_DIR="runs/ablation_uav75_cv_robust48"), timeout=90)
    grids = [a.split() for a in calls.read_text().splitlines() if a.startswith("tools/ablate.py")]
    assert len(grids) == 2 and all("--base_flagfile=configs/crackmix_synthpre_robust48.cfg" in a and
                                   "--output_dir=runs/ablation_uav75_cv_robust48" in a for a in grids)
    assert grids[0].index("--base_flagfile=configs/crackmix_synthpre_robust48.cfg") > grids[0].index(
        "--flagfile=configs/ablation_uav75_cv.cfg")  # after the grid file: it wins
    assert "uav75_cv.sh: 0 of 5 runs finished" in done.stdout
    bad = subprocess.run(["bash", "tools/gpu_jobs/uav75_cv.sh"], cwd=repo, capture_output=True, text=True,
                         env=dict(env, JOB_S="200", CV_BASE="configs/nope.cfg"), timeout=90)
    assert bad.returncode == 2 and "CV_BASE=configs/nope.cfg: no such trainer flagfile" in bad.stdout
    calls.write_text("")  # the SimCLR candidate's folds: its own no-UAV75 backbone, which wins the grid's
    done = subprocess.run(["bash", "tools/gpu_jobs/uav75_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, JOB_S="200", SEEDS="0", CV_BACKBONE="simclr_crack",
                                   CV_BASE="configs/crackmix_simclrpre_robust48.cfg",
                                   CV_DIR="runs/ablation_uav75_cv_simclr48"), timeout=90)
    lines = [a.split() for a in calls.read_text().splitlines()]
    pre = {next(x for x in a if x.startswith("--output=")): a for a in lines if a[0] == "tools/pretrain.py"}
    assert {"--mode=simclr", "--data_dir=uavcrack,deepcrack"} <= set(pre["--output=runs/pretrain/simclr_no_uav75.weights.h5"])
    grid = next(a for a in lines if a[0] == "tools/ablate.py" and "--report_only" not in a)
    weights = "--extra=--weights=runs/pretrain/loso_simclr_no_uav75.weights.h5"
    assert grid.index(weights) > grid.index("--base_flagfile=configs/crackmix_simclrpre_robust48.cfg")
    bad = subprocess.run(["bash", "tools/gpu_jobs/uav75_cv.sh"], cwd=repo, capture_output=True, text=True,
                         env=dict(env, JOB_S="200", CV_BACKBONE="crack"), timeout=90)
    assert bad.returncode == 2 and "CV_BACKBONE=crack: choose synth_crack (default) or simclr_crack" in bad.stdout


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


def _flags(line: str, drop: tuple[str, ...]) -> dict[str, str]:
    """A pretrain.py command's flags (last one wins, as absl reads them), less the named ones."""
    flags = dict(a.split("=", 1) if "=" in a else (a, "") for a in line.split()[1:])
    return {k: v for k, v in flags.items() if k not in drop}


def test_synth_simclr_crack_recipe_is_the_all_folds_simclr_chain(job_tree):
    """pretrain.sh RECIPE=synth_simclr_crack (configs/crackmix_simclrpre_robust48.cfg's backbone) runs
    the three commands fold_backbones simclr_crack runs for the `all` fold, the one measured by leave one
    source out: same modes, sources, steps, crops, batch sizes, each stage from the one before; only the
    file names, loader processes and checkpoint cadence may differ."""
    repo, env, calls = job_tree
    (repo.parent / "bin" / "python3").write_text(PRETRAIN_RECORDER)
    done = subprocess.run(["bash", "tools/gpu_jobs/pretrain.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, RECIPE="synth_simclr_crack", FINISH="1"), timeout=60)
    assert "pretrain.sh: done" in done.stdout, done.stdout + done.stderr
    recipe = _pretrain_calls(calls)
    calls.write_text("")
    shutil.rmtree(repo / "runs" / "pretrain")
    done = subprocess.run(["bash", "-c", "source tools/gpu_jobs/common.sh && fold_backbones simclr_crack all"],
                          cwd=repo, capture_output=True, text=True, env=dict(env, FINISH="1"), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    fold = _pretrain_calls(calls)
    assert len(recipe) == len(fold) == 3
    drop = ("--output", "--init", "--data_workers", "--checkpoint_every", "--data_dir")
    for ours, theirs in zip(recipe, fold):
        assert _flags(ours, drop) == _flags(theirs, drop)
    for ours, theirs in zip(recipe[1:], fold[1:]):  # the real stages read the three sources' train photos
        assert _flags(ours, ())["--data_dir"] == _flags(theirs, ())["--data_dir"] == "uav75,uavcrack,deepcrack"
    assert [_flags(c, ())["--mode"] for c in recipe] == ["synthetic", "simclr", "crack"]
    assert {"--crop": "128", "--batch_size": "64"}.items() <= _flags(recipe[1], ()).items()
    outputs = [_flags(c, ())["--output"] for c in recipe]
    assert [_flags(c, ()).get("--init") for c in recipe] == [None, *outputs[:2]]  # a chain
    weights = next(line for line in open(os.path.join(REPO, "configs", "crackmix_simclrpre_robust48.cfg"))
                   if line.startswith("--weights="))
    assert outputs[-1] == weights.strip().split("=", 1)[1]


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


def test_finish_speed_scores_each_fold_side_by_side_once_per_pass_kind(job_tree):
    """finish_speed.sh: bench_finish for the three folds (their tile counts, AdaBN on the left-out
    source) per pass kind, each fold's JSON line labelled with it; an unknown fold is refused."""
    import json

    repo, env, calls = job_tree
    (repo.parent / "bin" / "python3").write_text('#!/usr/bin/env bash\necho "$*" >> "$CALLS"\necho "{\\"seconds\\": 1}"\n')
    done = subprocess.run(["bash", "tools/gpu_jobs/finish_speed.sh"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, FOLD_S="20"), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    benches = [line for line in calls.read_text().splitlines() if "bench_finish.py" in line]
    assert len(benches) == 6
    for passes in ("cached", "eager"):
        for val, left_out in (("uavcrack:1539,deepcrack:560", "uav75:151"), ("deepcrack:560,uav75:151", "uavcrack:1539"),
                              ("uavcrack:1539,uav75:151", "deepcrack:560")):
            assert sum(f"--adabn_passes={passes} --val={val} --eval={left_out}" in b for b in benches) == 1
    assert all("--size=224" in b and "--tta=d4" in b and "--precision=bf16" in b and "--adabn_crops=1024" in b
               for b in benches)
    lines = [json.loads(line) for line in (repo.parent / "out" / "finish_speed.jsonl").read_text().splitlines()]
    assert sorted(line["fold"] for line in lines) == sorted(["no_uav75", "no_uavcrack", "no_deepcrack"] * 2)
    calls.write_text("")
    refused = subprocess.run(["bash", "tools/gpu_jobs/finish_speed.sh"], cwd=repo, capture_output=True, text=True,
                             env=dict(env, FOLDS="no_uav75,no_such"), timeout=60)
    assert refused.returncode == 2 and "unknown fold no_such" in refused.stdout
    assert "bench_finish.py" not in calls.read_text()  # refused before any fold started


def test_fold_backbones_share_the_machines_loader_processes(job_tree):
    """Each fold backbone's --data_workers: the machine's cores less two, shared by the folds (4 each
    for three on 16 cores, as before; 14 for one fold alone), at least 2."""
    repo, env, calls = job_tree
    (repo.parent / "bin" / "python3").write_text(
        RECORDER + 'for a in "$@"; do case $a in --output=*) o="${a#--output=}"; touch "$o";; esac; done\n')
    workers = {}
    for cores, folds in ((16, "no_uav75,no_uavcrack,no_deepcrack"), (16, "no_uav75"), (3, "no_uav75,no_deepcrack")):
        (repo.parent / "bin" / "nproc").write_text(f"#!/usr/bin/env bash\necho {cores}\n")
        (repo.parent / "bin" / "nproc").chmod(0o755)
        shutil.rmtree(repo / "runs", ignore_errors=True)
        calls.write_text("")
        done = subprocess.run(["bash", "-c", f"source tools/gpu_jobs/common.sh && fold_backbones synth_crack {folds}"],
                              cwd=repo, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        fold_calls = [c for c in calls.read_text().splitlines() if "--init=runs/pretrain/synthetic.weights.h5" in c]
        assert len(fold_calls) == len(folds.split(","))
        workers[(cores, folds)] = {c.split("--data_workers=")[1].split()[0] for c in fold_calls}
    assert list(workers.values()) == [{"4"}, {"14"}, {"2"}]
