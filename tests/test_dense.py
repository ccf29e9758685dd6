"""Dense (fully convolutional) scoring, device-side windows, the --mode flag, read-ahead and progress.

Exactness where it must hold: a model without context (1x1 convolutions, or one 32x32 stride-32
"patch" convolution, so a window's feature cells see nothing outside the window) scores every
window identically in dense and window mode, tiled or not, with any TTA. A ResNet's border cells
do see context in dense mode; there the test is equality on a photo of exactly one window.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from PIL import Image

from crack_tf.data.progress import Progress, eta_text
from crack_tf.inspection import dense as D
from crack_tf.inspection import heatmap as H
from crack_tf.inspection.device_windows import window_batches
from crack_tf.inspection.photo_scan import make_scanner
from crack_tf.predictor import load_model
from tests.test_heatmap import crack_photo, darkness_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def patch_model(size: int) -> keras.Model:
    """Output stride 32 and a receptive field of one cell: crack logit from the patch's darkness."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(3, 32, strides=32, name="patch")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    x = keras.layers.Dropout(0.3)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))
    kernel = np.zeros((32, 32, 3, 3), np.float32)
    kernel[:, :, :, 0] = -1 / 3072  # darkness: 148 - mean grey
    kernel[:16, :, :, 1] = 1 / 1536  # the top half brighter than the bottom: not flip-invariant
    kernel[:, :16, :, 2] = 1 / 1536
    model.get_layer("patch").set_weights([kernel, np.array([148.0, 0.0, 0.0], np.float32)])
    model.get_layer("logits").set_weights([np.array([[0, 4.0], [0, 0.05], [0, -0.03]], np.float32),
                                           np.array([0.0, -5.0], np.float32)])
    return model


@pytest.fixture(scope="module")
def patch_predictor(tmp_path_factory):
    path = tmp_path_factory.mktemp("patch") / "patch.keras"
    patch_model(64).save(path)
    return path


def test_dense_equals_windows_without_context_tiled_and_with_d4(patch_predictor):
    photo, _ = crack_photo(448, 640, seed=2)  # 64-px input, 128-px windows: 64 photo px a cell
    for tta in ("none", "d4"):
        predictor = load_model(str(patch_predictor), tta)
        whole = D.DenseScorer(predictor, window=128, stride=64)
        tiled = D.DenseScorer(predictor, window=128, stride=64, max_tile=5 * 32, margin_cells=1)
        assert (whole.stride_cells, whole.cells, whole.cell) == (1, 2, 32)
        a, b = whole.heatmap(photo), tiled.heatmap(photo)
        w = H.sliding_heatmap(predictor.predict, photo, 64, 128, 64, 16, starts=(a.ys, a.xs))
        assert a.grid.shape == (6, 9) and list(a.ys) == list(H.window_starts(448, 128, 64))
        assert list(a.xs) == list(H.window_starts(640, 128, 64))  # the window grid of --mode=windows
        np.testing.assert_allclose(a.grid, w.grid, atol=1e-5)
        np.testing.assert_allclose(b.grid, w.grid, atol=1e-5)
        assert a.grid.max() > 0.5 > a.grid.min()  # the crack is found, the rest is not


def test_dense_equals_windows_for_a_pointwise_model_on_a_photo_of_any_shape(tmp_path):
    darkness_model(32).save(tmp_path / "d.keras")
    predictor = load_model(str(tmp_path / "d.keras"))
    photo, _ = crack_photo(200, 330, seed=1)
    scanner = make_scanner(predictor, "auto", window=64, stride=32)
    assert scanner.mode == "dense" and "16 cells = 32.0 px" in scanner.note
    d = scanner(photo)
    w = H.sliding_heatmap(predictor.predict, photo, 32, 64, 32, 8)
    assert list(d.ys) == list(w.ys) and list(d.xs) == list(w.xs)
    np.testing.assert_allclose(d.grid, w.grid, atol=1e-5)
    small = photo[:50, :40]  # smaller than a window: reflect-padded in both modes
    np.testing.assert_allclose(scanner(small).grid, H.sliding_heatmap(predictor.predict, small, 32, 64, 32, 8).grid,
                               atol=1e-5)


@pytest.mark.slow
def test_dense_resnet_equals_windows_on_a_one_window_photo_and_stays_close_on_larger_ones(tmp_path):
    from crack_tf import models

    keras.utils.set_random_seed(1)
    models.get("resnet50_aspp", input_shape=(64, 64, 3)).save(tmp_path / "r.keras")
    predictor = load_model(str(tmp_path / "r.keras"))
    scorer = D.DenseScorer(predictor, window=128, stride=64)
    one = crack_photo(128, 128, seed=3)[0]
    np.testing.assert_allclose(scorer.heatmap(one).grid, H.sliding_heatmap(predictor.predict, one, 64).grid,
                               atol=1e-4)
    photo = crack_photo(384, 512, seed=3)[0]
    d = scorer.heatmap(photo)
    tiled = D.DenseScorer(predictor, window=128, stride=64, max_tile=8 * 32, margin_cells=2).heatmap(photo)
    w = H.sliding_heatmap(predictor.predict, photo, 64, 128, 64, 16, starts=(d.ys, d.xs))
    assert d.grid.shape == w.grid.shape == tiled.grid.shape == (5, 7)
    assert not np.allclose(d.grid, w.grid, atol=1e-4)  # context: the border cells see the photo around them
    assert np.abs(tiled.grid - d.grid).max() < np.abs(w.grid - d.grid).max() + 0.05


def test_stride_is_rounded_down_to_whole_cells(tmp_path):
    patch_model(224).save(tmp_path / "p224.keras")
    predictor = load_model(str(tmp_path / "p224.keras"))
    cases = {64: (3, 54.857), 73: (3, 54.857), 74: (4, 73.143), 10: (1, 18.286), 128: (7, 128.0)}
    for stride, (cells, px) in cases.items():
        scorer = D.DenseScorer(predictor, window=128, stride=stride)
        assert (scorer.stride_cells, round(scorer.stride_px, 3)) == (cells, px), stride
    note = make_scanner(predictor, "dense", 128, 64).note
    assert "every 3 cells = 54.9 px" in note and "(--stride=64)" in note
    hm = D.DenseScorer(predictor, window=128, stride=64).heatmap(crack_photo(300, 1000)[0])
    assert hm.ys[-1] == 300 - 128 and hm.xs[-1] == 1000 - 128  # the last windows end at the border
    assert set(np.diff(hm.xs[:-1])) <= {54, 55}


def test_axis_plan_gives_every_window_a_tile_with_its_margin():
    for n, max_tile, cells, stride, margin in ((224, 128, 7, 3, 4), (328, 64, 7, 2, 4), (30, 30, 7, 1, 4),
                                               (100, 20, 2, 1, 3), (57, 16, 7, 3, 2)):
        length, starts, origins, owner = D.axis_plan(n, max_tile, cells, stride, margin)
        assert length <= max_tile and starts[0] == 0 and starts[-1] + length == n
        assert list(origins) == list(H.window_starts(n, cells, stride))
        t = starts[owner]
        assert ((origins >= t) & (origins + cells <= t + length)).all()  # inside its tile
        slack = np.minimum(origins - t, t + length - cells - origins)
        reachable = np.minimum(np.minimum(origins, n - cells - origins), margin)
        assert (slack >= reachable - 1).all()  # the margin, less at most one cell of start rounding
    with pytest.raises(ValueError, match="cannot hold"):
        D.axis_plan(100, 10, 7, 1, 4)


def test_mode_choice_and_models_dense_cannot_run(tmp_path):
    inputs = keras.Input((32, 32, 3))
    flat = keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(flat)).save(tmp_path / "flat.keras")
    predictor = load_model(str(tmp_path / "flat.keras"))
    assert "global average pooling" in D.unsupported(predictor.model)
    auto = make_scanner(predictor, "auto", 64, 32)
    assert auto.mode == "windows" and "dense not possible" in auto.note and "with NumPy" in auto.note
    with pytest.raises(ValueError, match="--mode=dense: the model does not end in global average pooling"):
        make_scanner(predictor, "dense", 64, 32)
    assert D.unsupported(None).startswith("a SavedModel")
    darkness_model(32).save(tmp_path / "d.keras")
    assert make_scanner(load_model(str(tmp_path / "d.keras")), "windows", 64, 32).mode == "windows"
    with pytest.raises(ValueError, match="--mode="):
        make_scanner(predictor, "fast", 64, 32)


def test_device_windows_equal_the_numpy_windows_on_this_backend():
    photo, _ = crack_photo(230, 310, seed=5)
    ys, xs = H.window_starts(230, 64, 20), H.window_starts(310, 64, 20)
    for size in (40, 100, 64):  # down, up, none
        host = list(H._windows(photo, *H.grid_origins(ys, xs), 64, size, 7))
        device = list(window_batches(photo, *H.grid_origins(ys, xs), 64, size, 7))
        assert [n for _, n in host] == [n for _, n in device]
        for (a, n), (b, _) in zip(host, device):
            diff = np.abs(a[:n].astype(np.int16) - keras.ops.convert_to_numpy(b)[:n])
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, size


_JAX_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    sys.path.insert(0, sys.argv[1])
    from crack_tf.inspection import heatmap as H
    from crack_tf.inspection.device_windows import window_batches
    from crack_tf.inspection.photo_scan import make_scanner
    from crack_tf.predictor import load_model
    from tests.test_heatmap import crack_photo
    photo, _ = crack_photo(230, 310, seed=5)
    ys, xs = H.window_starts(230, 128, 40), H.window_starts(310, 128, 40)
    host = np.concatenate([b[:n] for b, n in H._windows(photo, *H.grid_origins(ys, xs), 128, 64, 16)])
    device = np.concatenate([np.asarray(b)[:n] for b, n in window_batches(photo, *H.grid_origins(ys, xs), 128, 64, 16)])
    predictor = load_model(sys.argv[2], "d4")
    windows = make_scanner(predictor, "windows", 128, 64, 16)
    dense = make_scanner(predictor, "dense", 128, 64)
    p = crack_photo(448, 640, seed=2)[0]
    d, w = dense(p), windows(p)
    print(json.dumps({"backend": keras.backend.backend(), "pixels": float(np.abs(host - device.astype(np.int16)).max()),
                      "notes": [windows.note, dense.note], "dense_vs_windows": float(np.abs(d.grid - w.grid).max()),
                      "grid": w.grid.tolist()}))
""")


@pytest.mark.slow
def test_jax_device_windows_and_dense_match_the_numpy_path(patch_predictor, tmp_path):
    pytest.importorskip("jax")
    script = tmp_path / "jax_windows.py"
    script.write_text(_JAX_SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, str(script), REPO, str(patch_predictor)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["backend"] == "jax" and out["pixels"] <= 1
    assert "on the device" in out["notes"][0] and out["notes"][1].startswith("dense:")
    assert out["dense_vs_windows"] < 1e-5
    reference = H.sliding_heatmap(load_model(str(patch_predictor), "d4").predict, crack_photo(448, 640, seed=2)[0],
                                  64, 128, 64, 16)
    # JAX device == TF NumPy, up to float32 rounding of two backends' convolutions (1.0e-5 seen on a 2-core CPU)
    np.testing.assert_allclose(np.array(out["grid"]), reference.grid, atol=5e-5)


def test_read_ahead_keeps_the_order_names_bad_files_and_stays_bounded(tmp_path):
    from crack_tf.inspection.scan import iter_images, read_ahead

    for i in range(6):
        Image.fromarray(np.full((20, 30 + i, 3), 10 * i, np.uint8)).save(tmp_path / f"a{i}.png")
    (tmp_path / "b_broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "c_notes.txt").write_text("x")
    pulled = []

    def items():
        for item in iter_images([str(tmp_path), str(tmp_path / "missing.png")]):
            pulled.append(item[0])
            yield item

    stream = read_ahead(items(), workers=2, depth=3)
    first = next(stream)
    assert first[0].endswith("a0.png") and first[1].shape == (20, 30, 3) and first[2] is None
    assert len(pulled) <= 4  # never more than depth + 1 files read ahead
    rest = list(stream)
    assert [os.path.basename(p) for p, _, _ in rest] == ["a1.png", "a2.png", "a3.png", "a4.png", "a5.png",
                                                        "b_broken.jpg", "c_notes.txt", "missing.png"]
    assert [im.shape[1] for _, im, _ in rest[:5]] == [31, 32, 33, 34, 35]
    errors = {os.path.basename(p): str(e) for p, _, e in rest if e is not None}
    assert "cannot read this photo" in errors["b_broken.jpg"] and "not an image file" in errors["c_notes.txt"]
    assert "no such file" in errors["missing.png"]


def test_progress_lines_with_rate_and_eta():
    assert (eta_text(42), eta_text(185), eta_text(3725)) == ("42s", "3m05s", "1h02m")
    out = io.StringIO()  # not a terminal: whole lines, every log_every seconds and at the end
    with Progress(10, "predict", stream=out, log_every=0.0) as bar:
        bar._start -= 4.0  # 4 s ago
        bar.update(2)
        bar.update(8)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and lines[0].startswith("predict [######")
    assert "2/10 (0.50/s, ETA 16s)" in lines[0] and lines[-1].endswith("10/10 (2.50/s)")


@pytest.mark.slow
def test_predict_mode_flag_dense_and_windows_give_the_same_rows(tmp_path):
    darkness_model(32).save(tmp_path / "d.keras")
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(tmp_path / "flat.keras")
    photo, _ = crack_photo(seed=7)
    Image.fromarray(photo).save(tmp_path / "p.png")
    rows = {}
    for mode in ("dense", "windows"):
        done = subprocess.run([sys.executable, "-m", "crack_tf.predict", f"--model={tmp_path / 'd.keras'}",
                               f"--mode={mode}", "--window=64", "--stride=32", f"--jsonl={tmp_path / mode}.jsonl",
                               str(tmp_path / "p.png")], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"; {mode}:" in next(line for line in done.stderr.splitlines() if line.startswith("predict:"))
        rows[mode] = json.loads(open(tmp_path / f"{mode}.jsonl").read())
    assert rows["dense"]["windows"] == rows["windows"]["windows"] == 11 * 15
    assert abs(rows["dense"]["crack_probability"] - rows["windows"]["crack_probability"]) < 1e-5
    corners = [[(b["x0"], b["y0"], b["x1"], b["y1"]) for b in rows[m]["box_list"]] for m in ("dense", "windows")]
    assert corners[0] == corners[1] and len(corners[0]) == 1 and rows["dense"]["seconds"] > 0
    done = subprocess.run([sys.executable, "-m", "crack_tf.predict", f"--model={tmp_path / 'flat.keras'}",
                           "--mode=dense", "--window=64", f"--csv={tmp_path / 'x.csv'}", str(tmp_path / "p.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: --mode=dense: the model")
