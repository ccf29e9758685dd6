"""crack_tf.evaluation.stats (NumPy) and the python -m crack_tf.evaluate tool end to end."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from crack_tf.evaluation import stats as S

REPORT_FILES = ("report.json", "report.md", "confusion.png", "pr_curve.png", "worst_errors.png", "predictions.csv")


# ---------------------------------------------------------------- stats (NumPy only)


def test_auc_hand_examples() -> None:
    assert S.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert S.roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts 1/2
    # AP: ranks 1 (pos), 2 (neg), 3 (pos) -> (1/2)*1 + (1/2)*(2/3)
    assert S.average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    assert np.isnan(S.roc_auc([0.2, 0.3], [1, 1])) and np.isnan(S.average_precision([0.2, 0.3], [0, 0]))


def test_weights_equal_repeated_samples() -> None:
    rng = np.random.default_rng(1)
    s, y = np.round(rng.random(50), 1), rng.integers(0, 2, 50)
    w = rng.integers(0, 4, size=(3, 50)).astype(float)
    for fn in (S.roc_auc, S.average_precision):
        got = fn(s, y, w)
        assert got.shape == (3,)
        for r in range(3):
            rep = np.repeat(np.arange(50), w[r].astype(int))
            assert got[r] == pytest.approx(fn(s[rep], y[rep]), abs=1e-12)
    c = S.confusion_counts(s, y, 0.45, w)
    rep = np.repeat(np.arange(50), w[1].astype(int))
    assert c["tp"][1] == np.sum((s[rep] > 0.45) & (y[rep] == 1))


def test_bootstrap_is_seeded_and_sane() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = np.clip(0.3 * y + 0.7 * rng.random(300), 0, 1)
    counts = S.resample_counts(300, 50, seed=3)
    assert counts.shape == (50, 300) and np.all(counts.sum(axis=1) == 300)
    a = S.bootstrap_ci(s, y, 0.5, n_resamples=400, seed=3, max_cells=10_000)  # chunked
    b = S.bootstrap_ci(s, y, 0.5, n_resamples=400, seed=3)
    assert a == b
    point = S.all_metrics(s, y, 0.5)
    for name, (lo, hi) in a.items():
        assert lo <= point[name] <= hi and hi - lo < 0.25, name
    assert a != S.bootstrap_ci(s, y, 0.5, n_resamples=400, seed=4)
    assert S.bootstrap_ci([0.9, 0.8], [1, 1], 0.5, n_resamples=20)["roc_auc"] == (None, None)


def _brute(s, y):
    """Rates at every threshold in a fine grid (no cleverness)."""
    grid = np.unique(np.r_[0.0, 1.0, s, (s[:, None] + s[None, :]).ravel() / 2])
    return grid, [S.all_metrics(s, y, t) for t in grid]


@pytest.mark.parametrize("seed", range(6))
def test_pick_threshold_is_optimal(seed) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    y = rng.integers(0, 2, n)
    y[0] = 1
    s = np.round(rng.random(n), 2 if seed % 2 else 6)
    grid, rows = _brute(s, y)
    f1 = S.pick_threshold(s, y, "f1")
    assert f1["f1"] == pytest.approx(max(r["f1"] for r in rows))
    at = S.all_metrics(s, y, f1["threshold"])  # the reported threshold reproduces the rates
    assert at["f1"] == pytest.approx(f1["f1"]) and at["recall"] == pytest.approx(f1["recall"])
    for target in (0.5, 0.9, 1.0):
        p = S.pick_threshold(s, y, f"precision@{target}")
        assert p["recall"] >= target
        assert p["precision"] == pytest.approx(max(r["precision"] for r in rows if r["recall"] >= target))
        assert S.all_metrics(s, y, p["threshold"])["precision"] == pytest.approx(p["precision"])


def test_pick_threshold_errors() -> None:
    for rule in ("f2", "precision@1.5", "precision", "recall@0.9"):
        with pytest.raises(ValueError, match="pick_threshold"):
            S.pick_threshold([0.2, 0.7], [0, 1], rule)
    with pytest.raises(ValueError, match="no crack"):
        S.pick_threshold([0.2, 0.7], [0, 0], "f1")


def test_report_float32_ties_match_keras() -> None:
    """Scores exactly float32(threshold): the report counts them as the Keras metrics do (not crack)."""
    from crack_tf import metrics as M
    from crack_tf.evaluation.report import build_report

    scores = np.array([0.3, 0.3, 0.9, 0.1], np.float32)
    labels = np.array([1, 0, 1, 0])
    ms = [*M.default_metrics(0.3, from_logits=False), M.ConfusionMatrix(0.3, from_logits=False)]
    for m in ms:
        m.update_state(labels, scores)
    tp, fp, tn, fn = (float(v) for v in ms[-1].counts())
    rates = {m.name: float(m.result()) for m in ms[:-1]}
    rep = build_report(scores.astype(np.float64), labels, 0.3, {"tp": tp, "fp": fp, "tn": tn, "fn": fn}, rates, 20)
    assert rep["counts"] == {"tp": 1.0, "fp": 0.0, "tn": 2.0, "fn": 1.0}
    assert rep["metrics"]["recall"] == 0.5 and rep["metrics"]["precision"] == 1.0


# ---------------------------------------------------------------- the tool end to end


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    import keras

    import crack_tf.models as models
    from crack_tf.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("eval")
    data = generate_dataset(root / "data", n_train=2, n_val=26, size=48, seed=0)
    keras.utils.set_random_seed(1)
    model = models.get("zhang2016", input_shape=(64, 64, 3))
    dense = model.get_layer("logits")  # spread the untrained logits so probabilities are distinct
    dense.set_weights([w * 200.0 for w in dense.get_weights()])
    model_path = root / "run" / "best.keras"
    model_path.parent.mkdir()
    model.save(model_path)
    (model_path.parent / "run.json").write_text(json.dumps({"image_size": 64, "small_policy": "resize"}))
    return {"root": root, "data": pathlib.Path(data), "model": model_path, "keras_model": model}


def _direct(ctx) -> tuple[list[str], np.ndarray, np.ndarray]:
    """p(crack) from the in-memory model on images decoded and cropped independently of the tool."""
    from crack_tf.data import decode_image_np, eval_transform_np

    files, labels = [], []
    for label, cls in enumerate(("background", "crack")):
        for p in sorted((ctx["data"] / "val" / cls).glob("*.png")):
            files.append(p.name)
            labels.append(label)
    images = np.stack(
        [eval_transform_np(decode_image_np(str(ctx["data"] / "val" / ("crack" if y else "background") / f)), 64)
         for f, y in zip(files, labels)]  # fmt: skip
    ).astype("float32")
    logits = np.asarray(ctx["keras_model"].predict(images, verbose=0), np.float64)
    return files, np.asarray(labels), 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))


def _expected_counts(labels, probs, t):
    pred = probs > t
    return {
        "tp": np.sum(pred & (labels == 1)),
        "fp": np.sum(pred & (labels == 0)),
        "tn": np.sum(~pred & (labels == 0)),
        "fn": np.sum(~pred & (labels == 1)),
    }


def _check_report(out: pathlib.Path, ctx, threshold: float, worst: int = 16) -> dict:
    for f in REPORT_FILES:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rep = json.loads((out / "report.json").read_text())
    files, labels, probs = _direct(ctx)
    # threshold near the data so both predicted classes occur; no sample within 1e-4 of it
    assert np.abs(probs - threshold).min() > 1e-4
    want = _expected_counts(labels, probs, threshold)
    assert rep["counts"] == {k: float(v) for k, v in want.items()}
    assert rep["num_examples"] == len(files) == 26
    r = want["tp"] / (want["tp"] + want["fn"])
    assert rep["metrics"]["recall"] == pytest.approx(r, abs=1e-6)
    assert rep["metrics"]["missed_alarm_rate"] == pytest.approx(1 - r, abs=1e-6)
    assert rep["metrics"]["roc_auc"] == pytest.approx(S.roc_auc(probs, labels), abs=1e-6)
    for name, (lo, hi) in rep["ci95"].items():
        assert lo - 1e-9 <= rep["metrics"][name] <= hi + 1e-9, name
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    by_name = {row["file"]: float(row["crack_probability"]) for row in rows}
    np.testing.assert_allclose([by_name[f] for f in files], probs, atol=1e-5)
    fps = rep["worst"]["false_positives"]
    assert len(fps) == min(want["fp"], worst)
    assert [x["probability"] for x in fps] == sorted((x["probability"] for x in fps), reverse=True)
    return rep


def _threshold(ctx) -> float:
    _, _, probs = _direct(ctx)
    q = np.sort(probs)
    k = int(np.argmax(np.diff(q)[5:-5])) + 5  # the widest gap away from both ends
    return float((q[k] + q[k + 1]) / 2)


@pytest.mark.parametrize("loader", ["tf", "numpy"])
def test_evaluate_keras_model(ctx, loader) -> None:
    from crack_tf.evaluate import evaluate

    t = _threshold(ctx)
    out = ctx["root"] / f"out_{loader}"
    rep = evaluate(str(ctx["model"]), str(ctx["data"]), threshold=t, output_dir=str(out), loader=loader,
                   batch_size=7, n_resamples=200, pick_threshold="f1", worst=4, verbose=False)  # fmt: skip
    _check_report(out, ctx, t, worst=4)
    assert rep["image_size"] == 64 and rep["loader"] == loader
    _, labels, probs = _direct(ctx)
    assert rep["picked_threshold"]["f1"] == pytest.approx(S.pick_threshold(probs, labels, "f1")["f1"], abs=1e-6)


@pytest.mark.slow
def test_evaluate_savedmodel(ctx, monkeypatch) -> None:
    from crack_tf import export
    from crack_tf import predictor as E  # the one model loader (crack_tf.load_model)
    from crack_tf.evaluate import evaluate

    model = ctx["keras_model"]
    meta = export.build_metadata(model, {}, 64, "resize", str(ctx["model"]))
    version_dir = export.export_saved_model(model, str(ctx["root"] / "export"), meta, warmup=False)
    t = _threshold(ctx)
    out = ctx["root"] / "out_sm"
    rep = evaluate(version_dir, str(ctx["data"]), threshold=t, output_dir=str(out), n_resamples=50, verbose=False)
    assert rep["endpoint"] == "predict_images"
    _check_report(out, ctx, t)
    # serving_default takes encoded image bytes: the evaluator sends PNGs of the cropped images
    monkeypatch.setattr(E, "ENDPOINTS", ("serving_default",))
    rep = evaluate(version_dir, str(ctx["data"]), threshold=t, output_dir=str(out), n_resamples=50, verbose=False)
    assert rep["endpoint"] == "serving_default"
    _check_report(out, ctx, t)


@pytest.mark.slow
def test_python_dash_m(ctx) -> None:
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    t = _threshold(ctx)
    out = ctx["root"] / "out_cli"
    cmd = [sys.executable, "-m", "crack_tf.evaluate", f"--model={ctx['model']}", f"--data={ctx['data']}",
           f"--output_dir={out}", f"--threshold={t}", "--pick_threshold=precision@0.9", "--bootstrap=100"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "precision@0.9 picks threshold" in proc.stdout and "report written" in proc.stdout
    rep = _check_report(out, ctx, t)
    assert rep["picked_threshold"]["recall"] >= 0.9


def test_bad_inputs(ctx, tmp_path) -> None:
    from crack_tf.evaluate import evaluate

    with pytest.raises(FileNotFoundError, match="nonexistent.keras"):
        evaluate(str(tmp_path / "nonexistent.keras"), str(ctx["data"]))
    with pytest.raises(ValueError, match="saved_model.pb"):
        evaluate(str(tmp_path), str(ctx["data"]))
    with pytest.raises(ValueError, match="pick_threshold"):
        evaluate(str(ctx["model"]), str(ctx["data"]), pick_threshold="precision@2")
    with pytest.raises(ValueError, match="threshold"):
        evaluate(str(ctx["model"]), str(ctx["data"]), threshold=1.5)


@pytest.mark.shared_data
def test_evaluate_on_uav75_tiles(ctx, shared_data) -> None:
    """Real tiles (128 px PNG, center-cropped to 64): every image counted, classes as documented."""
    from crack_tf.evaluate import evaluate

    out = ctx["root"] / "out_uav75"
    rep = evaluate(str(ctx["model"]), str(shared_data / "uav75_tiles"), output_dir=str(out), loader="numpy",
                   batch_size=32, n_resamples=50, worst=4, verbose=False)  # fmt: skip
    assert rep["class_counts"] == {"background": 99, "crack": 52}
    assert sum(rep["counts"].values()) == 151 and rep["skipped"] == []
    assert all((out / f).is_file() for f in REPORT_FILES)


_TF_FREE_WORKER = """
import importlib.abc, importlib.machinery, json, os, sys

class _NoTF(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # "tensorflow" is found but fails to import, as on a machine without it.
    def find_spec(self, name, path, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError("tensorflow blocked for this test")

sys.meta_path.insert(0, _NoTF())
os.environ["KERAS_BACKEND"] = "torch"
from crack_tf.evaluate import evaluate

rep = evaluate(sys.argv[1], sys.argv[2], threshold=float(sys.argv[3]), output_dir=sys.argv[4], loader="auto",
               n_resamples=50, verbose=False)
assert "tensorflow" not in sys.modules
print("RESULT " + json.dumps({"counts": rep["counts"], "backend": rep["versions"]["backend"]}))
"""


@pytest.mark.slow
def test_evaluate_without_tensorflow(ctx) -> None:
    """KERAS_BACKEND=torch with TensorFlow blocked: --loader=auto falls back to the NumPy loader."""
    pytest.importorskip("torch")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    t = _threshold(ctx)
    out = ctx["root"] / "out_torch"
    proc = subprocess.run(
        [sys.executable, "-c", _TF_FREE_WORKER, str(ctx["model"]), str(ctx["data"]), str(t), str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=root,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT ") :])
    assert res["backend"] == "torch"
    _, labels, probs = _direct(ctx)
    assert res["counts"] == {k: float(v) for k, v in _expected_counts(labels, probs, t).items()}
    assert (out / "report.md").is_file()


def test_evaluate_tfrecords(ctx) -> None:
    """A TFRecord folder (detected by its sidecar) gives the same counts as the image folder."""
    from crack_tf.data import DataConfig, list_folder
    from crack_tf.data.tfrecord import write_sidecar, write_split
    from crack_tf.evaluate import evaluate

    data, rec = str(ctx["data"]), str(ctx["root"] / "records")
    info = write_split(list_folder(data, "val", DataConfig(path=data)), data, rec, "val", 2)
    write_sidecar(rec, {"val": info}, data)
    t = _threshold(ctx)
    out = ctx["root"] / "out_rec"
    rep = evaluate(str(ctx["model"]), rec, threshold=t, output_dir=str(out), n_resamples=50, verbose=False)
    assert rep["source"] == "tfrecord"
    _check_report(out, ctx, t)


def test_bootstrap_agrees_with_scipy_stats_bootstrap() -> None:
    """The library as the judge: SciPy's percentile bootstrap gives the same intervals within
    Monte-Carlo noise (crack_tf keeps its own: one pass over resample weights for all eight
    metrics, AUCs included, seeded and chunked)."""
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    s = np.clip(0.35 * y + 0.65 * rng.random(400), 0, 1)
    ours = S.bootstrap_ci(s, y, 0.5, n_resamples=4000, seed=1)

    def accuracy(scores, labels, axis=-1):
        return np.mean((scores > 0.5) == (labels == 1), axis=axis)

    ref = scipy_stats.bootstrap((s, y), accuracy, paired=True, vectorized=True, n_resamples=4000,
                                method="percentile", random_state=2).confidence_interval
    assert ours["accuracy"][0] == pytest.approx(ref.low, abs=0.01)
    assert ours["accuracy"][1] == pytest.approx(ref.high, abs=0.01)
