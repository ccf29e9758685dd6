"""``--refine_band``: dense scores near the threshold replaced by window-by-window scores at the same
origins (crack_tf.inspection.photo_scan.refined, heatmap.score_windows_at), and what
tools/dense_agreement.py reports for it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from crack_tf.inspection import heatmap as H
from crack_tf.inspection.device_windows import window_batches
from crack_tf.inspection.photo_scan import make_scanner
from crack_tf.predictor import load_model
from tests.test_heatmap import crack_photo, darkness_model
from tests.tool_loader import load_tool


@pytest.fixture(scope="module")
def resnet_predictor(tmp_path_factory):
    """A random 64-px resnet50_aspp: its border cells see context, so dense != windows."""
    from crack_tf import models

    keras.utils.set_random_seed(1)
    path = tmp_path_factory.mktemp("refine") / "r.keras"
    models.get("resnet50_aspp", input_shape=(64, 64, 3)).save(path)
    return load_model(str(path))


def test_windows_at_given_origins_are_the_grids_windows(tmp_path):
    photo, _ = crack_photo(230, 310, seed=5)
    ys, xs = H.window_starts(230, 64, 20), H.window_starts(310, 64, 20)
    iy, ix = np.array([2, 0, 7, 7, 3]), np.array([1, 4, 0, 9, 3])
    flat = iy * len(xs) + ix
    for cut in (H._windows, window_batches):
        grid = np.concatenate([keras.ops.convert_to_numpy(b)[:n]
                               for b, n in cut(photo, *H.grid_origins(ys, xs), 64, 40, 7)])
        at = np.concatenate([keras.ops.convert_to_numpy(b)[:n] for b, n in cut(photo, ys[iy], xs[ix], 64, 40, 7)])
        np.testing.assert_array_equal(at, grid[flat])
    darkness_model(40).save(tmp_path / "d.keras")
    predictor = load_model(str(tmp_path / "d.keras"))
    full = H.sliding_heatmap(predictor.predict, photo, 40, 64, 20, 7)
    np.testing.assert_array_equal(H.score_windows_at(predictor.predict, photo, ys[iy], xs[ix], 40, 64, 7),
                                  full.grid[iy, ix])


def test_refined_dense_takes_the_windows_values_near_the_threshold_and_keeps_dense_elsewhere(resnet_predictor):
    photo = crack_photo(384, 512, seed=3)[0]
    dense = make_scanner(resnet_predictor, "dense", 128, 64)
    d = dense(photo)
    w = H.sliding_heatmap(resnet_predictor.predict, photo, 64, 128, 64, 16, starts=(d.ys, d.xs))
    assert not np.allclose(d.grid, w.grid, atol=1e-4)  # context at the borders: there is something to refine
    t = float(np.median(d.grid))
    band = float(np.quantile(np.abs(d.grid - t), 0.4))  # about 40% of the windows near the threshold
    near = np.abs(d.grid - np.float32(t)) < band
    assert 0 < near.sum() < near.size
    scanner = make_scanner(resnet_predictor, "dense", 128, 64, refine_band=band, threshold=t)
    assert scanner.mode == "dense" and f"within {band:g} of {t:.4g}" in scanner.note
    r = scanner(photo)
    np.testing.assert_array_equal(r.ys, d.ys)
    np.testing.assert_allclose(r.grid[near], w.grid[near], atol=1e-6)
    np.testing.assert_array_equal(r.grid[~near], d.grid[~near])
    everything = make_scanner(resnet_predictor, "dense", 128, 64, refine_band=1.0, threshold=t)(photo)
    np.testing.assert_allclose(everything.grid, w.grid, atol=1e-6)  # band 1: windows mode at the dense origins


def test_refine_band_refusals_and_its_note_where_dense_cannot_run(resnet_predictor, tmp_path):
    with pytest.raises(ValueError, match="needs --mode=dense or --mode=auto"):
        make_scanner(resnet_predictor, "windows", 128, 64, refine_band=0.1)
    with pytest.raises(ValueError, match=r"choose a band in \[0, 1\]"):
        make_scanner(resnet_predictor, "dense", 128, 64, refine_band=1.5)
    inputs = keras.Input((32, 32, 3))
    flat = keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(flat)).save(tmp_path / "flat.keras")
    auto = make_scanner(load_model(str(tmp_path / "flat.keras")), "auto", 64, 32, refine_band=0.1)
    assert auto.mode == "windows" and "--refine_band unused" in auto.note


def test_agreement_tool_scores_each_refine_band_from_the_two_grids():
    tool = load_tool("dense_agreement")
    ys, xs = np.array([0, 64]), np.array([0, 64, 128])
    dense = H.Heatmap(np.array([[0.10, 0.45, 0.55], [0.52, 0.90, 0.30]], np.float32), ys, xs, 128, 192, 256, 1.0)
    windows = H.Heatmap(np.array([[0.12, 0.55, 0.45], [0.60, 0.95, 0.31]], np.float32), ys, xs, 128, 192, 256, 4.0)
    labels = np.array([[0, 1, 0], [1, 1, -1]])
    tally = tool.Tally(bands=(0.06, 1.0))
    tally.add(dense, windows, 0.5, labels)
    s = tally.summary()
    assert s["equal_verdicts"] == pytest.approx(4 / 6)  # 0.45 / 0.55 and 0.55 / 0.45 flip
    assert s["accuracy"]["dense"] == pytest.approx(3 / 5) and s["accuracy"]["windows"] == pytest.approx(5 / 5)
    near = s["refine"]["0.06"]  # |p - 0.5| < 0.06: 0.45, 0.55, 0.52 are scored again
    assert near["rescored_share"] == pytest.approx(3 / 6)
    assert near["equal_verdicts"] == 1.0 and near["accuracy"] == 1.0
    assert s["refine"]["1"] == {"rescored_share": 1.0, "equal_verdicts": 1.0, "accuracy": 1.0}
