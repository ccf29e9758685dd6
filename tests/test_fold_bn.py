"""Batch norm folded into convolutions (``crack_tf.inspection.fold_bn``): which pairs, same function."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from crack_tf import models
from crack_tf.inspection.dense import build_dense_model
from crack_tf.inspection.fold_bn import conv_bn_pairs, folded_clone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomise_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Statistics and affine terms far from the identity, so an unfolded norm would show."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, c))
            layer.moving_variance.assign(rng.uniform(0.3, 3.0, c))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, c))


def mixed_model() -> keras.Model:
    """Pairs that fold (a, b: no bias, no scale / centre) and four that must not."""
    inputs = keras.Input((None, None, 3))
    a = keras.layers.BatchNormalization(name="a_bn")(keras.layers.Conv2D(4, 3, padding="same", name="a_conv")(inputs))
    b_conv = keras.layers.Conv2D(4, 1, use_bias=False, name="b_conv")(a)
    b = keras.layers.BatchNormalization(scale=False, center=False, name="b_bn")(b_conv)
    relu_conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="relu_conv")(b)
    c = keras.layers.BatchNormalization(name="relu_bn")(relu_conv)  # activation between: not foldable
    shared = keras.layers.Conv2D(4, 1, name="shared_conv")(c)
    d = keras.layers.BatchNormalization(name="shared_bn")(shared)
    d = keras.layers.Add(name="add")([d, shared])  # the conv output is used twice: not foldable
    dw = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(d)
    e = keras.layers.BatchNormalization(name="dw_bn")(dw)  # not a plain Conv2D
    f = keras.layers.BatchNormalization(name="bn_of_bn")(e)  # not after a convolution
    return keras.Model(inputs, keras.layers.ReLU()(f))


def test_pairs_are_exactly_the_foldable_ones_and_the_function_is_kept():
    model = mixed_model()
    randomise_batch_norms(model)
    assert conv_bn_pairs(model) == {"a_conv": "a_bn", "b_conv": "b_bn"}
    folded = folded_clone(model, keras.Input((None, None, 3)))
    names = {layer.name for layer in folded.layers}
    assert {"a_bn", "b_bn"}.isdisjoint(names) and {"relu_bn", "shared_bn", "dw_bn", "bn_of_bn"} <= names
    assert folded.get_layer("b_conv").use_bias and not model.get_layer("b_conv").use_bias
    x = np.random.default_rng(1).normal(0, 1, (2, 9, 11, 3)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    got = keras.ops.convert_to_numpy(folded(x, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert model.get_layer("a_conv").kernel is not folded.get_layer("a_conv").kernel  # the model is left as it was


def test_resnet50_aspp_dense_logits_folded_equal_unfolded():
    model = models.get("resnet50_aspp", input_shape=(64, 64, 3))
    randomise_batch_norms(model, seed=3)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert len(conv_bn_pairs(backbone)) == 53  # every batch norm of ResNet50 follows its convolution
    folded, cell, cells = build_dense_model(model, 64, fold=True)
    plain, _, _ = build_dense_model(model, 64, fold=False)
    assert (cell, cells) == (32, 2)
    left = [x.name for x in folded._flatten_layers(recursive=True) if isinstance(x, keras.layers.BatchNormalization)]
    assert len(left) == 3  # only the ASPP's own (inside its layer), one per branch
    x = np.random.default_rng(2).uniform(0, 255, (1, 160, 128, 3)).astype(np.float32)
    expected = np.asarray(plain.predict_on_batch(x))
    got = np.asarray(folded.predict_on_batch(x))
    assert got.shape == expected.shape == (1, 4, 3, 2)
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_folding_runs_on_jax(tmp_path):
    """The same check under the JAX backend (the GPU machine's), in a fresh process."""
    pytest.importorskip("jax")
    if keras.backend.backend() == "jax":
        pytest.skip("already on JAX")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    test = f"{os.path.abspath(__file__)}::test_pairs_are_exactly_the_foldable_ones_and_the_function_is_kept"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
