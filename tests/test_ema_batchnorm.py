"""--ema_bn_crops: the averaged weights' BatchNorm statistics re-estimated on training crops (SWA's
BN update), the raw weights for per-epoch val and best.keras."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crack_tf.training import flags as train_flags
from crack_tf.training.config import from_values
from tests.test_train_photos import _args, _finish, _train, sources  # noqa: F401  (the module fixture)


def test_flag_needs_the_average_photos_and_batchnorm():
    train_flags.validate(from_values({"ema_momentum": 0.99, "ema_bn_crops": 64, "data_source": "photos",
                                      "data_dir": "uav75"}))
    for values in ({"ema_bn_crops": 64, "data_source": "photos", "data_dir": "uav75"},  # no average
                   {"ema_momentum": 0.99, "ema_bn_crops": 64, "data_source": "folder", "data_dir": "x"},
                   {"ema_momentum": 0.99, "ema_bn_crops": 64, "data_source": "photos", "data_dir": "uav75",
                    "model": "zhang2016"},
                   {"ema_momentum": 0.99, "ema_bn_crops": -1, "data_source": "photos", "data_dir": "uav75"}):
        with pytest.raises(ValueError, match="--ema_bn_crops="):
            train_flags.validate(from_values(values))


def _batchnorm_stats(model) -> list[np.ndarray]:
    import keras

    return [np.array(v) for layer in model._flatten_layers(recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) for v in (layer.moving_mean, layer.moving_variance)]


@pytest.mark.slow
def test_final_model_gets_the_averages_statistics_and_best_keeps_the_raw_weights(sources, tmp_path):  # noqa: F811
    import keras

    import crack_tf.models  # noqa: F401
    from crack_tf.data import make_input
    from crack_tf.training import config as train_config
    from crack_tf.training.adabn import adapt_batchnorm
    from crack_tf.training.build import data_config

    model_dir = tmp_path / "run"
    args = _args(sources, model_dir, ["--model=resnet50_aspp", "--image_size=32", "--val_tile=32",
                                      "--ema_momentum=0.5", "--ema_bn_crops=12", "--adabn_batch_size=4",
                                      "--best_metric=val_loss", "--best_mode=min", "--epochs=1"])
    out = _finish(_train(args))
    assert "EMA: BatchNorm statistics of the averaged weights re-estimated on 12 training crops" in out
    record = json.load(open(model_dir / "run.json"))["ema_batchnorm"]
    assert record["crops"] == 12 and 0 < record["crack_crops"] < 12 and record["bn_layers"] > 50
    final = keras.saving.load_model(model_dir / "final.keras", compile=False)
    stored = _batchnorm_stats(final)
    # the training stream's first 12 crops, built here from the run's flags; an independent
    # re-estimation of the saved average on them finds the statistics it was saved with: they are the
    # average's own, not those the raw weights left
    cfg = train_config.parse_args(args)
    images, _ = make_input(data_config(cfg), "train", True, 8, seed=5).sampler.batch(0, 12)
    again = adapt_batchnorm(final, images, 4, copy=True)
    for a, b in zip(stored, _batchnorm_stats(again), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # best.keras holds raw weights (never swapped for the average), so it differs from final.keras
    best = keras.saving.load_model(model_dir / "best.keras", compile=False)
    assert any(not np.allclose(a, b) for a, b in zip(best.trainable_weights, final.trainable_weights, strict=True))
