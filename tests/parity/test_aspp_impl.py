"""Every ASPP ``impl`` computes the same function, gradients and checkpoint as "separable"."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from crack_tf.models.aspp import ASPP, IMPLS, _accelerator_present, resolve_impl

pytestmark = pytest.mark.parity
FAST_IMPLS = [impl for impl in IMPLS if impl not in ("auto", "separable")]
RATES = (1, 2, 4, 8)  # rate 1 and odd sizes exercise the space-to-batch padding paths
SHAPE = (2, 13, 11, 8)


def _value_and_grads(layer: ASPP, x: np.ndarray, probe: np.ndarray):
    """(output, d<sum(out*probe)>/d input, {weight path: gradient}) in training mode."""
    backend = keras.backend.backend()
    weights = layer.trainable_weights
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
            loss = tf.reduce_sum(y * probe)
        grads = tape.gradient(loss, [xt] + list(weights))
    elif backend == "jax":
        import jax

        def loss_fn(tv, xv):
            y, _ = layer.stateless_call(tv, [v.value for v in layer.non_trainable_weights], xv, training=True)
            return (y * probe).sum(), y

        (_, y), (gw, gx) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            [v.value for v in weights], x
        )
        grads = [gx] + list(gw)
    else:
        pytest.skip(f"gradient check not written for backend {backend}")
    to_np = keras.ops.convert_to_numpy
    return to_np(y), to_np(grads[0]), {w.path: to_np(g) for w, g in zip(weights, grads[1:])}


def _close(actual, expected, what: str):
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, atol=1e-4 * scale, rtol=0, err_msg=what)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=SHAPE).astype("float32")
    probe = rng.normal(size=SHAPE).astype("float32")
    return x, probe


def _layer(impl: str, fusion: str = "max") -> ASPP:
    keras.utils.set_random_seed(3)  # identical initial weights for every impl
    layer = ASPP(rates=RATES, impl=impl, fusion=fusion, name="aspp")
    layer.build(SHAPE)
    return layer


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("fusion", ["max", "concat"])
def test_forward_and_gradients_match_separable(impl, fusion, data):
    x, probe = data
    ref_layer, layer = _layer("separable", fusion), _layer(impl, fusion)
    layer.set_weights(ref_layer.get_weights())
    y_ref, gx_ref, gw_ref = _value_and_grads(ref_layer, x, probe)
    y, gx, gw = _value_and_grads(layer, x, probe)
    assert np.abs(y_ref).max() > 0.1
    _close(y, y_ref, f"{impl}: forward")
    _close(gx, gx_ref, f"{impl}: d/d input")
    assert gw.keys() == gw_ref.keys()
    for path, g in gw.items():
        assert np.abs(gw_ref[path]).max() > 0, path
        _close(g, gw_ref[path], f"{impl}: d/d {path}")
    # Eval mode (moving statistics) agrees too.
    _close(keras.ops.convert_to_numpy(layer(x, training=False)),
           keras.ops.convert_to_numpy(ref_layer(x, training=False)), f"{impl}: eval forward")


@pytest.mark.parametrize("save_impl,load_impl", [("separable", "dense"), ("dense", "taps"),
                                                 ("dense_s2b", "separable_s2b"), ("taps", "separable")])
def test_checkpoint_loads_across_impls(save_impl, load_impl, data, tmp_path):
    x, _ = data

    def model(impl):
        inputs = keras.Input(SHAPE[1:])
        return keras.Model(inputs, ASPP(rates=RATES, impl=impl, name="aspp")(inputs))

    saved = model(save_impl)
    # Non-trivial moving statistics so eval outputs depend on every saved variable.
    for w in saved.non_trainable_weights:
        w.assign(np.random.default_rng(1).uniform(0.5, 1.5, w.shape).astype("float32"))
    expected = np.asarray(saved(x, training=False))
    saved.save_weights(tmp_path / "aspp.weights.h5")
    saved.save(tmp_path / "aspp.keras")

    loaded = model(load_impl)
    loaded.load_weights(tmp_path / "aspp.weights.h5")
    _close(np.asarray(loaded(x, training=False)), expected, "weights.h5 across impls")
    reloaded = keras.saving.load_model(tmp_path / "aspp.keras")
    assert reloaded.get_layer("aspp").impl == save_impl
    _close(np.asarray(reloaded(x, training=False)), expected, ".keras round trip")


def test_auto_resolves_to_a_concrete_impl():
    assert resolve_impl("auto") in IMPLS[1:]
    assert resolve_impl("dense", "bfloat16") == "dense"
    if not _accelerator_present():  # the CPU choice depends on the compute dtype
        assert resolve_impl("auto", "float32") == "separable"
        assert resolve_impl("auto", "bfloat16") == "dense_s2b"
        layer = ASPP(dtype="mixed_bfloat16")
        layer.build((1, 8, 8, 4))
        assert layer._resolved_impl == "dense_s2b"
    with pytest.raises(ValueError, match="impl must be one of"):
        ASPP(impl="winograd")


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_mixed_bfloat16_close_to_float32(impl, data):
    """Under mixed_bfloat16 every impl stays within bf16 rounding of the float32 reference."""
    x, _ = data
    ref_layer = _layer("separable")
    layer = ASPP(rates=RATES, impl=impl, dtype="mixed_bfloat16", name="aspp")
    layer.build(SHAPE)
    layer.set_weights(ref_layer.get_weights())
    expected = keras.ops.convert_to_numpy(ref_layer(x, training=True))
    got = keras.ops.convert_to_numpy(keras.ops.cast(layer(x, training=True), "float32"))
    assert keras.backend.standardize_dtype(layer(x).dtype) == "bfloat16"
    np.testing.assert_allclose(got, expected, atol=5e-2 * float(np.abs(expected).max()), rtol=0)
