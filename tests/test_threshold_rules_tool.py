"""tools/threshold_rules.py: rules ranked by the left-out source's accuracy, from stored margins."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tool_loader import load_tool

rules_tool = load_tool("threshold_rules")


def _write_run(folder, seed, val_sources, eval_source=None, shift=0.0):
    """margins.npz of a run: each val source's classes at margins -2 / +2 (+ a per-source offset),
    the left-out source's shifted by ``shift`` (its best threshold lies elsewhere)."""
    rng = np.random.default_rng(seed)
    margins, labels, sources, split = [], [], [], []
    for k, src in enumerate(val_sources + ([eval_source] if eval_source else [])):
        y = rng.integers(0, 2, 400)
        offset = shift if src == eval_source else (1.5 if k == 1 else 0.0)
        m = np.where(y == 1, 2.0, -2.0) + offset + rng.normal(0, 1.0, 400)
        margins.append(m)
        labels.append(y)
        sources += [src] * 400
        split += ["eval" if src == eval_source else "val"] * 400
    folder.mkdir(parents=True)
    np.savez(folder / "margins.npz", margins=np.concatenate(margins)[None].astype(np.float32),
             labels=np.concatenate(labels), sources=np.array(sources), split=np.array(split), tta=np.array("none"))
    (folder / "run.json").write_text(json.dumps({"config": {"seed": seed, "eval_sources": eval_source or ""}}))


def test_rules_are_scored_on_the_left_out_source_with_the_pick_made_on_val(tmp_path):
    for seed in (0, 1):
        _write_run(tmp_path / f"r_no_c_s{seed}", seed, ["a", "b"], "c", shift=1.0)
        _write_run(tmp_path / f"r_all_s{seed}", seed, ["a", "b", "c"])
    runs = [rules_tool.load_run(str(p)) for p in sorted(tmp_path.iterdir())]
    assert {r["fold"] for r in runs} == {"all", "no_c"}
    arrays = runs[-1]["arrays"]  # r_no_c_s1
    scored = rules_tool.score_rules(arrays, ["f1", "min_source_accuracy"])
    # the threshold is chosen on the val tiles alone, then applied to the left-out source
    val = arrays["split"] == "val"
    from crack_tf.evaluation import calibration, stats

    t = calibration.fit_temperature(arrays["margins"][:, val], arrays["labels"][val])
    probs = calibration.calibrated_probability(arrays["margins"], t)
    expected = stats.pick_threshold(probs[val], arrays["labels"][val], "min_source_accuracy", arrays["sources"][val])
    assert scored["min_source_accuracy"]["threshold"] == pytest.approx(expected["threshold"])
    ev = ~val
    acc = stats.all_metrics(probs[ev], arrays["labels"][ev], expected["threshold"])["accuracy"]
    assert scored["min_source_accuracy"]["eval"]["c"]["accuracy"] == pytest.approx(acc)
    assert set(scored["f1"]["val"]) == {"a", "b"} and set(scored["f1"]["eval"]) == {"c"}
    md, numbers = rules_tool.table(runs, ["f1", "min_source_accuracy"])
    assert md.count("\n| `") == 2 and "left out c" in md and "`all` val c" in md
    assert len(numbers["f1"]["left_out"]["c"]) == 2 and len(numbers["f1"]["all_fold_val"]["a"]) == 2
    ranked = [line.split("|")[1].strip() for line in md.splitlines()[2:]]
    means = {rule: np.mean(numbers[rule]["mean_over_left_out_per_seed"]) for rule in numbers}
    assert ranked == [f"`{r}`" for r in sorted(means, key=lambda r: -means[r])]  # best first


def test_a_run_cut_off_before_run_json_gets_its_point_recomputed_from_the_margins(tmp_path):
    from crack_tf.evaluation import calibration, run_margins

    _write_run(tmp_path / "r", 0, ["a", "b"], "c", shift=1.0)
    (tmp_path / "r" / "run.json").unlink()
    (tmp_path / "r" / "config.json").write_text(json.dumps({"seed": 3, "threshold_rule": "min_source_f1",
                                                            "tta": "none"}))
    run = run_margins.read_run(str(tmp_path / "r"))
    arrays = run["arrays"]
    val = arrays["split"] == "val"
    expected = calibration.operating_point(arrays["margins"][:, val], arrays["labels"][val], "min_source_f1",
                                           sources=arrays["sources"][val])
    assert run["recomputed"] and run["config"]["seed"] == 3
    assert run["point"]["threshold"] == expected["threshold"] and run["point"]["rule"] == "min_source_f1"
    assert rules_tool.load_run(str(tmp_path / "r"))["seed"] == 3
    (tmp_path / "r" / "run.json").write_text(json.dumps({"config": {"seed": 4}, "operating_point": {"threshold": 0.7}}))
    stored = run_margins.read_run(str(tmp_path / "r"))
    assert not stored["recomputed"] and stored["point"] == {"threshold": 0.7} and stored["config"]["seed"] == 4
    with pytest.raises(ValueError, match="no margins.npz"):
        run_margins.read_run(str(tmp_path))


def _flat(value, key=""):
    if isinstance(value, dict):
        return {k: v for name, sub in value.items() for k, v in _flat(sub, f"{key}/{name}").items()}
    return {key: value}


@pytest.mark.parametrize("run", ["h100_2026-12-07f/ablation_loso/simclrpre_robustaug_epochs48_no_uavcrack_s1",
                                 "h100_2026-12-06d/ablation_loso/synthpre_robustaug_epochs48_all_s0"])
def test_a_recomputed_point_is_the_one_the_trainer_stored_on_the_gpu(tmp_path, run):
    # the committed runs' run.json points (picked on an H100 from these margins), against the same
    # margins without run.json: every number of the point, the left-out source's, AdaBN's and its blend's
    # scores too (the no_uavcrack run has all of them), within float32 rounding
    import shutil

    from crack_tf.evaluation import run_margins
    from tests.conftest import REPO_ROOT

    folder = REPO_ROOT / "docs" / "results" / run
    stored = json.loads((folder / "run.json").read_text())
    shutil.copy(folder / "margins.npz", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(stored["config"]))
    recomputed = run_margins.read_run(str(tmp_path))
    assert recomputed["recomputed"]
    want, got = _flat(stored["operating_point"]), _flat(recomputed["point"])
    assert set(want) == set(got) and len(want) > 30
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
        else:
            assert got[key] == value, key
    if "no_" in run:
        assert {"/eval_sources_at_threshold_by_source/uavcrack/accuracy",
                "/eval_sources_adabn_at_threshold_by_source/uavcrack/accuracy",
                "/eval_sources_adabn_by_target_weight/0.5/uavcrack/accuracy"} <= set(want)
