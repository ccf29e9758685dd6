"""tools/gpu_jobs/loso_cv.sh, one GPU slice in one resumable job: the candidate's grid, the UAV75
5-fold, the agreement, runs beside the grid, and what a later call skips (python3 a recorder)."""

import subprocess

import pytest

from tests.gpu_job_tree import slice_recorder as _slice_recorder


def _slice(repo, env):
    """One call of the slice job in the test tree (a recorder python3)."""
    return subprocess.run(["bash", "tools/gpu_jobs/loso_cv.sh"], cwd=repo, capture_output=True, text=True,
                          env=env, timeout=90)


def _calls(calls):
    """The recorded python3 calls, each split into its arguments."""
    return [line.split() for line in calls.read_text().splitlines()]


def _next_call(repo, env, calls):
    """A later call on the warm machine in which every run finishes: (its output, its python3 calls)."""
    calls.write_text("")
    _slice_recorder(repo, finish_runs=True)
    done = _slice(repo, env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, _calls(calls)


def test_slice_job_runs_the_candidate_grid_then_the_uav75_cv_and_resumes(job_tree):
    repo, env, calls = job_tree
    env = dict(env, ONLY="^synthpre_robustaug$", JOB_S="300")
    _slice_recorder(repo, finish_runs=False)  # a call in which no run finishes: the job says so, packs, stops
    done = _slice(repo, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "candidate grid 0 of 12 runs" in done.stdout and "call again" in done.stdout
    lines = _calls(calls)
    grid = next(a for a in lines if a[0] == "tools/ablate.py" and "--output_dir=runs/ablation_loso" in a)
    assert "--folds=all,no_uav75,no_uavcrack,no_deepcrack" in grid and "--only=^synthpre_robustaug$" in grid
    assert not any("ablation_uav75_cv" in " ".join(a) for a in lines)  # the CV waits for the candidate
    pre = [next(x for x in a if x.startswith("--output=")) for a in lines if a[0] == "tools/pretrain.py"]
    assert pre[0] == "--output=runs/pretrain/synthetic.weights.h5" and len(pre) == 5  # synthetic + 4 folds
    out, lines = _next_call(repo, env, calls)  # the next call: both grids finish, then the agreement
    assert "candidate grid 12 of 12 runs (+ repeat 1 of 1)" in out and "loso_cv.sh: done" in out
    assert not any(a[0] == "tools/pretrain.py" for a in lines)  # backbones kept from the first call
    cv = next(a for a in lines if a[0] == "tools/ablate.py" and "--output_dir=runs/ablation_uav75_cv" in a)
    assert "--flagfile=configs/ablation_uav75_cv.cfg" in cv
    out = sorted(p.name for p in (repo.parent / "out").iterdir())
    assert len(out) <= 8 and {"runs.tgz", "uav75_cv.tgz", "loso.log", "uav75_cv.log"} <= set(out)
    calls.write_text("")  # a third call has nothing left to train
    done = _slice(repo, env)
    assert "loso_cv.sh: done" in done.stdout
    assert not any(line.startswith("tools/ablate.py") for line in calls.read_text().splitlines())


def test_slice_job_for_the_folds_still_missing(job_tree):
    """A later session's call: FOLDS names the folds left, REPEAT=0; the CV's backbone is made up front."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    done = _slice(repo, dict(env, ONLY="^synthpre_robustaug$", JOB_S="300", FOLDS="no_uavcrack",
                             REPEAT="0"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "candidate grid 3 of 3 runs (+ repeat 0 of 0)" in done.stdout
    lines = _calls(calls)
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
    done = _slice(repo, dict(env, ONLY="^synthpre_robustaug_epochs48$", JOB_S="300", FOLDS="all,no_uav75",
                             REPEAT="0", CV_ROWS="^fold4$", CV_SEEDS="2", AGREE="0", RUN_GB="20"))
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
    done = _slice(repo, dict(env, ONLY="^synthpre$", JOB_S="300", FOLDS="no_uavcrack,no_deepcrack", REPEAT="0",
                             SEEDS="0", CV="0", AGREE="0"))
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
    done = _slice(repo, dict(env, ONLY="^synthpre_epochs48$", JOB_S="300", CV="0", AGREE="0"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CV=0, no UAV75 5-fold" in done.stdout and "loso_cv.sh: done" in done.stdout
    assert "ablation_uav75_cv" not in calls.read_text() and "dense_agreement" not in calls.read_text()


def test_slice_job_trains_another_row_beside_the_grid(job_tree):
    """BESIDE_ONLY / BESIDE_FOLDS / BESIDE_SEEDS: another row's runs start with the grid, one slot each,
    on backbones made once (a fold shared by both is pretrained once), and the job waits for them."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    done = _slice(repo, dict(env, ONLY="^synthpre$", JOB_S="300", FOLDS="no_uavcrack,no_deepcrack", REPEAT="0",
                             SEEDS="0", CV="0", AGREE="0", BESIDE_ONLY="^synthpre_robustaug_epochs48$",
                             BESIDE_FOLDS="all,no_deepcrack", BESIDE_SEEDS="0,1,2"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "beside it (^synthpre_robustaug_epochs48$) 6 of 6 runs" in done.stdout and "loso_cv.sh: done" in done.stdout
    lines = _calls(calls)
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
    done = _slice(repo, dict(env, ONLY="^synthpre$", JOB_S="300", FOLDS="no_uavcrack,no_deepcrack", REPEAT="0",
                             SEEDS="0", CV="0", AGREE="0", BESIDE_ONLY="^synthpre_robustaug_epochs48$",
                             BESIDE_FOLDS="all,no_deepcrack", BESIDE_SEEDS="0,1,2"))
    assert "loso_cv.sh: done" in done.stdout
    assert not any("--only=^synthpre_robustaug_epochs48$" in line for line in calls.read_text().splitlines())


def test_slice_job_runs_a_seed_of_a_rows_left_out_folds_and_its_all_fold_beside_them(job_tree):
    """The same row as the grid (its left-out folds, one more seed) and beside it (its `all` fold, one
    seed): section 0d's SimCLR command until 2026-12-07 (now two slices). Each half counts only its own
    runs, the four fold backbones are made once, and a second call trains nothing again (no curves
    wanted: loso.sh not called again)."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    row = "^simclrpre_robustaug_epochs48$"
    env = dict(env, ONLY=row, JOB_S="300", FOLDS="no_uav75,no_uavcrack,no_deepcrack", SEEDS="2", PARALLEL="4",
               REPEAT="0", CV="0", AGREE="0", FINETUNE_CURVE="0", CURVE_S="0", BESIDE_ONLY=row, BESIDE_FOLDS="all",
               BESIDE_SEEDS="0")
    done = _slice(repo, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "candidate grid 3 of 3 runs" in done.stdout and f"beside it ({row}) 1 of 1 runs" in done.stdout
    assert "loso_cv.sh: done" in done.stdout
    lines = _calls(calls)
    crack = {next(x for x in a if x.startswith("--output=")) for a in lines
             if a[0] == "tools/pretrain.py" and "--mode=crack" in a}
    assert crack == {f"--output=runs/pretrain/loso_simclr_{f}.weights.h5"
                     for f in ("all", "no_uav75", "no_uavcrack", "no_deepcrack")}
    grids = [a for a in lines if a[0] == "tools/ablate.py" and "--report_only" not in a]
    assert len(grids) == 2
    grid = next(a for a in grids if "--folds=no_uav75,no_uavcrack,no_deepcrack" in a)
    beside = next(a for a in grids if "--folds=all" in a)
    assert "--seeds=2" in grid and "--parallel=3" in grid  # 4 slots less the one beside it
    assert "--seeds=0" in beside and "--parallel=1" in beside
    calls.write_text("")
    done = _slice(repo, env)
    assert "loso_cv.sh: done" in done.stdout
    assert not [a for a in _calls(calls) if a[0] in ("tools/ablate.py", "tools/pretrain.py") and "--report_only" not in a]


def test_slice_job_keeps_each_runs_loader_workers_from_call_to_call(job_tree):
    """The grid's and the BESIDE runs' --loader_workers come from the job's slots (PARALLEL), not from
    the runs left: a second call, with some runs done, resumes the others with the same flags (another
    --loader_workers makes ablate call a run "stale" and leave it out)."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=False)
    (repo.parent / "bin" / "nproc").write_text("#!/usr/bin/env bash\necho 16\n")  # the GPU machine's cores
    (repo.parent / "bin" / "nproc").chmod(0o755)
    job = dict(env, ONLY="^synthpre_robustaug_epochs48$", JOB_S="300", FOLDS="no_uav75,no_uavcrack", REPEAT="0",
               SEEDS="0", CV="0", AGREE="0", PARALLEL="6", BESIDE_ONLY="^synthpre_epochs48$", BESIDE_FOLDS="all",
               BESIDE_SEEDS="0,1,2", FINETUNE_CURVE="0")

    def loader_flags():
        lines = _calls(calls)
        grids = [a for a in lines if a[0] == "tools/ablate.py" and "--report_only" not in a]
        return {(next(x for x in a if x.startswith("--only=")), next(x for x in a if x.startswith("--parallel=")),
                 next(x for x in a if x.startswith("--extra="))) for a in grids}

    _slice(repo, job)
    first = loader_flags()
    assert {(o, p) for o, p, _ in first} == {("--only=^synthpre_epochs48$", "--parallel=3"),
                                      ("--only=^synthpre_robustaug_epochs48$", "--parallel=3")}, first
    assert len({x for _, _, x in first}) == 1, first  # one loader setting for all six runs side by side
    for seed in (0, 1):  # two of the runs beside the grid finished in the first call
        (repo / "runs" / "ablation_loso" / f"synthpre_epochs48_all_s{seed}").mkdir(parents=True)
        (repo / "runs" / "ablation_loso" / f"synthpre_epochs48_all_s{seed}" / "run.json").write_text("{}")
    calls.write_text("")
    _slice(repo, job)
    second = loader_flags()
    assert ("--only=^synthpre_robustaug_epochs48$", "--parallel=5") in {(o, p) for o, p, _ in second}, second
    assert {x for _, _, x in second} == {x for _, _, x in first}, (first, second)


def _pretrain_calls(lines) -> dict[str, list[str]]:
    """The recorded tools/pretrain.py calls by their --output=."""
    return {next(x for x in a if x.startswith("--output=")): a for a in lines if a[0] == "tools/pretrain.py"}


def _cut_off_call(repo, env, calls, flag: str, value: str) -> dict[str, list[str]]:
    """A first call in which each pretraining with --<flag>=<value> stops at its time limit (a checkpoint,
    no weights) and any other finishes: the job says call again and trains nothing; returns its
    pretraining calls by output."""
    cut_off = (f'for a in "$@"; do case $a in --{flag}=*) v=${{a#--{flag}=}};; --output=*) out=${{a#--output=}};; '
               f'esac; done\nif [ -n "${{out:-}}" ]; then if [ "$v" = {value} ]; then mkdir -p "$out.ckpt"; '
               'else touch "$out"; fi; fi\n')
    (repo.parent / "bin" / "python3").write_text("#!/usr/bin/env bash\necho \"$*\" >> \"$CALLS\"\n" + cut_off)
    done = _slice(repo, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backbones not finished" in done.stdout and "call again" in done.stdout
    lines = _calls(calls)
    assert not any(a[0] == "tools/ablate.py" for a in lines)  # no run before its backbone
    return _pretrain_calls(lines)


def test_slice_job_makes_the_longer_backbones_a_row_names_over_two_calls(job_tree):
    """A row on loso_synth3000_{fold} backbones: FOLD_STEPS follows from its path; the fold backbones
    pretrain 3,000 steps with checkpoints; one cut off at the call's end resumes at the next call."""
    repo, env, calls = job_tree
    env = dict(env, ONLY="^synthpre3000_robustaug_epochs48$", JOB_S="300", FOLDS="no_uav75,no_deepcrack",
               REPEAT="0", CV="0", AGREE="0", SEEDS="0")
    pre = _cut_off_call(repo, env, calls, "steps", "3000")
    assert "--steps=1000" in pre["--output=runs/pretrain/synthetic.weights.h5"]
    for fold in ("no_uav75", "no_deepcrack"):
        args = pre[f"--output=runs/pretrain/loso_synth3000_{fold}.weights.h5"]
        assert "--steps=3000" in args and "--checkpoint_every=500" in args
        assert "--init=runs/pretrain/synthetic.weights.h5" in args
    assert len(pre) == 3
    out, lines = _next_call(repo, env, calls)  # the next call: the backbones finish, then the runs
    assert "candidate grid 2 of 2 runs" in out and "loso_cv.sh: done" in out
    assert set(_pretrain_calls(lines)) == {
        "--output=runs/pretrain/loso_synth3000_no_uav75.weights.h5",
        "--output=runs/pretrain/loso_synth3000_no_deepcrack.weights.h5"}  # the synthetic one kept
    grid = next(a for a in lines if a[0] == "tools/ablate.py" and "--output_dir=runs/ablation_loso" in a)
    assert "--only=^synthpre3000_robustaug_epochs48$" in grid


def test_slice_job_makes_simclr_fold_backbones_without_the_left_out_source_over_two_calls(job_tree):
    """A row on loso_simclr_{fold} backbones: synthetic, then SimCLR on the train photos of the fold's
    sources only, then crack mode from it; SimCLR cut off at the call's end goes on at the next call
    and no crack stage starts before its SimCLR weights exist."""
    repo, env, calls = job_tree
    env = dict(env, ONLY="^simclrpre_robustaug_epochs48$", JOB_S="300", FOLDS="no_uav75,no_deepcrack",
               REPEAT="0", CV="0", AGREE="0", SEEDS="0")
    pre = _cut_off_call(repo, env, calls, "mode", "simclr")
    assert "--mode=synthetic" in pre["--output=runs/pretrain/synthetic.weights.h5"]
    for fold, sources in (("no_uav75", "uavcrack,deepcrack"), ("no_deepcrack", "uav75,uavcrack")):
        args = pre[f"--output=runs/pretrain/simclr_{fold}.weights.h5"]
        assert {"--mode=simclr", f"--data_dir={sources}", "--init=runs/pretrain/synthetic.weights.h5", "--crop=128",
                "--steps=1000", "--checkpoint_every=250"} <= set(args), args
        assert args.index("--batch_size=64") > args.index("--batch_size=128")  # absl: the last one wins
    assert len(pre) == 3  # no crack stage before its SimCLR weights
    out, lines = _next_call(repo, env, calls)  # SimCLR finishes, then the crack stage from it, then the runs
    assert "candidate grid 2 of 2 runs" in out and "loso_cv.sh: done" in out
    pre = _pretrain_calls(lines)
    assert "--output=runs/pretrain/synthetic.weights.h5" not in pre  # kept from the first call
    for fold, sources in (("no_uav75", "uavcrack,deepcrack"), ("no_deepcrack", "uav75,uavcrack")):
        assert "--mode=simclr" in pre[f"--output=runs/pretrain/simclr_{fold}.weights.h5"]  # resumed
        args = pre[f"--output=runs/pretrain/loso_simclr_{fold}.weights.h5"]
        assert {"--mode=crack", f"--data_dir={sources}", f"--init=runs/pretrain/simclr_{fold}.weights.h5",
                "--steps=1000", "--checkpoint_every=500"} <= set(args), args
    grid = next(a for a in lines if a[0] == "tools/ablate.py" and "--output_dir=runs/ablation_loso" in a)
    assert "--only=^simclrpre_robustaug_epochs48$" in grid
    # the UAV75 5-fold trains on the 1,000-step synthetic-crack backbone: not with this kind
    done = _slice(repo, dict(env, CV="1"))
    assert done.returncode == 2 and "CV=0 with simclr_crack:1000 backbones" in done.stdout, done.stdout


def test_slice_job_counts_a_simclr_rows_steps_in_its_simclr_stage(job_tree):
    """loso_simclr3000_{fold}: 3,000 SimCLR steps (files named by the count, so the 1,000-step row's
    are neither reused nor overwritten), resumed over calls; the crack stage stays 1,000 steps."""
    repo, env, calls = job_tree
    (repo / "runs" / "pretrain" / "simclr_no_uav75.weights.h5").write_bytes(b"")  # the 1,000-step row's
    env = dict(env, ONLY="^simclr3000pre_robustaug_epochs48$", JOB_S="300", FOLDS="no_uav75", REPEAT="0", CV="0",
               AGREE="0", SEEDS="0")
    pre = _cut_off_call(repo, env, calls, "mode", "simclr")
    args = pre["--output=runs/pretrain/simclr3000_no_uav75.weights.h5"]
    assert {"--mode=simclr", "--steps=3000", "--checkpoint_every=250", "--data_dir=uavcrack,deepcrack",
            "--init=runs/pretrain/synthetic.weights.h5"} <= set(args), args
    assert "--output=runs/pretrain/loso_simclr3000_no_uav75.weights.h5" not in pre  # not before SimCLR's weights
    out, lines = _next_call(repo, env, calls)
    assert "candidate grid 1 of 1 runs" in out and "loso_cv.sh: done" in out, out
    pre = _pretrain_calls(lines)
    assert "--steps=3000" in pre["--output=runs/pretrain/simclr3000_no_uav75.weights.h5"]  # resumed
    crack = pre["--output=runs/pretrain/loso_simclr3000_no_uav75.weights.h5"]
    assert {"--mode=crack", "--steps=1000", "--init=runs/pretrain/simclr3000_no_uav75.weights.h5"} <= set(crack)
    assert (repo / "runs" / "pretrain" / "simclr_no_uav75.weights.h5").read_bytes() == b""  # left alone


def test_slice_job_refuses_backbones_it_cannot_share_or_make(job_tree):
    repo, env, calls = job_tree
    base = dict(env, JOB_S="300", FOLDS="no_uav75", REPEAT="0", AGREE="0", SEEDS="0")
    cases = [  # the CV trains on 1,000-step backbones; one job pretrains one kind of fold backbone
        (dict(base, ONLY="^synthpre3000_robustaug_epochs48$"), 2, "CV=0 with synth_crack:3000 backbones"),
        (dict(base, CV="0", ONLY="^synthpre3000_robustaug_epochs48$", BESIDE_ONLY="^synthpre_epochs48$"), 2,
         "backbones 'synth_crack:1000 synth_crack:3000' (kind:steps): one kind a job"),
    ]
    for case_env, rc, message in cases:
        done = _slice(repo, case_env)
        assert done.returncode == rc and message in done.stdout, done.stdout + done.stderr
    assert not any(line.startswith("tools/pretrain.py") for line in calls.read_text().splitlines())
    # a fold backbone that ends without weights and without a checkpoint failed: the job stops there
    done = _slice(repo, dict(base, CV="0", ONLY="^synthpre_robustaug_epochs48$"))
    assert done.returncode == 1 and "backbone pretraining failed" in done.stdout, done.stdout + done.stderr
    assert not any(line.startswith("tools/ablate.py") for line in calls.read_text().splitlines())


def test_slice_job_counts_every_row_its_regex_names(job_tree):
    """ONLY naming two rows (RESULTS 0d step 1b): the grid is done when both rows' runs are, not one's."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=False)
    for fold in ("no_uav75", "no_uavcrack", "no_deepcrack"):  # one row's runs finished in an earlier call
        run = repo / "runs" / "ablation_loso" / f"synthpre_robustaug_epochs48_mixstyle_{fold}_s0"
        run.mkdir(parents=True)
        (run / "run.json").write_text("{}")
    done = _slice(repo, dict(env, ONLY="^synthpre_robustaug_epochs48_(mixstyle|ema)$", SEEDS="0", REPEAT="0",
                             FOLDS="no_uav75,no_uavcrack,no_deepcrack", CV="0", AGREE="0", FINETUNE_CURVE="0",
                             JOB_S="300"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "candidate grid 3 of 6 runs" in done.stdout and "call again" in done.stdout
    grid = next(a for a in _calls(calls) if a[0] == "tools/ablate.py" and "--output_dir=runs/ablation_loso" in a)
    assert "--only=^synthpre_robustaug_epochs48_(mixstyle|ema)$" in grid and "--seeds=0" in grid


def test_slice_job_that_makes_its_backbones_near_the_calls_end_starts_no_run(job_tree):
    """Backbones ready with too little of the call left (2026-12-07: 548 s of 560, then `timeout` got a
    negative limit and failed): no run starts, the job says call again; the next call trains them."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    env = dict(env, ONLY="^synthpre$", FOLDS="no_uavcrack", REPEAT="0", SEEDS="0", CV="0", AGREE="0",
               BESIDE_ONLY="^synthpre_epochs48$", BESIDE_FOLDS="all", BESIDE_SEEDS="0")
    done = _slice(repo, dict(env, JOB_S="80"))  # 80 s, the backbones at once: under MIN_RUN_S (90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "too few to start a run: call again" in done.stdout and "invalid option" not in done.stderr
    lines = _calls(calls)
    assert any(a[0] == "tools/pretrain.py" for a in lines) and not any(a[0] == "tools/ablate.py" for a in lines)
    out, lines = _next_call(repo, dict(env, JOB_S="300"), calls)
    assert "candidate grid 1 of 1 runs" in out and "loso_cv.sh: done" in out
    assert not any(a[0] == "tools/pretrain.py" for a in lines)  # the backbones kept


@pytest.mark.parametrize("job, job_env", [
    ("loso.sh", {"ONLY": "^synthpre$", "BACKBONE": "synth_crack", "FOLDS": "no_uavcrack", "REPEAT": "0"}),
    ("uav75_cv.sh", {"SEEDS": "0"})])
def test_grid_job_with_no_time_left_after_its_backbones_trains_nothing(job_tree, job, job_env):
    """common.sh's train_budget: under 30 s left after the backbones, no `timeout` with a negative limit."""
    repo, env, calls = job_tree
    _slice_recorder(repo, finish_runs=True)
    done = subprocess.run(["bash", f"tools/gpu_jobs/{job}"], cwd=repo, capture_output=True, text=True,
                          env=dict(env, **job_env, JOB_S="40"), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{job}: " in done.stdout and "left to train: call again" in done.stdout
    assert "invalid option" not in done.stdout + done.stderr
    assert not any(a[0] == "tools/ablate.py" and "--report_only" not in a for a in _calls(calls))
