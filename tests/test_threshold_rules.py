"""Source-balanced threshold rules: no source picks the operating threshold alone."""

from __future__ import annotations

import numpy as np
import pytest

from crack_tf.evaluation import calibration, stats


def _two_sources(seed: int = 0):
    """900 tiles of a source whose classes split near 0.35 and 100 of one whose negatives score ~0.47."""
    rng = np.random.default_rng(seed)
    big_y, small_y = rng.integers(0, 2, 900), rng.integers(0, 2, 100)
    big = np.clip(np.where(big_y == 1, 0.5, 0.2) + rng.normal(0, 0.05, 900), 0, 1)
    small = np.clip(np.where(small_y == 1, 0.9, 0.47) + rng.normal(0, 0.05, 100), 0, 1)
    return (np.r_[big, small], np.r_[big_y, small_y], np.array(["big"] * 900 + ["small"] * 100))


def _brute_force(scores, labels, groups, aggregate, metric):
    """Best aggregated per-source metric over every midpoint between distinct scores (the reference)."""
    u = np.unique(scores)
    candidates = np.r_[0.0, (u[1:] + u[:-1]) / 2, 1.0]
    best = -1.0
    for t in candidates:
        values = []
        for g in dict.fromkeys(groups.tolist()):
            m = stats.all_metrics(scores[groups == g], labels[groups == g], t)
            values.append((m["recall"] + 1 - m["false_alarm_rate"]) / 2 if metric == "balanced_accuracy" else m[metric])
        best = max(best, float(np.mean(values) if aggregate == "mean" else np.min(values)))
    return best


@pytest.mark.parametrize("rule", ["mean_source_accuracy", "min_source_accuracy", "mean_source_f1",
                                  "min_source_f1", "mean_source_balanced_accuracy", "min_source_balanced_accuracy"])
def test_source_rule_reaches_the_brute_force_optimum(rule):
    scores, labels, groups = _two_sources()
    picked = stats.pick_threshold(scores, labels, rule, groups)
    aggregate, metric = rule.split("_source_")
    assert picked["source_score"] == pytest.approx(_brute_force(scores, labels, groups, aggregate, metric), abs=1e-12)
    # and the reported score is what that threshold gives
    per = stats.source_metric_at(scores, labels, groups, np.array([picked["threshold"]]), metric)
    values = [v[0] for v in per.values()]
    assert picked["source_score"] == pytest.approx(np.mean(values) if aggregate == "mean" else np.min(values))


def test_pooled_f1_follows_the_big_source_and_the_balanced_rule_does_not():
    scores, labels, groups = _two_sources()
    pooled = stats.pick_threshold(scores, labels, "f1")
    balanced = stats.pick_threshold(scores, labels, "min_source_accuracy", groups)
    small = groups == "small"
    acc_small = {name: stats.all_metrics(scores[small], labels[small], p["threshold"])["accuracy"]
                 for name, p in (("pooled", pooled), ("balanced", balanced))}
    assert pooled["threshold"] < 0.4  # set by the 900 tiles of the big source: the small one at chance
    assert acc_small["pooled"] < 0.6 and acc_small["balanced"] > 0.75
    assert balanced["source_score"] > 0.75  # both sources reasonably served at one threshold


def test_one_source_rules_equal_the_pooled_optimum():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 300), 0, 1)
    f1 = stats.pick_threshold(scores, labels, "f1")
    same = stats.pick_threshold(scores, labels, "mean_source_f1")  # no groups: one source
    assert same["threshold"] == f1["threshold"] and same["source_score"] == pytest.approx(f1["f1"])
    acc = stats.pick_threshold(scores, labels, "min_source_accuracy", np.zeros(300))
    sweep = stats.threshold_sweep(scores, labels)
    assert acc["accuracy"] == pytest.approx(sweep["accuracy"].max())


def test_operating_point_passes_the_sources_to_the_rule():
    scores, labels, groups = _two_sources(1)
    margins = np.log(scores / (1 - scores + 1e-9) + 1e-9)
    point = calibration.operating_point(margins, labels, "min_source_accuracy", sources=groups)
    probs = calibration.calibrated_probability(margins, point["temperature"])
    assert point["threshold"] == stats.pick_threshold(probs, labels, "min_source_accuracy", groups)["threshold"]
    assert "source_score" not in point["val_at_threshold"]


@pytest.mark.parametrize("bad", ["max_source_f1", "mean_source_precision", "f2", "precision@1.5", ""])
def test_bad_rules_name_every_valid_form(bad):
    with pytest.raises(ValueError, match="source-balanced"):
        stats.check_rule(bad)


def test_trainer_flag_validation_accepts_source_rules_and_rejects_others():
    from crack_tf.training import flags as train_flags
    from crack_tf.training.config import from_values

    ok = from_values({"threshold_rule": "mean_source_balanced_accuracy"})
    train_flags.validate(ok)
    with pytest.raises(ValueError, match="threshold_rule='median_source_f1'"):
        train_flags.validate(from_values({"threshold_rule": "median_source_f1"}))


def test_adabn_scoring_needs_eval_sources():
    from crack_tf.training import flags as train_flags
    from crack_tf.training.config import from_values

    with pytest.raises(ValueError, match="--adabn_eval_crops must be >= 0 and needs --eval_sources"):
        train_flags.validate(from_values({"adabn_eval_crops": 64}))
    with pytest.raises(ValueError, match="zhang2016 has no BatchNorm"):
        train_flags.validate(from_values({"adabn_eval_crops": 64, "eval_sources": "uav75", "model": "zhang2016"}))
    with pytest.raises(ValueError, match="--adabn_batch_size=0: must be >= 1"):
        train_flags.validate(from_values({"adabn_batch_size": 0}))
    for weights in (["0"], ["1", "1.0"], ["1.5"], ["half"], []):
        with pytest.raises(ValueError, match="--adabn_target_weights=.*give distinct weights in \\(0, 1\\]"):
            train_flags.validate(from_values({"adabn_target_weights": weights}))
    train_flags.validate(from_values({"adabn_target_weights": ["1", "0.5"]}))
    train_flags.validate(from_values({"adabn_eval_crops": 64, "eval_sources": "uav75", "data_source": "photos",
                                      "data_dir": "uavcrack"}))
    with pytest.raises(ValueError, match="--save_eval_features needs --eval_sources"):
        train_flags.validate(from_values({"save_eval_features": True}))
