"""The operating point that travels with a model: calibration, metadata, loader, evaluate, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from crack_tf.evaluation import calibration, stats
from crack_tf.model_meta import read_metadata, write_metadata
from crack_tf.predictor import load_model, tta_views

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


def _overconfident(seed=0, n=4000, scale=3.0):
    """Labels drawn from true log-odds z; the model's margin is ``scale * z`` (over-sharp)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, n)
    y = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-z))).astype(int)
    return scale * z, y


def test_temperature_lowers_nll_and_ece_and_keeps_the_ranking():
    margin, y = _overconfident()
    t = calibration.fit_temperature(margin, y)
    assert t == pytest.approx(3.0, rel=0.15)  # the margin is 3x the true log-odds
    for trial in (0.5 * t, 2 * t):  # the fitted T is the NLL minimum
        p_fit, p_other = (calibration.calibrated_probability(margin, v) for v in (t, trial))
        assert calibration._nll(p_fit, y) < calibration._nll(p_other, y)
    point = calibration.operating_point(margin, y, "f1")
    assert point["ece_after"] < point["ece_before"] and point["nll_after"] < point["nll_before"]
    probs = calibration.calibrated_probability(margin, point["temperature"])
    raw = calibration.calibrated_probability(margin)
    np.testing.assert_array_equal(np.argsort(probs, kind="stable"), np.argsort(raw, kind="stable"))
    # The threshold is the F1 pick on the calibrated probabilities, and its metrics are reproduced.
    assert point["threshold"] == pytest.approx(stats.pick_threshold(probs, y, "f1")["threshold"])
    at = stats.all_metrics(probs, y, point["threshold"])
    assert at["f1"] == pytest.approx(point["val_at_threshold"]["f1"])


def test_ece_of_a_perfectly_calibrated_score_is_small_and_of_a_wrong_one_large():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < p).astype(int)
    assert calibration.expected_calibration_error(p, y) < 0.02
    assert calibration.expected_calibration_error(np.where(p > 0.5, 0.99, 0.01), y) > 0.2


def test_views_of_tta_are_the_d4_group():
    x = np.arange(2 * 3 * 3 * 1).reshape(2, 3, 3, 1)
    views = tta_views(x, "d4")
    assert len(views) == 8 and len(tta_views(x, "flips")) == 4 and len(tta_views(x, "none")) == 1
    keys = {v[0, ..., 0].tobytes() for v in views}
    assert len(keys) == 8  # eight distinct symmetries of a generic square
    rotations = {np.rot90(x[0, ..., 0], k).tobytes() for k in range(4)}
    assert rotations <= keys


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    import keras

    from crack_tf import models

    keras.utils.set_random_seed(4)
    path = tmp_path_factory.mktemp("op") / "final.keras"
    model = models.get("zhang2016", input_shape=(SIZE, SIZE, 3))
    model.save(path)
    return path


def test_metadata_rides_in_the_keras_file_and_keras_still_loads_it(keras_model, tmp_path):
    import keras

    import crack_tf.models  # noqa: F401

    path = tmp_path / "m.keras"
    path.write_bytes(keras_model.read_bytes())
    assert read_metadata(str(path)) == {}
    write_metadata(str(path), {"operating_point": {"threshold": 0.3, "temperature": 2.0, "rule": "f1"}})
    write_metadata(str(path), {"tta": "flips"})  # merged, not replaced
    meta = read_metadata(str(path))
    assert meta["operating_point"]["threshold"] == 0.3 and meta["tta"] == "flips"
    reloaded = keras.saving.load_model(path, compile=False)  # plain Keras ignores the extra entry
    assert reloaded.count_params() > 0
    predictor = load_model(str(path))
    assert predictor.threshold == 0.3 and predictor.temperature == 2.0 and predictor.tta == "flips"
    assert "stored in the model" in predictor.threshold_source
    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
    logits = np.stack([keras.ops.convert_to_numpy(reloaded.predict_on_batch(v.astype("float32")))
                       for v in tta_views(images, "flips")])
    expected = calibration.calibrated_probability(logits[..., 1] - logits[..., 0], 2.0)
    np.testing.assert_allclose(predictor.predict(images), expected, atol=1e-6)
    plain = load_model(str(keras_model))
    assert plain.threshold == 0.5 and "no threshold" in plain.threshold_source


def test_loader_rejects_paths_that_are_no_model(tmp_path):
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(ValueError, match="neither a .keras file nor a SavedModel"):
        load_model(str(tmp_path / "weights.h5"))
    with pytest.raises(ValueError, match="without saved_model.pb"):
        load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.keras"))


def _tile_folder(root):
    from crack_tf.data.synthetic import generate_dataset

    generate_dataset(str(root), 8, 16, SIZE, seed=2, verbose=False)
    return root


def test_evaluate_without_threshold_uses_the_stored_one(keras_model, tmp_path):
    from crack_tf.evaluate import evaluate

    path = tmp_path / "m.keras"
    path.write_bytes(keras_model.read_bytes())
    write_metadata(str(path), {"operating_point": {"threshold": 0.37, "temperature": 1.0, "rule": "f1"}})
    data = _tile_folder(tmp_path / "tiles")
    rep = evaluate(str(path), str(data), "val", output_dir=str(tmp_path / "out"), n_resamples=0, verbose=False)
    assert rep["threshold"] == 0.37 and "stored in the model" in rep["threshold_source"]
    given = evaluate(str(path), str(data), "val", threshold=0.6, output_dir=str(tmp_path / "o2"), n_resamples=0,
                     verbose=False)
    assert given["threshold"] == 0.6 and given["threshold_source"] == "--threshold"


@pytest.mark.slow
def test_export_answers_is_crack_at_the_stored_threshold(keras_model, tmp_path):
    tf = pytest.importorskip("tensorflow")
    path = tmp_path / "m.keras"
    path.write_bytes(keras_model.read_bytes())
    images = np.random.default_rng(5).integers(0, 256, (16, SIZE, SIZE, 3)).astype(np.float32)
    write_metadata(str(path), {"operating_point": {"threshold": 0.5, "temperature": 1.5, "rule": "f1"},
                               "tta": "flips"})
    t = float(np.median(load_model(str(path)).predict(images)))  # half the images on each side
    write_metadata(str(path), {"operating_point": {"threshold": t, "temperature": 1.5, "rule": "f1"}})
    export_dir = tmp_path / "exports"
    proc = subprocess.run([sys.executable, "-m", "crack_tf.export", f"--model={path}", f"--export_dir={export_dir}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"threshold {t:.4g}" in proc.stdout and "tta flips" in proc.stdout and "verified" in proc.stdout
    loaded = tf.saved_model.load(str(export_dir / "1"))
    out = loaded.signatures["predict_images"](images=tf.constant(images))
    p = out["crack_probability"].numpy()
    np.testing.assert_allclose(p, load_model(str(path)).predict(images), atol=1e-5)  # same T and TTA
    np.testing.assert_array_equal(out["is_crack"].numpy(), p > np.float32(t))
    np.testing.assert_array_equal(out["class_id"].numpy(), (p > np.float32(t)).astype(int))
    assert 0 < out["is_crack"].numpy().sum() < len(p)
    np.testing.assert_allclose(out["threshold"].numpy(), t, rtol=1e-6)
    meta = json.loads((export_dir / "1" / "assets" / "crack_tf_metadata.json").read_text())
    assert meta["threshold"] == pytest.approx(t) and meta["temperature"] == 1.5 and meta["tta"] == "flips"
    served = load_model(str(export_dir / "1"))  # the SavedModel carries the same operating point
    assert served.threshold == pytest.approx(t) and served.kind == "savedmodel"
