"""Unit tests for crack_tf.metrics: conventions, input formats, serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from crack_tf import metrics as M

ALL = (M.Recall, M.MissedAlarmRate, M.Precision, M.FalseAlarmRate, M.Accuracy, M.F1Score)


def _result(cls, y, pred, **kw):
    sw = kw.pop("sample_weight", None)
    m = cls(**kw)
    m.update_state(np.asarray(y), np.asarray(pred, np.float32), sample_weight=sw)
    return np.asarray(m.result())


def _all(y, pred, **kw) -> dict[str, float]:
    return {cls.default_name: float(_result(cls, y, pred, **dict(kw))) for cls in ALL}


def test_hand_counted_example() -> None:
    # probs (crack): TP = 2 (0.9, 0.6), FN = 1 (0.2), FP = 1 (0.7), TN = 2 (0.1, 0.5 tie -> negative)
    y = [1, 1, 1, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.1, 0.5]
    got = _all(y, p, from_logits=False)
    want = {
        "recall": 2 / 3,
        "missed_alarm_rate": 1 / 3,
        "precision": 2 / 3,
        "false_alarm_rate": 1 / 3,
        "accuracy": 4 / 6,
        "f1": 2 / 3,
    }
    assert got == pytest.approx(want, abs=1e-6)
    cm = _result(M.ConfusionMatrix, y, p, from_logits=False)
    np.testing.assert_array_equal(cm, [[2, 1], [1, 2]])


def test_zero_division_conventions() -> None:
    # No positives and nothing predicted crack: R = P = F1 = 0, MA = FA = 1, accuracy = 1.
    got = _all([0, 0, 0], [0.1, 0.2, 0.3], from_logits=False)
    assert got == {
        "recall": 0.0,
        "missed_alarm_rate": 1.0,
        "precision": 0.0,
        "false_alarm_rate": 1.0,
        "accuracy": 1.0,
        "f1": 0.0,
    }
    # Nothing counted at all (all weights zero): every ratio 0, MA = FA = 1.
    got = _all([1, 0], [0.9, 0.1], from_logits=False, sample_weight=np.zeros(2, np.float32))
    assert got["accuracy"] == 0.0 and got["missed_alarm_rate"] == 1.0 and got["false_alarm_rate"] == 1.0
    # Fresh metrics (no update) follow the same convention and never produce NaN.
    for cls in ALL:
        assert np.isfinite(np.asarray(cls().result()))


@pytest.mark.parametrize(
    "pred, from_logits",
    [
        ([[2.0, -1.0], [0.0, 3.0], [1.0, 1.5]], True),  # softmax logits [B,2]
        ([[0.8, 0.2], [0.1, 0.9], [0.4, 0.6]], False),  # softmax probabilities [B,2]
        ([-3.0, 3.0, 0.5], True),  # one sigmoid logit [B]
        ([[-3.0], [3.0], [0.5]], True),  # one sigmoid logit [B,1]
        ([0.2, 0.9, 0.6], False),  # one probability [B]
    ],
)
def test_output_formats_agree(pred, from_logits) -> None:
    y = [0, 1, 0]  # predicted: 0, 1, 1 -> TP 1, FP 1, TN 1
    cm = _result(M.ConfusionMatrix, y, pred, from_logits=from_logits)
    np.testing.assert_array_equal(cm, [[1, 1], [0, 1]])


def test_label_formats_and_threshold() -> None:
    p = [0.2, 0.4, 0.6, 0.8]
    for y in ([0, 1, 0, 1], [[0], [1], [0], [1]], [[1, 0], [0, 1], [1, 0], [0, 1]]):
        assert float(_result(M.Recall, y, p, from_logits=False)) == pytest.approx(0.5)
    assert float(_result(M.Recall, [0, 1, 0, 1], p, from_logits=False, threshold=0.3)) == pytest.approx(1.0)
    assert float(_result(M.Precision, [0, 1, 0, 1], p, from_logits=False, threshold=0.1)) == pytest.approx(0.5)


def test_streaming_weights_and_reset() -> None:
    m = M.ConfusionMatrix(from_logits=False)
    m.update_state([1, 0], [0.9, 0.8], sample_weight=[2.0, 0.5])
    m.update_state([[1]], [[0.1]], sample_weight=[[3.0]])
    np.testing.assert_allclose(np.asarray(m.result()), [[0, 0.5], [3.0, 2.0]])
    m.reset_state()
    np.testing.assert_array_equal(np.asarray(m.result()), np.zeros((2, 2)))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="threshold"):
        M.Recall(threshold=1.5)
    with pytest.raises(ValueError, match="y_pred"):
        M.Recall().update_state(np.array([0, 1]), np.zeros((2, 3), np.float32))
    with pytest.raises(NotImplementedError):
        M.BinaryConfusionCounts().result()


def test_rates_from_counts_numpy_matches_keras_and_vectorises() -> None:
    counts = np.array([[3.0, 1.0, 5.0, 2.0], [0.0, 0.0, 4.0, 0.0]])  # tp, fp, tn, fn rows
    np_rates = M.rates_from_counts(*counts.T, xp=np)
    assert np_rates["recall"].tolist() == pytest.approx([0.6, 0.0])
    assert np_rates["missed_alarm_rate"].tolist() == pytest.approx([0.4, 1.0])
    assert np_rates["f1"].tolist() == pytest.approx([6 / 9, 0.0])
    for i, (tp, fp, tn, fn) in enumerate(counts):
        k = M.rates_from_counts(*(keras.ops.convert_to_tensor(np.float32(v)) for v in (tp, fp, tn, fn)))
        for name in M.RATES:
            assert float(k[name]) == pytest.approx(float(np_rates[name][i]), abs=1e-6)


def test_the_numpy_evaluators_score_without_keras_or_tensorflow() -> None:
    """The offline analysis tools (compare_loso, threshold_rules, few-shot curves, ...) score stored margins
    through these modules: they import neither Keras nor TensorFlow (~7 s a process), the rates come from
    crack_tf.rates, the same functions the Keras metrics use."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import crack_tf.evaluation.stats, crack_tf.evaluation.run_margins, crack_tf.evaluation.site_calibration\n"
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
    from crack_tf import rates
    assert M.RATES is rates.RATES and M.rates_from_counts is rates.rates_from_counts


def test_default_metrics_config_round_trip() -> None:
    ms = M.default_metrics(threshold=0.3, from_logits=False)
    assert [m.name for m in ms] == ["recall", "missed_alarm_rate", "precision", "false_alarm_rate", "accuracy", "f1"]
    for m in [*ms, M.ConfusionMatrix(threshold=0.7, name="cm")]:
        clone = keras.metrics.deserialize(keras.metrics.serialize(m))
        assert type(clone) is type(m) and clone.get_config() == m.get_config()


def test_compiled_model_save_load(tmp_path) -> None:
    keras.utils.set_random_seed(0)  # a fixed init: no score can land by chance on the threshold
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=M.default_metrics(threshold=0.4),
        weighted_metrics=[M.ConfusionMatrix(name="cm")],
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)).astype("float32"), rng.integers(0, 2, 20)
    before = model.evaluate(x, y, batch_size=7, return_dict=True, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = loaded.evaluate(x, y, batch_size=7, return_dict=True, verbose=0)
    assert set(after) == set(before)
    for k in before:
        np.testing.assert_allclose(np.asarray(after[k]), np.asarray(before[k]), atol=1e-6)
    # evaluate() equals a direct computation from the model's logits
    logits = model.predict(x, verbose=0)
    p = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))
    tp = np.sum((p > 0.4) & (y == 1))
    assert after["recall"] == pytest.approx(tp / max(np.sum(y == 1), 1), abs=1e-6)
