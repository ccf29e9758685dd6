"""--precision of the inspection commands (crack_tf.model_precision): which policy, and a faithful rebuild."""

from __future__ import annotations

import numpy as np
import pytest

import crack_tf.models as models
from crack_tf import model_precision as mp
from crack_tf.predictor import load_model


@pytest.mark.parametrize(
    "choice, saved, accelerator, backend, native, expected",
    [
        ("auto", "mixed_bfloat16", False, "tensorflow", False, "float32"),  # a GPU model on a plain CPU
        ("auto", "mixed_bfloat16", False, "jax", True, "float32"),  # JAX CPU bf16 is no faster
        ("auto", "mixed_bfloat16", False, "tensorflow", True, "mixed_bfloat16"),  # AMX / AVX512_BF16
        ("auto", "mixed_bfloat16", True, "jax", False, "mixed_bfloat16"),  # on the GPU: as trained
        ("auto", "float32", False, "tensorflow", True, "float32"),  # auto never lowers a float32 model
        ("bf16", "float32", False, "tensorflow", False, "mixed_bfloat16"),
        ("float32", "mixed_bfloat16", True, "jax", True, "float32"),
    ],
)
def test_policy_choice(choice, saved, accelerator, backend, native, expected):
    assert mp.choose_policy(choice, saved, accelerator, backend, native) == expected


def test_bad_choice_and_native_bf16_from_cpuinfo(tmp_path):
    with pytest.raises(ValueError, match="--precision='fp8'"):
        mp.choose_policy("fp8", "float32", False, "tensorflow", False)
    with_amx = tmp_path / "a"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n")
    plain = tmp_path / "b"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert mp.native_bf16_cpu(str(with_amx)) and not mp.native_bf16_cpu(str(plain))
    assert not mp.native_bf16_cpu(str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("precision")
    paths = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(1)
            model = models.get("zhang2016", input_shape=(64, 64, 3))
        finally:
            keras.mixed_precision.set_global_policy("float32")
        paths[policy] = str(root / f"{policy}.keras")
        model.save(paths[policy])
    return paths


def _policies(model) -> set[str]:
    return {layer.dtype_policy.name for layer in model.layers[1:-1]}  # past the input, before the logits


def test_rebuilt_models_compute_in_the_chosen_policy_with_the_same_weights(saved_models):
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3)).astype(np.uint8)
    as_trained = load_model(saved_models["mixed_bfloat16"])  # None: the saved policy
    assert as_trained.precision == "mixed_bfloat16" and _policies(as_trained.model) == {"mixed_bfloat16"}
    in_float32 = load_model(saved_models["mixed_bfloat16"], precision="float32")
    assert in_float32.precision == "float32" and _policies(in_float32.model) == {"float32"}
    for a, b in zip(as_trained.model.get_weights(), in_float32.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    p_bf16, p_f32 = as_trained.predict(images), in_float32.predict(images)
    assert not np.array_equal(p_bf16, p_f32)  # the float32 rebuild really computes in float32
    np.testing.assert_allclose(p_bf16, p_f32, atol=0.02)  # bf16 rounding only

    plain = load_model(saved_models["float32"])
    lowered = load_model(saved_models["float32"], precision="bf16")
    assert _policies(lowered.model) == {"mixed_bfloat16"}
    assert lowered.model.layers[-1].dtype_policy.name == "float32"  # float32 logits, as the trainer builds
    same = load_model(saved_models["float32"], precision="float32")  # a float32 model is loaded as is
    np.testing.assert_array_equal(same.predict(images), plain.predict(images))
    np.testing.assert_allclose(lowered.predict(images), plain.predict(images), atol=0.02)


def test_a_savedmodel_refuses_another_precision(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ValueError, match="precision it was exported with"):
        load_model(str(folder), precision="bf16")
    with pytest.raises(ValueError, match="--precision='half'"):
        load_model(str(folder), precision="half")
