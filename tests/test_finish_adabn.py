"""The trainer's leave-one-source-out scoring after AdaBN (crack_tf.training.finish)."""

from __future__ import annotations

import re
import types

import keras
import numpy as np
import pytest

from crack_tf.evaluation import calibration
from crack_tf.training import finish
from crack_tf.training.adabn import adapt_batchnorm, batchnorm_layers


class _Part:
    """An eval part as the trainer's inputs give it: ``.dataset`` of (images, labels) batches."""

    def __init__(self, images, labels, batch=8):
        self.dataset = [(images[i : i + batch], labels[i : i + batch]) for i in range(0, len(images), batch)]

    def __len__(self):
        return len(self.dataset)


def _model(seed: int = 3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _tiles(rng, n, offset):
    labels = rng.integers(0, 2, n)
    images = rng.normal(100 + offset, 20, (n, 16, 16, 3)) + labels[:, None, None, None] * 40.0
    return images.astype(np.float32), labels.astype(np.int32)


def test_eval_sources_are_scored_after_adabn_at_the_stored_point_and_the_model_is_restored():
    rng = np.random.default_rng(0)
    model = _model()
    val = types.SimpleNamespace(by_source={"a": _Part(*_tiles(rng, 40, 0))})
    target_images, target_labels = _tiles(rng, 32, 60)  # another site: brighter photos
    unlabelled = {"site": _tiles(rng, 48, 60)[0]}
    eval_input = types.SimpleNamespace(by_source={"site": _Part(target_images, target_labels)})
    before = [np.array(layer.moving_mean) for layer in batchnorm_layers(model)]

    def adapt(m, source, target_weight):
        adapt_batchnorm(m, unlabelled[source], copy=False, target_weight=target_weight)

    points, arrays = finish.operating_point(model, val, "f1", "none", eval_input, adapt)
    point = points["none"]
    after = [np.array(layer.moving_mean) for layer in batchnorm_layers(model)]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)  # the live model leaves as it came
    # Reference: an adapted copy of the model scores the target tiles at the same point.
    adapted = adapt_batchnorm(model, unlabelled["site"], copy=True)
    logits = keras.ops.convert_to_numpy(adapted.predict_on_batch(target_images))
    probs = calibration.calibrated_probability(calibration.logit_margin(logits), point["temperature"])
    threshold = float(np.float32(point["threshold"]))
    expected = float(np.mean((probs > threshold) == (target_labels == 1)))
    scored = point["eval_sources_adabn_at_threshold_by_source"]["site"]
    assert scored["accuracy"] == pytest.approx(expected)
    assert not np.allclose(np.array(adapted.layers[2].moving_mean), before[0])  # AdaBN changed something
    assert list(dict.fromkeys(arrays["split"].tolist())) == ["val", "eval", "eval_adabn"]
    adabn = arrays["split"] == "eval_adabn"
    np.testing.assert_allclose(arrays["margins"][0, adabn], calibration.logit_margin(logits), rtol=1e-5, atol=1e-5)
    assert "eval_sources_adabn_at_threshold_by_source" not in finish.operating_point(
        model, val, "f1", "none", eval_input)[0]["none"]
    assert "eval_sources_adabn_by_target_weight" not in point  # plain AdaBN only, by default
    # Blends (adabn_weights): each scored after AdaBN at its target weight, plain AdaBN kept as before.
    points, arrays = finish.operating_point(model, val, "f1", "none", eval_input, adapt, None, (1.0, 0.25))
    blend = adapt_batchnorm(model, unlabelled["site"], copy=True, target_weight=0.25)
    logits = keras.ops.convert_to_numpy(blend.predict_on_batch(target_images))
    margin = calibration.logit_margin(logits)
    probs = calibration.calibrated_probability(margin, points["none"]["temperature"])
    by_weight = points["none"]["eval_sources_adabn_by_target_weight"]
    assert list(by_weight) == ["0.25"]
    assert by_weight["0.25"]["site"]["accuracy"] == pytest.approx(float(np.mean((probs > threshold) == (target_labels == 1))))
    assert points["none"]["eval_sources_adabn_at_threshold_by_source"] == point["eval_sources_adabn_at_threshold_by_source"]
    assert list(dict.fromkeys(arrays["split"].tolist())) == ["val", "eval", "eval_adabn", "eval_adabn_w0.25"]
    np.testing.assert_allclose(arrays["margins"][0, arrays["split"] == "eval_adabn_w0.25"], margin, rtol=1e-5, atol=1e-5)
    plain = arrays["margins"][0, arrays["split"] == "eval_adabn"]
    assert not np.allclose(arrays["margins"][0, arrays["split"] == "eval_adabn_w0.25"], plain)


def test_operating_point_times_each_part_and_adabn_adds_over_sources():
    """run.json's operating_point_seconds: the wall seconds of scoring val, the eval tiles, and
    AdaBN's adapting apart from its scoring, summed over the eval sources."""
    import time

    rng = np.random.default_rng(1)
    model = _model()
    val = types.SimpleNamespace(by_source={"a": _Part(*_tiles(rng, 16, 0))})
    eval_input = types.SimpleNamespace(by_source={"s1": _Part(*_tiles(rng, 8, 60)), "s2": _Part(*_tiles(rng, 8, 30))})
    unlabelled = _tiles(rng, 16, 60)[0]

    def slow_adapt(m, source, target_weight):
        time.sleep(0.15)  # a known floor for each source's adapting
        adapt_batchnorm(m, unlabelled, copy=False)

    seconds = {}
    finish.operating_point(model, val, "f1", "none", eval_input, slow_adapt, seconds)
    assert set(seconds) == {"val", "eval", "adabn_adapt", "adabn_score"}
    assert seconds["adabn_adapt"] >= 0.3 and all(v > 0 for v in seconds.values())  # two sources, 0.15 s each
    assert finish.timed(None, "x", max, 2, 3) == 3  # without a dict: the result only


def test_the_trainers_adapt_step_reads_the_eval_sources_unlabelled_train_photos(tmp_path, monkeypatch):
    from crack_tf.training.config import from_values
    from crack_tf.training.loop import _adabn
    from tests.photo_data import write_source

    write_source(tmp_path / "site", {"train": 2, "val": 1}, seed=4)
    cfg = from_values({"eval_sources": "site", "data_root": str(tmp_path), "adabn_eval_crops": 12,
                       "crop_side": [16, 32], "image_size": 16, "seed": 1})
    assert _adabn(from_values({"eval_sources": "site"})) is None  # off by default
    model = _model()
    before = np.array(model.layers[2].moving_mean)
    _adabn(cfg)(model, "site")
    assert not np.allclose(np.array(model.layers[2].moving_mean), before)  # adapted in place
    # --adabn_passes reaches adapt_batchnorm; compiled passes re-estimate the same statistics.
    from crack_tf.training import adabn

    seen, real = [], adabn.adapt_batchnorm
    monkeypatch.setattr(adabn, "adapt_batchnorm", lambda *a, **k: seen.append((a[2], a[6] if len(a) > 6 else
                                                                               k.get("passes"))) or real(*a, **k))
    compiled = _model()
    _adabn(from_values({**cfg.flat(), "adabn_passes": "compiled", "adabn_batch_size": 5}))(compiled, "site")
    assert seen == [(5, "compiled")]  # --adabn_batch_size reaches it too (12 crops: batches of 5, 5, 2)
    # a target weight reaches it: the first BatchNorm (none upstream) ends halfway to plain AdaBN's
    half = _model()
    _adabn(cfg)(half, "site", 0.5)
    np.testing.assert_allclose(np.array(half.layers[2].moving_mean),
                               0.5 * before + 0.5 * np.array(model.layers[2].moving_mean), rtol=1e-5, atol=1e-6)
    from crack_tf.training.loop import adabn_weights

    assert adabn_weights(cfg) == (1.0,) and adabn_weights(from_values({"adabn_target_weights": ["1", "0.5"]})) == (1.0, 0.5)
    np.testing.assert_allclose(np.array(compiled.layers[2].moving_mean), np.array(model.layers[2].moving_mean),
                               rtol=1e-4, atol=1e-4)
    from absl.flags import IllegalFlagValueError

    from crack_tf.training.config import parse_args

    with pytest.raises(IllegalFlagValueError, match=re.escape(f"adabn_passes=jit: value should be one of <{'|'.join(adabn.PASSES)}>")):
        parse_args(["--adabn_passes=jit"])
    assert [parse_args([f"--adabn_passes={p}"]).adabn_passes for p in adabn.PASSES] == list(adabn.PASSES)
