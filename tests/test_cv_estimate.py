"""tools/cv_estimate.py: one source's k-fold estimate, pooled per seed at each fold's stored point."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.tool_loader import load_tool

cv = load_tool("cv_estimate")


def _write_fold(folder, seed, fold, labels, margins, threshold, temperature=1.0, k=2):
    """A CV run: ``labels`` / ``margins`` are the source's val tiles (one view), plus 3 tiles of
    another source that must not count; the stored operating point as the trainer writes it."""
    folder.mkdir(parents=True)
    m = np.concatenate([margins, [9.0, 9.0, 9.0]])[None].astype(np.float32)
    np.savez(folder / "margins.npz", margins=m, labels=np.concatenate([labels, [0, 0, 0]]),
             sources=np.array(["uav75"] * len(labels) + ["other"] * 3), split=np.array(["val"] * (len(labels) + 3)),
             tta=np.array("none"))
    (folder / "run.json").write_text(json.dumps({
        "config": {"seed": seed, "val_split": f"cv{k}_{fold}_val"},
        "operating_point": {"threshold": threshold, "temperature": temperature}}))


def test_pooled_per_seed_at_each_folds_own_threshold(tmp_path):
    # seed 0: fold 0 at threshold 0.5 gets 3 of 4 right (one false alarm), fold 1 at a high
    # threshold (0.95) misses the crack whose p = 0.88: pooled 6 of 8; seed 1 all right; seed 2 has
    # fold 0 only (incomplete)
    y = np.array([1, 1, 0, 0])
    _write_fold(tmp_path / "fold0_s0", 0, 0, y, np.array([3.0, 3.0, 1.0, -3.0]), 0.5)
    _write_fold(tmp_path / "fold1_s0", 0, 1, y, np.array([3.5, 2.0, -3.0, -3.0]), 0.95)
    _write_fold(tmp_path / "fold0_s1", 1, 0, y, np.array([3.0, 3.0, -1.0, -3.0]), 0.5)
    _write_fold(tmp_path / "fold1_s1", 1, 1, y, np.array([3.0, 3.0, -1.0, -3.0]), 0.5)
    _write_fold(tmp_path / "fold0_s2", 2, 0, y, np.array([3.0, 3.0, -1.0, -3.0]), 0.5)
    (tmp_path / "fold1_s2").mkdir()  # cut off before margins.npz: skipped
    verdicts = [v for v in (cv.fold_verdicts(str(p), "uav75") for p in sorted(tmp_path.iterdir())) if v]
    result = cv.estimate(verdicts)
    s0 = result["seeds"][0]
    assert (s0["tiles"], s0["accuracy"]) == (8, pytest.approx(6 / 8))  # the other source never counts
    assert s0["precision"] == pytest.approx(3 / 4) and s0["recall"] == pytest.approx(3 / 4)
    assert result["seeds"][1]["accuracy"] == 1.0
    assert result["complete_seeds"] == [0, 1] and not result["seeds"][2]["complete"]
    est = result["estimate"]["accuracy"]
    assert est["mean"] == pytest.approx(87.5) and est["std"] == pytest.approx(np.std([75, 100], ddof=1))
    assert est["ci95_half"] == pytest.approx(12.706 * est["std"] / np.sqrt(2))  # t with 1 d.o.f.
    assert result["per_fold"]["cv2_1_val"] == [75.0, 100.0]
    md = cv.markdown(result, "uav75")
    assert "**Accuracy 87.5 ± 17.7" in md and "2 (incomplete: not in the estimate)" in md


def test_a_fold_without_any_run_leaves_every_seed_incomplete(tmp_path):
    # a 5-fold grid whose fold 4 has not run anywhere: 4 folds are not an estimate of 5
    for fold in range(4):
        _write_fold(tmp_path / f"fold{fold}_s0", 0, fold, np.array([1, 0]), np.array([3.0, -3.0]), 0.5, k=5)
    result = cv.estimate([cv.fold_verdicts(str(p), "uav75") for p in sorted(tmp_path.iterdir())])
    assert result["folds"][-1] == "cv5_4_val" and result["complete_seeds"] == []
    assert result["estimate"]["accuracy"] is None and "No seed has every fold" in cv.markdown(result, "uav75")


def test_a_tile_exactly_at_the_threshold_is_background_as_everywhere_in_the_project(tmp_path):
    _write_fold(tmp_path / "fold0_s0", 0, 0, np.array([1, 0]), np.array([0.0, -3.0]), 0.5)  # p(crack) = 0.5
    assert cv.fold_verdicts(str(tmp_path / "fold0_s0"), "uav75")["predicted"].tolist() == [0, 0]


def test_the_temperature_of_the_point_is_applied(tmp_path):
    # margin 1 at T = 4: p = sigmoid(0.25) = 0.56 < 0.6 -> no crack (at T = 1, p = 0.73 would be a crack)
    _write_fold(tmp_path / "fold0_s0", 0, 0, np.array([1, 0]), np.array([1.0, -5.0]), 0.6, temperature=4.0)
    v = cv.fold_verdicts(str(tmp_path / "fold0_s0"), "uav75")
    assert v["predicted"].tolist() == [0, 0]


def test_unknown_source_and_no_runs_fail_clearly(tmp_path):
    _write_fold(tmp_path / "fold0_s0", 0, 0, np.array([1, 0]), np.array([1.0, -1.0]), 0.5)
    with pytest.raises(ValueError, match="no val tiles of source 'deepcrack'"):
        cv.fold_verdicts(str(tmp_path / "fold0_s0"), "deepcrack")
    done = subprocess.run([sys.executable, "tools/cv_estimate.py", f"--runs={tmp_path}/nothing*"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no run with margins.npz" in done.stderr
