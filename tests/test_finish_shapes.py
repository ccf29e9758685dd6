"""The trainer's after-training scoring compiles one batch shape and reuses the live model
(crack_tf.data.input.padded_batches, crack_tf.training.finish, loop._scoring_model)."""

from __future__ import annotations

import os
import types

import keras
import numpy as np
import pytest

from crack_tf.data.input import padded_batches
from crack_tf.evaluation import calibration, head_refit
from crack_tf.predictor import tta_views
from crack_tf.training import finish
from crack_tf.training.loop import _scoring_model
from tests.test_finish_adabn import _model


def _batches(images, labels, batch=8):
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, len(images), batch)]


def _tiles(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(100, 30, (n, 16, 16, 3)).astype(np.float32), rng.integers(0, 2, n).astype(np.int32)


@pytest.fixture
def batch_shapes(monkeypatch):
    """Every batch shape keras.Model.predict_on_batch is called with, in order."""
    shapes, original = [], keras.Model.predict_on_batch

    def recording(self, x):
        shapes.append(tuple(np.shape(x)))
        return original(self, x)

    monkeypatch.setattr(keras.Model, "predict_on_batch", recording)
    return shapes


def test_padded_batches_repeat_the_last_row_up_to_the_first_batch_and_count_the_real_rows():
    images, labels = _tiles(19)
    out = list(padded_batches(_batches(images, labels)))
    assert [len(b[0]) for b in out] == [8, 8, 8]
    assert [rows for _, _, rows in out] == [8, 8, 3]
    assert [len(y) for _, y, _ in out] == [8, 8, 3]  # labels are not padded
    last = out[-1][0]
    np.testing.assert_array_equal(last[:3], images[16:])
    np.testing.assert_array_equal(last[3:], np.repeat(images[-1:], 5, axis=0))


def test_val_margins_score_every_tile_once_in_one_batch_shape(batch_shapes):
    model = _model()
    a, b = _tiles(21, 1), _tiles(13, 2)  # tails of 5 and 5: two short batches
    split = types.SimpleNamespace(by_source={"a": types.SimpleNamespace(dataset=_batches(*a)),
                                             "b": types.SimpleNamespace(dataset=_batches(*b))})
    margins, labels, sources = finish.val_margins(model, split, "d4")
    assert set(batch_shapes) == {(8, 16, 16, 3)}
    assert margins.shape == (8, 34) and labels.tolist() == a[1].tolist() + b[1].tolist()
    assert sources.tolist() == ["a"] * 21 + ["b"] * 13
    direct = calibration.logit_margin(keras.ops.convert_to_numpy(model(np.concatenate([a[0], b[0]]))))
    np.testing.assert_allclose(margins[0], direct, rtol=1e-5, atol=1e-5)  # view 0: the tile itself


def test_eval_features_come_in_one_batch_shape_and_give_the_models_margins(batch_shapes):
    model = _model()
    images, labels = _tiles(19, 4)
    features, y = head_refit.sample_features(model, types.SimpleNamespace(dataset=_batches(images, labels)), "flips")
    assert set(batch_shapes) == {(8, 16, 16, 3)}
    assert features.shape == (len(tta_views(images[:1], "flips")), 19, 4) and y.tolist() == labels.tolist()
    kernel, bias = head_refit.head_layer(model).get_weights()
    direct = calibration.logit_margin(keras.ops.convert_to_numpy(model(images)))
    np.testing.assert_allclose(calibration.logit_margin(features[0] @ kernel + bias), direct, rtol=1e-4, atol=1e-4)


def test_best_keras_is_scored_on_the_live_model_with_its_weights_which_come_back_after(tmp_path):
    model, best = _model(3), _model(4)  # best.keras: other weights, same architecture
    path = os.path.join(tmp_path, "best.keras")
    best.save(path)
    images = _tiles(5, 5)[0]
    own = [w.copy() for w in model.get_weights()]
    one_device = types.SimpleNamespace(strategy=None)
    with _scoring_model(model, path, one_device) as scorer:
        assert scorer is model
        np.testing.assert_allclose(keras.ops.convert_to_numpy(scorer.predict_on_batch(images)),
                                   keras.ops.convert_to_numpy(best.predict_on_batch(images)), rtol=1e-5, atol=1e-5)
    for w, o in zip(model.get_weights(), own):
        np.testing.assert_array_equal(w, o)
    with _scoring_model(model, os.path.join(tmp_path, "final.keras"), one_device) as scorer:
        assert scorer is model  # final.keras is the live model: nothing loaded
    with _scoring_model(model, path, types.SimpleNamespace(strategy="mirrored")) as scorer:
        assert scorer is not model  # under a strategy the file is loaded and scored on one device
        np.testing.assert_allclose(keras.ops.convert_to_numpy(scorer.predict_on_batch(images)),
                                   keras.ops.convert_to_numpy(best.predict_on_batch(images)), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_trainers_after_training_scoring_compiles_each_predict_function_once_on_jax():
    """tools/bench_finish.py in a JAX process: final.keras + best.keras + features over splits with
    short last batches compile two predict functions (the live model's and the features model's)."""
    import json
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", CRACK_TF_REPO=repo)
    out = subprocess.run([sys.executable, os.path.join(repo, "tools", "bench_finish.py"), "--size=32", "--batch=16"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["predict_compiles"] == 2, result
    # each part of the operating point timed, and together no more than the whole
    assert set(result["parts"]) == {"final_val", "final_eval", "final_features", "best_val"}, result
    assert all(v > 0 for v in result["parts"].values()) and sum(result["parts"].values()) <= result["seconds"]


def test_bench_finish_reads_tile_counts_per_source_and_refuses_malformed_ones():
    from tests.tool_loader import load_tool

    counts = load_tool("bench_finish")._counts
    assert counts("deepcrack:560,uav75:151") == {"deepcrack": 560, "uav75": 151}
    for bad in ("", "uav75", "uav75:0", "uav75:x", "a:1:2"):
        with pytest.raises(SystemExit, match="source:tiles"):
            counts(bad)
