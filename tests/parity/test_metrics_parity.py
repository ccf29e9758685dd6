"""Parity: crack_tf.metrics (Keras, streaming) vs torchmetrics Binary* metrics.

N_CASES seeded cases (ids show scenario, output format, weights, batch split, size, positive
fraction and threshold) + hypothesis examples + a 2-replica MirroredStrategy ``model.evaluate``
in a subprocess. MA and FA are checked as 1 - R and 1 - P of the torchmetrics values. Integer
weights: torchmetrics sees each sample repeated ``weight`` times. Float weights: a float64 NumPy
reference computed from the weighted confusion counts.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tmc = pytest.importorskip("torchmetrics.classification")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from crack_tf import metrics as M  # noqa: E402

pytestmark = pytest.mark.parity

TOL = 1e-6
N_CASES = 420  # 4 x every scenario x format x weighting
SCENARIOS = ("random", "all_correct", "all_wrong", "no_positives", "all_positives", "none_predicted", "ties")
FORMATS = ("softmax_logits", "softmax_probs", "sigmoid_logit_1d", "sigmoid_logit_2d", "sigmoid_prob_1d")
WEIGHTS = ("none", "int", "float")
SPLITS = ("one", "uneven", "singles")
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
POS_FRACS = (0.0, 0.05, 0.2, 0.5, 0.8, 0.95, 1.0)
KERAS_CLASSES = {
    "recall": M.Recall,
    "missed_alarm_rate": M.MissedAlarmRate,
    "precision": M.Precision,
    "false_alarm_rate": M.FalseAlarmRate,
    "accuracy": M.Accuracy,
    "f1": M.F1Score,
    "confusion_matrix": M.ConfusionMatrix,
}


@dataclass(frozen=True)
class Case:
    index: int
    scenario: str
    fmt: str
    weights: str
    split: str
    n: int
    pos_frac: float
    threshold: float

    @property
    def id(self) -> str:
        return (
            f"c{self.index:03d}-{self.scenario}-{self.fmt}-w_{self.weights}-{self.split}"
            f"-n{self.n}-pos{self.pos_frac:.2f}-t{self.threshold:.1f}"
        )


def _make_cases() -> list[Case]:
    rng = np.random.default_rng(20240611)
    cases = []
    for i in range(N_CASES):
        scenario = SCENARIOS[i % len(SCENARIOS)]
        fmt = FORMATS[(i // len(SCENARIOS)) % len(FORMATS)]
        if scenario == "ties" and "prob" not in fmt:  # exact ties need exact probabilities
            fmt = "softmax_probs" if i % 2 else "sigmoid_prob_1d"
        split = SPLITS[int(rng.integers(len(SPLITS)))]
        n = int(rng.integers(1, 7)) if split == "singles" else int(rng.integers(1, 97))
        pos_frac = {"no_positives": 0.0, "all_positives": 1.0}.get(scenario, float(rng.choice(POS_FRACS)))
        threshold = float(rng.choice(THRESHOLDS))
        if scenario == "ties":
            threshold = float(rng.choice((0.25, 0.5, 0.75)))  # exactly representable in float32
        weights = WEIGHTS[(i // (len(SCENARIOS) * len(FORMATS))) % len(WEIGHTS)]
        cases.append(Case(i, scenario, fmt, weights, split, n, pos_frac, threshold))
    return cases


CASES = _make_cases()


def _away(p: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """Pushes probabilities at least 1e-3 away from the threshold (no float-rounding ties)."""
    close = np.abs(p - t) < 1e-3
    p[close] = np.clip(t + np.where(rng.random(close.sum()) < 0.5, -2e-3, 2e-3), 1e-4, 1 - 1e-4)
    return p


def _case_data(case: Case):
    """(labels int32 [n], network output in case.fmt, reference probabilities float64 [n], weights)."""
    rng = np.random.default_rng(1000 + case.index)
    n, t = case.n, case.threshold
    labels = (rng.random(n) < case.pos_frac).astype(np.int32)
    low, high = t * rng.uniform(0.01, 0.99, n), t + (1 - t) * rng.uniform(0.01, 0.99, n)
    p = {
        "all_correct": np.where(labels == 1, high, low),
        "all_wrong": np.where(labels == 1, low, high),
        "none_predicted": low,
        "ties": np.where(rng.random(n) < 0.5, t, rng.uniform(0.001, 0.999, n)),
    }.get(case.scenario, rng.uniform(0.001, 0.999, n))
    if case.scenario != "ties":
        p = _away(p, t, rng)
    logit = np.log(p) - np.log1p(-p)
    if case.fmt == "softmax_logits":
        l0 = rng.normal(0, 2, n)
        out = np.stack([l0, l0 + logit], 1).astype(np.float32)
        ref = torch.softmax(torch.from_numpy(out.astype(np.float64)), dim=1)[:, 1].numpy()
    elif case.fmt == "softmax_probs":
        out = np.stack([1 - p, p], 1).astype(np.float32)
        ref = out[:, 1].astype(np.float64)
    elif case.fmt.startswith("sigmoid_logit"):
        out = logit.astype(np.float32).reshape((n, 1) if case.fmt.endswith("2d") else (n,))
        ref = torch.sigmoid(torch.from_numpy(out.reshape(-1).astype(np.float64))).numpy()
    else:
        out = p.astype(np.float32)
        ref = out.astype(np.float64)
    if case.weights == "int":
        w = rng.integers(0, 4, n).astype(np.float32)
        w[0] = max(w[0], 1.0)
    elif case.weights == "float":
        w = rng.uniform(0.0, 3.0, n).astype(np.float32)
    else:
        w = None
    return labels, out, ref, w


def _batches(case: Case) -> list[slice]:
    n = case.n
    if case.split == "one":
        return [slice(0, n)]
    if case.split == "singles":
        return [slice(i, i + 1) for i in range(n)]
    rng = np.random.default_rng(2000 + case.index)
    cuts = sorted(set(rng.integers(1, n, size=min(3, n - 1)).tolist())) if n > 1 else []
    edges = [0, *cuts, n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _keras_results(case: Case, labels, out, w) -> dict[str, np.ndarray]:
    from_logits = "logit" in case.fmt
    metrics = {k: cls(threshold=case.threshold, from_logits=from_logits) for k, cls in KERAS_CLASSES.items()}
    for s in _batches(case):
        batch = [None if a is None else keras.ops.convert_to_tensor(a[s]) for a in (labels, out, w)]
        for m in metrics.values():
            m.update_state(*batch)
    return {k: np.asarray(m.result(), dtype=np.float64) for k, m in metrics.items()}


def _torch_results(batches, labels, ref, w, threshold: float) -> dict[str, np.ndarray]:
    t = {
        "recall": tmc.BinaryRecall(threshold=threshold),
        "precision": tmc.BinaryPrecision(threshold=threshold),
        "accuracy": tmc.BinaryAccuracy(threshold=threshold),
        "f1": tmc.BinaryF1Score(threshold=threshold),
        "confusion_matrix": tmc.BinaryConfusionMatrix(threshold=threshold),
    }
    for s in batches:
        reps = np.ones(s.stop - s.start, np.int64) if w is None else w[s].astype(np.int64)
        if reps.sum() == 0:
            continue
        preds = torch.from_numpy(np.repeat(ref[s], reps))
        target = torch.from_numpy(np.repeat(labels[s], reps).astype(np.int64))
        for m in t.values():
            m.update(preds, target)
    res = {k: m.compute().double().numpy() for k, m in t.items()}
    res["missed_alarm_rate"] = 1.0 - res["recall"]
    res["false_alarm_rate"] = 1.0 - res["precision"]
    return res


def _numpy_reference(labels, ref, w, threshold: float) -> dict[str, np.ndarray]:
    """Float64 reference from weighted confusion counts (independent of crack_tf)."""
    y, pred, w = labels.astype(bool), ref > threshold, w.astype(np.float64)
    tp, fn = w[y & pred].sum(), w[y & ~pred].sum()
    fp, tn = w[~y & pred].sum(), w[~y & ~pred].sum()

    def div(a, b):
        return a / b if b > 0 else 0.0

    r, p = div(tp, tp + fn), div(tp, tp + fp)
    return {
        "recall": r,
        "missed_alarm_rate": 1.0 - r,
        "precision": p,
        "false_alarm_rate": 1.0 - p,
        "accuracy": div(tp + tn, tp + tn + fp + fn),
        "f1": div(2 * tp, 2 * tp + fp + fn),
        "confusion_matrix": np.array([[tn, fp], [fn, tp]]),
    }


def _assert_close(got: dict, want: dict, label: str) -> None:
    for k in KERAS_CLASSES:
        g, e = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        tol = TOL * max(1.0, float(np.abs(e).max()))  # counts: relative, rates: absolute 1e-6
        assert np.allclose(g, e, rtol=0, atol=tol), f"{label}: {k} keras={g} reference={e}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parity_case(case: Case) -> None:
    labels, out, ref, w = _case_data(case)
    got = _keras_results(case, labels, out, w)
    if case.weights == "float":
        want = _numpy_reference(labels, ref, w, case.threshold)
    else:
        want = _torch_results(_batches(case), labels, ref, w, case.threshold)
    _assert_close(got, want, case.id)


def test_case_coverage() -> None:
    """The seeded grid really covers every scenario x format x weighting and every split."""
    combos = {(c.scenario, c.fmt, c.weights) for c in CASES if c.scenario != "ties"}
    assert len(combos) == (len(SCENARIOS) - 1) * len(FORMATS) * len(WEIGHTS)
    assert {c.split for c in CASES} == set(SPLITS)
    assert {c.threshold for c in CASES} >= set(THRESHOLDS)
    assert {c.pos_frac for c in CASES} >= {0.0, 1.0} and any(c.n == 1 for c in CASES)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 1), st.floats(0.0, 1.0, width=32), st.integers(0, 3)), min_size=1, max_size=30
    ),
    threshold=st.sampled_from(THRESHOLDS),
    n_batches=st.integers(1, 4),
)
@pytest.mark.slow
@example(data=[(0, float(np.float32(0.2)), 0)], threshold=0.2, n_batches=1)  # float32 tie at the threshold
def test_parity_hypothesis(data, threshold, n_batches) -> None:
    """Arbitrary probabilities (ties at the threshold included) with integer weights."""
    labels = np.array([d[0] for d in data], np.int32)
    probs = np.array([d[1] for d in data], np.float32)
    w = np.array([d[2] for d in data], np.float32)
    if w.sum() == 0:
        w[0] = 1.0
    edges = np.linspace(0, len(data), n_batches + 1).astype(int)
    batches = [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    metrics = {k: cls(threshold=threshold, from_logits=False) for k, cls in KERAS_CLASSES.items()}
    for s in batches:
        for m in metrics.values():
            m.update_state(labels[s], probs[s], sample_weight=w[s])
    got = {k: np.asarray(m.result()) for k, m in metrics.items()}
    # float32 probabilities, as a PyTorch model would give them: torch compares a float32
    # tensor with the threshold in float32, as Keras does, so exact ties agree.
    _assert_close(got, _torch_results(batches, labels, probs, w, threshold), str(data))


_MIRRORED_WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from crack_tf import metrics as M

    class FirstReplicaCount(keras.metrics.Metric):
        # Samples seen by replica 0 only: proves the other replica got different samples.
        def __init__(self, name="first_replica_count", **kw):
            super().__init__(name=name, **kw)
            self.n = self.add_variable(shape=(), initializer="zeros", aggregation="only_first_replica")

        def update_state(self, y_true, y_pred, sample_weight=None):
            self.n.assign_add(keras.ops.cast(keras.ops.shape(y_true)[0], "float32"))

        def result(self):
            return self.n.value

    rng = np.random.default_rng(7)
    n = 37
    x = rng.normal(size=(n, 4)).astype("float32")
    y = rng.integers(0, 2, n).astype("int32")
    w = rng.integers(1, 4, n).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="logits")])
        # Fixed weights (not a random init): the scores, and their distance to both thresholds, are
        # then the same on every run.
        model.get_layer("logits").set_weights([rng.normal(size=(4, 2)).astype("float32"), np.zeros(2, "float32")])
        # `metrics` ignore sample weights (Keras), `weighted_metrics` use them: check both.
        metrics = [FirstReplicaCount(), M.ConfusionMatrix(threshold=0.3, name="confusion_matrix@0.3")]
        metrics += [type(m)(threshold=0.3, name=f"{m.name}@0.3") for m in M.default_metrics(0.3)]
        weighted = [M.ConfusionMatrix(threshold=0.5, name="confusion_matrix@0.5w")]
        weighted += [type(m)(threshold=0.5, name=f"{m.name}@0.5w") for m in M.default_metrics(0.5)]
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=metrics,
                      weighted_metrics=weighted)
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8)
    res = model.evaluate(ds, return_dict=True, verbose=0)
    logits = model.predict(x, verbose=0)
    out = {k: np.asarray(v).tolist() for k, v in res.items()}
    print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "results": out,
                                   "logits": logits.tolist(), "y": y.tolist(), "w": w.tolist()}))
    """
)


@pytest.mark.slow
def test_parity_mirrored_strategy_two_replicas() -> None:
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_WORKER], capture_output=True, text=True, env=env, timeout=300, cwd=root
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    data = json.loads(lines[-1][len("RESULT ") :])
    res = data["results"]
    n = len(data["y"])
    assert data["replicas"] == 2
    assert 0 < res["first_replica_count"] < n, "both replicas must have evaluated samples"
    labels = np.array(data["y"], np.int32)
    w = np.array(data["w"], np.float32)
    ref = torch.softmax(torch.tensor(data["logits"], dtype=torch.float64), dim=1)[:, 1].numpy()
    assert np.abs(ref - 0.3).min() > 1e-5 and np.abs(ref - 0.5).min() > 1e-5
    assert np.isclose(np.sum(res["confusion_matrix@0.5w"]), w.sum()), "counts must be summed over replicas"
    for suffix, t, weights in (("@0.3", 0.3, None), ("@0.5w", 0.5, w)):
        want = _torch_results([slice(0, n)], labels, ref, weights, t)
        _assert_close({k: res[k + suffix] for k in KERAS_CLASSES}, want, f"mirrored {suffix}")


AUC_CASES = 60


@pytest.mark.parametrize("seed", range(AUC_CASES), ids=[f"auc{i:02d}" for i in range(AUC_CASES)])
def test_parity_roc_auc_and_average_precision(seed: int) -> None:
    """crack_tf.evaluation.stats ROC-AUC / PR-AUC vs torchmetrics BinaryAUROC / BinaryAveragePrecision."""
    from crack_tf.evaluation import stats

    rng = np.random.default_rng(3000 + seed)
    n = int(rng.integers(2, 300))
    y = (rng.random(n) < POS_FRACS[1 + seed % (len(POS_FRACS) - 2)]).astype(np.int64)
    y[0], y[-1] = 1, 0  # both classes present
    s = rng.random(n) * 0.5 + 0.5 * y * rng.random()  # imperfect separation
    if seed % 3 == 0:
        s = np.round(s, 1)  # many ties
    want_auc = float(tmc.BinaryAUROC()(torch.from_numpy(s), torch.from_numpy(y)))
    want_ap = float(tmc.BinaryAveragePrecision()(torch.from_numpy(s), torch.from_numpy(y)))
    assert stats.roc_auc(s, y) == pytest.approx(want_auc, abs=TOL)
    assert stats.average_precision(s, y) == pytest.approx(want_ap, abs=TOL)
