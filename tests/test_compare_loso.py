"""tools/compare_loso.py: two LOSO rows per left-out source and seed, with Welch's test."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tests.tool_loader import REPO, load_tool

cmp = load_tool("compare_loso")


def _write_run(results, row, source, seed, eval_margins, labels, threshold=0.5, temperature=1.0, adabn=None):
    """A left-out run as a LOSO grid brings it back: 2 val tiles of another source, the left-out
    source's eval tiles (one view), optionally the same tiles after AdaBN; the stored point."""
    folder = results / "ablation_loso" / f"{row}_no_{source}_s{seed}"
    folder.mkdir(parents=True)
    parts = [("val", [4.0, -4.0], [1, 0], "other"), ("eval", eval_margins, labels, source)]
    if adabn is not None:
        parts.append(("eval_adabn", adabn, labels, source))
    np.savez(folder / "margins.npz", margins=np.concatenate([np.asarray(m, np.float32) for _, m, _, _ in parts])[None],
             labels=np.concatenate([np.asarray(y) for _, _, y, _ in parts]),
             sources=np.array([s for _, m, _, s in parts for _ in m]),
             split=np.array([sp for sp, m, _, _ in parts for _ in m]), tta=np.array("none"))
    (folder / "run.json").write_text(json.dumps({"config": {"seed": seed},
                                                 "operating_point": {"threshold": threshold, "temperature": temperature}}))
    return folder


def _welch_reference(a, b):
    """Welch's t and Welch-Satterthwaite degrees of freedom by hand, two-sided p from the t law."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return 2 * scipy_stats.t.sf(abs(t), df)


def test_welch_p_matches_the_textbook_formula_and_refuses_too_few():
    a, b = [88.1, 88.7, 87.9], [92.1, 90.1, 90.7, 91.5]
    assert cmp.welch_p(a, b) == pytest.approx(_welch_reference(a, b), rel=1e-9)
    assert cmp.welch_p([1.0], b) is None and cmp.welch_p([1.0, 1.0], [2.0, 2.0]) is None


def test_score_run_counts_at_the_stored_point_and_ranks_free_of_it(tmp_path):
    y = [1, 1, 0, 0]
    # temperature 2: p = sigmoid(m / 2) = 0.73, 0.62, 0.56, 0.12; threshold 0.6 -> decisions 1, 1, 0, 0 (all right);
    # at temperature 1 the third (p = 0.62) would be a false alarm: the temperature is used
    run = _write_run(tmp_path, "r", "uav75", 0, [2.0, 1.0, 0.5, -4.0], y, threshold=0.6, temperature=2.0,
                     adabn=[-1.0, 3.0, 2.0, -3.0])
    scored = cmp.score_run(str(run))
    assert scored["left_out"] == "uav75" and scored["seed"] == 0
    assert scored["splits"]["eval"] == {"accuracy": 1.0, "roc_auc": 1.0, "tiles": 4}
    # after AdaBN: p = 0.38, 0.82, 0.73, 0.18 -> 0, 1, 1, 0: half right; ranking: the crack at -1 is
    # below the background at 2, 3 of the 4 (crack, background) pairs in order
    assert scored["splits"]["eval_adabn"]["accuracy"] == 0.5
    assert scored["splits"]["eval_adabn"]["roc_auc"] == pytest.approx(0.75)


def test_compare_two_rows_per_source_seed_and_the_mean_of_complete_seeds(tmp_path):
    y = [1, 1, 0, 0]
    right, one_wrong = [3.0, 3.0, -3.0, -3.0], [3.0, -3.0, -3.0, -3.0]
    a_dir, b_old, b_new = tmp_path / "a", tmp_path / "b_old", tmp_path / "b_new"
    for seed in (0, 1):
        _write_run(a_dir, "cand", "uav75", seed, right, y)
        _write_run(a_dir, "cand", "deepcrack", seed, right if seed else one_wrong, y)
    _write_run(a_dir, "cand", "uavcrack", 0, right, y)  # seed 0 only: uavcrack's row, yet no mean for seed 1
    _write_run(a_dir, "cand_no_aug", "uav75", 0, one_wrong, y)  # another row its glob matches: not read
    for seed in (0, 1, 2):
        _write_run(b_old, "base", "uav75", seed, right, y)
        _write_run(b_new, "base", "uav75", seed, one_wrong if seed < 2 else right, y)  # replaces the old folder's
        _write_run(b_new, "base", "deepcrack", seed, one_wrong, y)
    a = cmp.side_values(cmp.find_runs("cand", [str(a_dir)]))
    b = cmp.side_values(cmp.find_runs("base", [str(b_old), str(b_new)]))
    assert sorted(cmp.find_runs("cand", [str(a_dir)])) == [f"cand_no_{s}_s{k}" for s, k in
                                                         (("deepcrack", 0), ("deepcrack", 1), ("uav75", 0),
                                                          ("uav75", 1), ("uavcrack", 0))]
    rows = {r["left_out"]: r for r in cmp.compare(a, b)}
    assert set(rows) == {"uav75", "deepcrack", cmp.MEAN}  # uavcrack: B has none
    uav = rows["uav75"]
    assert uav["accuracy"] == {"a": [100.0, 100.0], "b": [75.0, 75.0, 100.0]}  # B's seeds in order, newest folder
    assert uav["difference"] == pytest.approx(100 - 250 / 3)
    # A has no spread, B has: Welch's test still applies (its degrees of freedom are B's)
    assert uav["welch_p"] == pytest.approx(_welch_reference([100.0, 100.0], [75.0, 75.0, 100.0]), rel=1e-9)
    mean = rows[cmp.MEAN]
    # the mean over A's left-out sources per seed uses only the seeds with all three: seed 0 (uav75 100,
    # deepcrack 75, uavcrack 100); seed 1 lacks uavcrack
    assert mean["seeds"]["a"] == [0] and mean["accuracy"]["a"] == [pytest.approx(275 / 3)]
    assert mean["accuracy"]["b"] == [75.0, 75.0, pytest.approx(87.5)]
    dc = rows["deepcrack"]
    assert dc["accuracy"] == {"a": [75.0, 100.0], "b": [75.0, 75.0, 75.0]}
    assert dc["welch_p"] == pytest.approx(_welch_reference([75.0, 100.0], [75.0, 75.0, 75.0]), rel=1e-9)


def test_command_writes_the_table_and_refuses_bad_input(tmp_path):
    y = [1, 0]
    for seed in (0, 1):
        _write_run(tmp_path / "a", "cand", "uav75", seed, [2.0, -2.0 + seed * 3], y)
        _write_run(tmp_path / "b", "base", "uav75", seed, [2.0, -2.0], y)
    out = tmp_path / "cmp.md"
    done = subprocess.run([sys.executable, "tools/compare_loso.py", f"--a=cand:{tmp_path / 'a'}",
                           f"--b=base:{tmp_path / 'b'}", f"--out={out}"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    assert "| uav75 | 75.00 ± 35.36 (100.0 / 50.0) | 100.00 ± 0.00 (100.0 / 100.0) | -25.00 |" in table
    numbers = json.loads((tmp_path / "cmp.md.json").read_text())
    assert numbers["left_out"][0]["accuracy"]["a"] == [100.0, 50.0]
    assert numbers["all_val"] == [] and "whole mix" not in table  # no `all` runs on either side
    for args, message in (([f"--a=cand{tmp_path / 'a'}", f"--b=base:{tmp_path / 'b'}"], "expected <row>:"),
                          ([f"--a=cand:{tmp_path}", f"--b=base:{tmp_path / 'b'}"], "no ablation_loso/"),
                          ([f"--a=none:{tmp_path / 'a'}", f"--b=base:{tmp_path / 'b'}"], "no left-out run of 'none'")):
        bad = subprocess.run([sys.executable, "tools/compare_loso.py", *args], cwd=REPO, capture_output=True, text=True)
        assert bad.returncode != 0 and message in bad.stderr + bad.stdout, (args, bad.stderr[-500:])


def _write_all_run(results, row, seed, margins_by_source, threshold=0.5):
    """A whole-mix (`all`) run: val tiles of each source, one view, labels 1, 1, 0, 0 each."""
    folder = results / "ablation_loso" / f"{row}_all_s{seed}"
    folder.mkdir(parents=True)
    sources = [s for s, m in margins_by_source.items() for _ in m]
    np.savez(folder / "margins.npz", margins=np.concatenate([np.float32(m) for m in margins_by_source.values()])[None],
             labels=np.array([1, 1, 0, 0] * len(margins_by_source)), sources=np.array(sources),
             split=np.array(["val"] * len(sources)), tta=np.array("none"))
    (folder / "run.json").write_text(json.dumps({"config": {"seed": seed},
                                                 "operating_point": {"threshold": threshold, "temperature": 1.0}}))


def test_whole_mix_val_per_source_with_precision_recall_and_pooled(tmp_path):
    right, false_alarm, miss = [3.0, 3.0, -3.0, -3.0], [3.0, 3.0, 3.0, -3.0], [3.0, -3.0, -3.0, -3.0]
    for seed in (0, 1):
        _write_run(tmp_path / "a", "cand", "uav75", seed, right, [1, 1, 0, 0])  # the left-out table needs one
        _write_run(tmp_path / "b", "base", "uav75", seed, right, [1, 1, 0, 0])
        _write_all_run(tmp_path / "a", "cand", seed, {"uav75": right, "deepcrack": false_alarm if seed else right})
        _write_all_run(tmp_path / "b", "base", seed, {"uav75": miss, "deepcrack": right, "other": right})
    # a left-out run's folder is not an `all` run, and the other way round
    assert sorted(cmp.find_runs("cand", [str(tmp_path / "a")], whole_mix=True)) == ["cand_all_s0", "cand_all_s1"]
    assert sorted(cmp.find_runs("cand", [str(tmp_path / "a")])) == ["cand_no_uav75_s0", "cand_no_uav75_s1"]
    rows = {r["source"]: r for r in cmp.compare_val(cmp.find_runs("cand", [str(tmp_path / "a")], whole_mix=True),
                                                   cmp.find_runs("base", [str(tmp_path / "b")], whole_mix=True))}
    assert list(rows) == ["deepcrack", "uav75", cmp.POOLED]  # B's "other": A has none
    dc, uav, pooled = rows["deepcrack"], rows["uav75"], rows[cmp.POOLED]
    # seed 1's deepcrack: 2 cracks found, 1 of 2 backgrounds called a crack: accuracy 75, P 2/3, R 1
    assert dc["a"]["accuracy"] == [100.0, 75.0] and dc["a"]["precision"] == [100.0, pytest.approx(200 / 3)]
    assert dc["a"]["recall"] == [100.0, 100.0]
    assert uav["b"] == {"accuracy": [75.0, 75.0], "precision": [100.0, 100.0], "recall": [50.0, 50.0]}
    assert uav["difference"] == 25.0 and uav["welch_p"] is None  # no spread on either side
    # pooled over every val source of the run (B's three sources, 12 tiles: one miss)
    assert pooled["b"]["accuracy"] == [pytest.approx(1100 / 12)] * 2 and pooled["a"]["accuracy"] == [100.0, 87.5]
    assert dc["welch_p"] == pytest.approx(_welch_reference([100.0, 75.0], [100.0, 100.0]), rel=1e-9)
    table = cmp.markdown_val(list(rows.values()), "cand", "base")
    assert "| uav75 | 100.00 ± 0.00 (100.0 / 100.0) | 75.00 ± 0.00 (75.0 / 75.0) | +25.00 | - |" in table
    assert "| 100.00 ± 0.00 / 100.00 ± 0.00 | 100.00 ± 0.00 / 50.00 ± 0.00 |" in table  # P / R of A, of B
    assert table.rstrip().endswith("Seeds: A 0, 1; B 0, 1.")
