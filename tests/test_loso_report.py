"""tools/loso_report.sh: every table of one leave-one-source-out row over runs of several slices,
checked on the committed runs of the 48-epoch robust candidate (docs/results, RESULTS 000000000)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

ROW = "synthpre_robustaug_epochs48"
RESULTS = REPO_ROOT / "docs" / "results"


def _report(out, *folders, env=None):
    return subprocess.run(["bash", "tools/loso_report.sh", ROW, str(out), *map(str, folders)], cwd=REPO_ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def _copy_runs(src, dst, pattern):
    (dst / "ablation_loso").mkdir(parents=True, exist_ok=True)
    for run in sorted((src / "ablation_loso").glob(pattern)):
        shutil.copytree(run, dst / "ablation_loso" / run.name)


@pytest.mark.slow
@pytest.mark.shared_data
def test_report_joins_slices_and_writes_every_table(tmp_path, shared_data):
    # the `all` fold's three seeds came back in one slice, the left-out folds' two seeds in another;
    # a stale copy of one left-out run in the first folder must lose to the later folder's
    first, second = tmp_path / "slice_d", tmp_path / "slice_f"
    _copy_runs(RESULTS / "h100_2026-12-06d", first, f"{ROW}_all_s*")
    _copy_runs(RESULTS / "h100_2026-12-06f", second, f"{ROW}_no_*")
    stale = first / "ablation_loso" / f"{ROW}_no_uav75_s0"
    shutil.copytree(second / "ablation_loso" / f"{ROW}_no_uavcrack_s0", stale)  # wrong numbers if used
    groups = second / "ablation_loso" / f"{ROW}_no_deepcrack_s0" / "groups.npz"
    committed = dict(np.load(groups))
    groups.unlink()  # made again from the data (tools/tile_groups.py)
    blended = second / "ablation_loso" / f"{ROW}_no_uav75_s1" / "margins.npz"  # as if run with a blend too
    arrays = dict(np.load(blended))
    plain = arrays["split"] == "eval_adabn"
    np.savez(blended, **{k: np.concatenate([v, v[plain]]) if v.ndim == 1 and k != "tta" else v for k, v in arrays.items()
                         if k not in ("margins", "split")},
             margins=np.concatenate([arrays["margins"], arrays["margins"][:, plain]], axis=1),
             split=np.concatenate([arrays["split"], np.full(int(plain.sum()), "eval_adabn_w0.5")]))
    baseline = f"synthpre_epochs48:{RESULTS / 'h100_2026-12-07b'}"  # the plain 48-epoch recipe, RESULTS 000000000000000
    done = _report(tmp_path / "out", first, second, env={"NS": "0,10", "DRAWS": "2", "DATA_ROOT": str(shared_data),
                                                         "BASELINE": baseline})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"loso_report.sh: 9 runs of {ROW} (seeds 0,1,2)" in done.stdout
    again = np.load(groups)
    assert all(np.array_equal(again[k], v) for k, v in committed.items())
    table = (tmp_path / "out" / f"loso_{ROW}.md").read_text()
    # the numbers of RESULTS 000000000 (left-out UAV75 92.1 and 90.1: the stale copy would give 81.9)
    assert f"| {ROW} | uav75 | 2 | 0.377 | 91.06 ± 1.40" in table
    assert f"| {ROW} | 3 | 87.36 ± 0.14 [86.1, 88.6] | 92.56 ± 0.14 |" in table
    by_source = (tmp_path / "out" / f"few_shot_adabn_{ROW}" / "few_shot_by_source.md").read_text()
    assert "| uav75, threshold, prior 50 | 2 | 0.911 ± 0.014 |" in by_source and "AdaBN" in by_source
    # the blend's curves (here plain AdaBN's margins again: the same AdaBN rows), for the run that has them
    blend = (tmp_path / "out" / f"few_shot_adabn_w0.5_{ROW}" / "few_shot.md").read_text()
    plain_rows = (tmp_path / "out" / f"few_shot_adabn_{ROW}" / "few_shot.md").read_text().splitlines()
    assert [ln for ln in blend.splitlines() if f"{ROW}_no_uav75_s1 | uav75 | AdaBN," in ln] == \
        [ln for ln in plain_rows if f"{ROW}_no_uav75_s1 | uav75 | AdaBN," in ln] != []
    assert "AdaBN" not in "".join(ln for ln in blend.splitlines() if f"{ROW}_no_uav75_s0 " in ln)
    assert f"few_shot_adabn_w0.5_{ROW}/" in done.stdout
    # against the baseline, from the same runs (the stale copy loses here too): per seed, Welch's p
    compared = (tmp_path / "out" / f"compare_{ROW}_vs_synthpre_epochs48.md").read_text()
    assert "| uav75 | 91.06 ± 1.40 (92.1 / 90.1) | 86.42 ± 0.47 (86.1 / 86.8) | +4.64 | 0.107 |" in compared
    rules = (tmp_path / "out" / f"threshold_rules_{ROW}.md").read_text()
    assert "| `f1` | 87.4 ± 0.1 |" in rules and sum(line.startswith("| `") for line in rules.splitlines()) == 7
    # where the errors are (tools/error_anatomy.py), of the same two left-out seeds (not the stale copy's)
    anatomy = (tmp_path / "out" / f"error_anatomy_{ROW}.md").read_text()
    assert f"| {ROW} | left out | uav75 | 2 | missed crack | 100-299 crack px | 40 | 13.8 ± 1.8 | 40.8 ± 1.2 |" in anatomy
    assert f"| {ROW} | val | uavcrack | 4 | missed crack |" in anatomy  # the folds that trained on it


def test_report_refuses_folders_without_the_row(tmp_path):
    (tmp_path / "empty" / "ablation_loso").mkdir(parents=True)
    done = _report(tmp_path / "out", tmp_path / "empty")
    assert done.returncode == 1 and f"no finished run of row '{ROW}'" in done.stderr
    done = _report(tmp_path / "out")
    assert done.returncode == 2 and "name at least one results folder" in done.stderr
    _copy_runs(RESULTS / "h100_2026-12-06d", tmp_path / "all_only", f"{ROW}_all_s0")
    done = _report(tmp_path / "out", tmp_path / "all_only")
    assert done.returncode == 1 and "no no_* run" in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.shared_data
def test_runs_cut_off_after_the_final_models_point_count_in_the_margins_tables(tmp_path, shared_data):
    # RESULTS 000000000000000000000: the SimCLR row's `all` runs trained to the end and stored the final
    # model's point and margins, then the GPU call ended while they scored best.keras (no run.json)
    row = "simclrpre_robustaug_epochs48"
    _copy_runs(RESULTS / "h100_2026-12-07f", tmp_path / "f", f"{row}_no_uav75_s0")
    _copy_runs(RESULTS / "h100_2026-12-07h", tmp_path / "h", f"{row}_all_s*")
    assert not list((tmp_path / "h").glob("ablation_loso/*/run.json"))
    training = tmp_path / "h" / "ablation_loso" / f"{row}_all_s9"  # still training: no margins yet
    shutil.copytree(tmp_path / "h" / "ablation_loso" / f"{row}_all_s0", training)
    (training / "margins.npz").unlink()
    done = subprocess.run(["bash", "tools/loso_report.sh", row, str(tmp_path / "out"), str(tmp_path / "f"),
                           str(tmp_path / "h")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NS": "0,10", "DRAWS": "2", "DATA_ROOT": str(shared_data)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"loso_report.sh: 4 runs of {row} (seeds 0,1,2)" in done.stdout
    cut = " ".join(f"{row}_all_s{s}" for s in range(3))
    assert f"recomputed from the margins, no metrics at 0.5): {cut}\n" in done.stdout
    table = (tmp_path / "out" / f"loso_{row}.md").read_text()
    assert table.endswith(f"picked it, no metrics at 0.5): {cut}\n")
    # in the LOSO table at the point each run printed (pooled val 92.93 / 92.98 / 92.71), marked as such
    assert f"| {row} [all] | aspp@layer1 x4 rates 2,4,8 max +w (3 cut off: point only) | 3 | - |" in table
    assert f"| {row} | 1 | 91.39 | 92.87 ± 0.14 | uav75 93.60 ± 0.76 | uavcrack 91.94 ± 0.06 | deepcrack 95.24 ± 0.21 |" \
        in table, table
    # the rules' table scores them at the point the trainer printed (uav75 94.0 / 94.0 / 92.7, RESULTS)
    rules = (tmp_path / "out" / f"threshold_rules_{row}.md").read_text()
    assert "| `f1` | 91.4 | 91.4 | 93.6 ± 0.8 | 91.9 ± 0.1 | 95.2 ± 0.2 | 0.27-0.42 |" in rules, rules
