"""Domain-robust augmentation of the photos source: gamma, grayscale, hue; old settings unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from crack_tf.data.crops import CropOptions, CropSampler, gaussian_noise, render_crop
from crack_tf.data.photos import SourceSpec, load_photo_set
from crack_tf.training import config as train_config
from tests.photo_data import crops_module_at, write_source

BEFORE = "e162231"  # the last commit before gamma / grayscale / hue were added
PLAIN = dict(image_size=48, flips=False, rot90=False, brightness=0.0, contrast=0.0)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = write_source(tmp_path_factory.mktemp("aug") / "site", {"train": 3, "val": 1})
    return load_photo_set(SourceSpec("site", str(root)), "train")


@pytest.fixture(scope="module")
def colourful():
    """A smooth photo of many hues and levels (64x64), inside the gamut after any hue rotation."""
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    return (np.stack([xx, yy, 1 - (xx + yy) / 2], -1) * 110 + 70).astype(np.uint8)


@pytest.mark.parametrize("settings", [
    {},  # the trainer's defaults: flips, rot90, brightness / contrast 0.1
    dict(saturation=0.3, blur=0.5, jpeg=0.5, brightness=0.2, contrast=0.3),  # noise: its draw changed, below
    dict(flips=False, rot90=False, brightness=0.0, contrast=0.0),
])
def test_settings_without_the_new_options_render_the_crops_they_rendered_before(src, tmp_path, settings):
    old = crops_module_at(BEFORE, tmp_path)
    base = dict(image_size=40, crop_side=(16, 60), min_crack_pixels=20, reference=32)
    before = old.CropSampler([src], [1.0], old.CropOptions(**base, **settings), 7, 64).batch(3, 16)
    now = CropSampler([src], [1.0], CropOptions(**base, **settings), 7, 64).batch(3, 16)
    np.testing.assert_array_equal(now[1], before[1])
    np.testing.assert_array_equal(now[0], before[0])  # bit-identical pixels


def test_gamma_is_a_per_crop_power_curve_within_its_range(colourful):
    plain = render_crop(colourful, 0, 0, 64, CropOptions(**PLAIN), np.random.default_rng(0))
    g, gammas = 0.5, []
    for seed in range(24):
        out = render_crop(colourful, 0, 0, 64, CropOptions(**PLAIN, gamma=g), np.random.default_rng(seed))
        mid = (plain > 40) & (plain < 215)
        estimate = np.median(np.log(out[mid] / 255.0) / np.log(plain[mid] / 255.0))
        expected = np.round(255 * (plain / 255.0) ** estimate)
        assert np.abs(out - expected).max() <= 1  # one curve for the whole crop, every channel
        gammas.append(estimate)
    assert 1 / (1 + g) - 0.01 <= min(gammas) < 0.9 and 1.1 < max(gammas) <= 1 + g + 0.01


def test_grayscale_keeps_three_equal_channels_at_its_probability(src, colourful):
    gray = render_crop(colourful, 0, 0, 64, CropOptions(**PLAIN, grayscale=1.0), np.random.default_rng(0))
    plain = render_crop(colourful, 0, 0, 64, CropOptions(**PLAIN), np.random.default_rng(0))
    luma = np.asarray(Image.fromarray(plain).convert("L"))
    assert gray.shape == (48, 48, 3)
    for c in range(3):
        np.testing.assert_array_equal(gray[..., c], luma)
    sampler = CropSampler([src], [1.0], CropOptions(image_size=32, crop_side=(16, 48), min_crack_pixels=20,
                                                    reference=32, grayscale=0.3), 0, 400)
    share = np.mean([np.ptp(sampler.element(0, i)[0].astype(int), axis=-1).max() == 0 for i in range(400)])
    assert abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 400)


def _yiq(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                                              [0.211, -0.523, 0.312]]).T


def test_hue_rotates_the_chroma_and_keeps_the_luma(colourful):
    plain = _yiq(render_crop(colourful, 0, 0, 64, CropOptions(**PLAIN), np.random.default_rng(0)))
    vivid = np.hypot(plain[..., 1], plain[..., 2]) > 30
    turns = []
    for seed in range(8):
        out = _yiq(render_crop(colourful, 0, 0, 64, CropOptions(**PLAIN, hue=0.25), np.random.default_rng(seed)))
        assert np.abs(out[..., 0] - plain[..., 0]).max() <= 2  # luma kept (rounding only)
        angle = np.angle((out[..., 1] + 1j * out[..., 2]) / (plain[..., 1] + 1j * plain[..., 2]))[vivid]
        assert np.ptp(angle) < 0.2  # one rotation for the whole crop
        turns.append(np.median(angle) / (2 * np.pi))
    assert max(abs(t) for t in turns) <= 0.25 + 0.01 and np.ptp(turns) > 0.2  # in range, one per crop


def test_new_options_keep_each_crop_and_label_and_are_deterministic(src):
    base = dict(image_size=32, crop_side=(16, 48), min_crack_pixels=20, reference=32)
    strong = CropOptions(**base, gamma=0.4, grayscale=0.5, hue=0.1)
    x1, y1 = CropSampler([src], [1.0], strong, 0, 32).batch(1, 16)
    x2, y2 = CropSampler([src], [1.0], strong, 0, 32).batch(1, 16)
    xp, yp = CropSampler([src], [1.0], CropOptions(**base), 0, 32).batch(1, 16)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, yp)
    assert np.abs(x1.astype(int) - xp.astype(int)).mean() > 2


@pytest.mark.parametrize("bad, message", [
    (dict(gamma=-0.1), "gamma must be >= 0"), (dict(grayscale=1.5), "probability"), (dict(hue=0.6), "hue")])
def test_bad_values_are_rejected_by_the_options(bad, message):
    with pytest.raises(ValueError, match=message):
        CropOptions(**bad)


@pytest.mark.parametrize("bad, message", [
    (["--data_source=photos", "--data_dir=x", "--gamma=-1"], "--gamma must be >= 0"),
    (["--data_source=photos", "--data_dir=x", "--grayscale=2"], "--grayscale are probabilities"),
    (["--data_source=photos", "--data_dir=x", "--hue=0.7"], "--hue=0.7"),
    (["--data_source=folder", "--data_dir=x", "--gamma=0.3", "--blur=0.2"],
     "--blur, --gamma: augmentations of the photos source only"),
])
def test_bad_augmentation_flags_are_rejected_before_training(bad, message):
    with pytest.raises(ValueError, match=message):
        train_config.parse_args(bad)


def test_augmentation_flags_reach_the_crop_options():
    from crack_tf.data.photo_input import crop_options
    from crack_tf.training.build import data_config

    cfg = train_config.parse_args(["--data_source=photos", "--data_dir=x", "--gamma=0.3", "--grayscale=0.1",
                                  "--hue=0.05", "--contrast=0.2", "--blur=0.25", "--jpeg=0.3"])
    options = crop_options(data_config(cfg))
    assert (options.gamma, options.grayscale, options.hue, options.contrast, options.blur, options.jpeg) == (
        0.3, 0.1, 0.05, 0.2, 0.25, 0.3)


def test_gaussian_noise_is_normal_independent_and_scaled():
    rng = np.random.default_rng(0)
    z = gaussian_noise(rng, (224, 224, 3), 1.0)
    assert z.dtype == np.float32 and z.shape == (224, 224, 3)
    flat = z.ravel().astype(np.float64)
    # against scipy's normal law (an independent reference): KS distance of 150,528 draws, moments
    assert stats.kstest(flat, "norm").statistic < 0.005
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01 and abs(stats.kurtosis(flat)) < 0.05
    assert np.abs(flat).max() < 4.4  # the table's tails: 2**16 quantiles reach 4.3
    # neighbouring pixels and channels uncorrelated; the next crop's noise is new
    assert abs(np.corrcoef(z[:, :-1].ravel(), z[:, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(z[..., 0].ravel(), z[..., 1].ravel())[0, 1]) < 0.01
    assert not np.array_equal(z, gaussian_noise(rng, (224, 224, 3), 1.0))
    # sigma scales it; the same generator state gives the same noise
    a = gaussian_noise(np.random.default_rng(5), (8, 8, 3), 6.0)
    np.testing.assert_allclose(a, 6.0 * gaussian_noise(np.random.default_rng(5), (8, 8, 3), 1.0), rtol=1e-6)


def test_noise_option_adds_zero_mean_noise_up_to_its_sigma():
    big = np.full((256, 256, 3), 128, np.uint8)  # mid-grey: no clipping, so the residual is the noise
    residuals = []
    for seed in range(40):
        clean = render_crop(big, 0, 0, 224, CropOptions(**PLAIN | {"image_size": 224}), np.random.default_rng(seed))
        noisy = render_crop(big, 0, 0, 224, CropOptions(**PLAIN | {"image_size": 224, "noise": 6.0}),
                            np.random.default_rng(seed))
        residuals.append(noisy.astype(float) - clean.astype(float))
    sds = np.array([r.std() for r in residuals])
    # sigma is drawn per crop, uniform in [0, 6]; rounding to uint8 adds at most half a level
    assert sds.max() <= 6.0 * 1.05 + 0.5 and sds.min() < 1.5 and np.ptp(sds) > 3
    assert all(abs(r.mean()) < 0.05 for r in residuals)  # rounded, not truncated: no darkening
