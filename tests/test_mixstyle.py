"""MixStyle (crack_tf/models/mixstyle.py): feature statistics mixed between a training batch's samples."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import crack_tf.models as models
from crack_tf.models.mixstyle import MixStyle


def _batch(n: int = 6, seed: int = 0) -> np.ndarray:
    """Samples with clearly different per-channel means and spreads (distinct "styles")."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 7, 7, 3)) * rng.uniform(0.5, 4.0, (n, 1, 1, 3)) + rng.uniform(-5, 5, (n, 1, 1, 3))
    return x.astype(np.float32)


def _moments(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)
    return a.mean(axis=(1, 2)), np.sqrt(a.var(axis=(1, 2)) + 1e-6)


def test_inference_is_the_identity_and_p_zero_never_mixes():
    x = _batch()
    layer = MixStyle(p=1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(MixStyle(p=0.0)(x, training=True)), x)


def test_a_mixed_batch_keeps_each_samples_content_with_statistics_mixed_with_another_samples():
    """Checked from the output alone: each sample's normalised content is unchanged, and its new
    mean and std are (for every channel, with one weight) between its own and one other sample's,
    the other samples forming a permutation of the batch."""
    keras.utils.set_random_seed(1)
    x = _batch()
    out = keras.ops.convert_to_numpy(MixStyle(p=1.0, alpha=0.5)(x, training=True))
    mu, sigma = _moments(x)
    mu_out, sigma_out = _moments(out)
    np.testing.assert_allclose((out - mu_out[:, None, None]) / sigma_out[:, None, None],
                               (x - mu[:, None, None]) / sigma[:, None, None], atol=2e-3)
    partners = []
    for i in range(len(x)):
        fits = []
        for j in range(len(x)):
            if j == i:
                continue  # (a sample drawn as its own partner keeps its statistics: checked below)
            lam = (mu_out[i, 0] - mu[j, 0]) / (mu[i, 0] - mu[j, 0])
            if np.allclose(mu_out[i], lam * mu[i] + (1 - lam) * mu[j], atol=1e-3) and \
                    np.allclose(sigma_out[i], lam * sigma[i] + (1 - lam) * sigma[j], atol=1e-3) and -1e-3 <= lam <= 1 + 1e-3:
                fits.append(j)
        own = np.allclose(mu_out[i], mu[i], atol=1e-3) and np.allclose(sigma_out[i], sigma[i], atol=1e-3)
        assert fits or own, f"sample {i}: its statistics are no mix of its own and another sample's"
        partners.append(fits[0] if len(fits) == 1 else None)
    known = [j for j in partners if j is not None]
    assert len(known) == len(set(known))  # a permutation: no sample lends its style twice
    assert not np.allclose(out, x, atol=1e-2)  # something was mixed


def test_each_batch_is_mixed_with_probability_p():
    keras.utils.set_random_seed(2)
    x = _batch(4)
    layer = MixStyle(p=0.5, alpha=0.1)
    mixed = sum(not np.allclose(keras.ops.convert_to_numpy(layer(x, training=True)), x, atol=1e-5) for _ in range(80))
    assert 24 <= mixed <= 56  # binomial(80, 0.5): outside this range with probability < 0.1%


def test_bfloat16_in_bfloat16_out_and_bad_arguments_refused():
    x = keras.ops.cast(_batch(), "bfloat16")
    out = MixStyle(p=1.0, dtype="mixed_bfloat16")(x, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))).all()
    for kwargs in ({"p": 1.5}, {"alpha": 0.0}, {"eps": -1.0}):
        with pytest.raises(ValueError, match="MixStyle"):
            MixStyle(**kwargs)


def test_serialises_and_a_checkpoint_resumes_the_same_random_draws(tmp_path):
    """The trainer's checkpoints keep every seed generator's state (crack_tf/training/checkpoints.py),
    MixStyle's among them: a model restored from one draws what the original goes on to draw."""
    from crack_tf.training import checkpoints

    layer = MixStyle(p=0.3, alpha=0.2, seed=5, name="ms")
    again = MixStyle.from_config(layer.get_config())
    assert (again.p, again.alpha, again.seed, again.name) == (0.3, 0.2, 5, "ms")

    def model():
        inputs = keras.Input((7, 7, 3))
        m = keras.Model(inputs, MixStyle(p=1.0, seed=3, name="ms")(keras.layers.Conv2D(3, 1, name="c")(inputs)))
        m.compile(optimizer="sgd", loss="mse")
        m.optimizer.build(m.trainable_variables)
        return m

    x = _batch(4)
    trained = model()
    for _ in range(3):  # the random state moves on with every training batch
        trained(x, training=True)
    checkpoints.save_checkpoint(trained, str(tmp_path), {"global_step": 3})
    expected = keras.ops.convert_to_numpy(trained(x, training=True))
    resumed, fresh = model(), model()
    checkpoints.restore(resumed, checkpoints.checkpoints(str(tmp_path))[0])
    fresh.set_weights(trained.get_weights())  # the kernels without the random state
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(resumed(x, training=True)), expected)
    assert not np.array_equal(keras.ops.convert_to_numpy(fresh(x, training=True)), expected)
    trained.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(trained(x)))


def test_resnet50_aspp_with_mixstyle_keeps_its_weights_and_inference_and_refuses_the_last_stage():
    plain = models.get("resnet50_aspp", input_shape=(32, 32, 3))
    mixed = models.get("resnet50_aspp", input_shape=(32, 32, 3), mixstyle=("conv1", "layer1"), mixstyle_p=1.0)
    inner = {layer.name for layer in mixed._flatten_layers(include_self=False, recursive=True)}
    assert {"mixstyle_conv1", "mixstyle_layer1", "aspp_layer1"} <= inner
    assert [w.shape for w in mixed.weights] == [w.shape for w in plain.weights]  # no weights of its own
    plain.set_weights(mixed.get_weights())
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mixed(x)), keras.ops.convert_to_numpy(plain(x)))
    assert not np.allclose(keras.ops.convert_to_numpy(mixed(x, training=True)),
                           keras.ops.convert_to_numpy(plain(x, training=True)), atol=1e-3)
    assert any(layer.name == "mixstyle_layer1" for layer in
               models.get("resnet50", input_shape=(32, 32, 3), mixstyle=("layer1",))._flatten_layers(recursive=True))
    with pytest.raises(ValueError, match="mixstyle stages \\['layer4'\\]"):
        models.get("resnet50_aspp", input_shape=(32, 32, 3), mixstyle=("layer4",))


def test_adabn_passes_run_through_a_mixstyle_model():
    """AdaBN's cached passes replay the graph with MixStyle in it (the identity at inference): the
    eager passes' statistics, bit for bit."""
    from crack_tf.training.adabn import adapt_batchnorm, batchnorm_layers

    model = models.get("resnet50_aspp", input_shape=(32, 32, 3), mixstyle=("layer1",))
    images = np.random.default_rng(1).integers(60, 255, (6, 32, 32, 3)).astype(np.uint8)
    eager = adapt_batchnorm(model, images, batch_size=4, copy=True, passes="eager")
    cached = adapt_batchnorm(model, images, batch_size=4, copy=True, passes="cached")
    for a, b in zip(batchnorm_layers(eager), batchnorm_layers(cached)):
        np.testing.assert_array_equal(np.asarray(a.moving_variance), np.asarray(b.moving_variance))


def test_the_trainers_flags_reach_the_model_and_bad_ones_are_refused():
    from crack_tf.training import flags as train_flags
    from crack_tf.training.build import build_model
    from crack_tf.training.config import from_values

    cfg = from_values({"mixstyle": ["layer2"], "mixstyle_p": 0.7, "mixstyle_alpha": 0.3, "image_size": 32})
    train_flags.validate(cfg)
    layer = next(layer for layer in build_model(cfg)._flatten_layers(recursive=True) if isinstance(layer, MixStyle))
    assert (layer.name, layer.p, layer.alpha) == ("mixstyle_layer2", 0.7, 0.3)
    for values, message in (({"mixstyle": ["layer4"]}, "--mixstyle=layer4"),
                            ({"mixstyle": ["layer1"], "model": "zhang2016"}, "zhang2016 has none"),
                            ({"mixstyle_p": 1.5}, "--mixstyle_p"), ({"mixstyle_alpha": 0.0}, "--mixstyle_alpha")):
        with pytest.raises(ValueError, match=message):
            train_flags.validate(from_values(values))
