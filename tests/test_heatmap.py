"""crack_tf.inspection.heatmap: sliding windows on a drawn crack, bounded memory, pixel metrics, the heatmap command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import keras
import numpy as np
import pytest
from PIL import Image, ImageDraw

from crack_tf.evaluation import pixels as P
from crack_tf.inspection import heatmap as H

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def darkness_model(size: int) -> keras.Model:
    """Fixed (untrained) crack detector: crack logit = 10 * mean(relu(100 - gray)) - 5 over the window."""
    inputs = keras.Input((size, size, 3))
    dark = keras.layers.Conv2D(1, 1, activation="relu", name="dark")(inputs)
    mean = keras.layers.GlobalAveragePooling2D()(dark)
    logits = keras.layers.Dense(2, name="logits")(mean)
    model = keras.Model(inputs, logits)
    model.get_layer("dark").set_weights([np.full((1, 1, 3, 1), -1 / 3, np.float32), np.array([100.0], np.float32)])
    model.get_layer("logits").set_weights([np.array([[0.0, 10.0]], np.float32), np.array([0.0, -5.0], np.float32)])
    return model


def predictor(model: keras.Model):
    def predict(images):
        logits = keras.ops.convert_to_numpy(model.predict_on_batch(images.astype("float32")))
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e[:, 1] / e.sum(1)

    return predict


def crack_photo(h: int = 384, w: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grey noisy concrete with a dark polyline crack; returns (photo, crack mask)."""
    rng = np.random.default_rng(seed)
    photo = np.clip(150 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    mask_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask_img).line([(300, 60), (330, 160), (310, 260)], fill=255, width=3)
    mask = np.asarray(mask_img) > 0
    photo[mask] = 30
    return photo, mask


def test_map_maximum_lies_on_the_drawn_crack():
    photo, mask = crack_photo()
    hm = H.sliding_heatmap(predictor(darkness_model(32)), photo, 32, window=64, stride=32, batch=7)
    assert hm.grid.shape == (len(H.window_starts(384, 64, 32)), len(H.window_starts(512, 64, 32))) == (11, 15)
    pmap = hm.pixel_map()
    assert pmap.shape == (384, 512)
    assert pmap[mask].max() == pytest.approx(pmap.max(), abs=1e-6) and pmap.max() > 0.9
    far = ~P._dilate(mask, 64)
    assert pmap[far].max() < 0.01 and pmap[mask].mean() > 0.5
    boxes = H.crack_boxes(hm, 0.5)
    assert len(boxes) == 1
    ys, xs = np.nonzero(mask)
    b = boxes[0]
    assert b["x0"] <= xs.min() and b["x1"] > xs.max() and b["y0"] <= ys.min() and b["y1"] > ys.max()
    assert b["x1"] - b["x0"] < 200 and b["y1"] - b["y0"] < 330  # localised, not the whole photo


def test_pixel_map_file_matches_and_small_photos_are_padded(tmp_path):
    photo, _ = crack_photo(100, 90)
    hm = H.sliding_heatmap(predictor(darkness_model(32)), photo, 32, window=128, stride=64, batch=4)
    assert hm.grid.shape == (1, 1)
    H.write_pixel_map(hm, str(tmp_path / "m.npy"), band=7)
    loaded = np.load(tmp_path / "m.npy")
    assert loaded.dtype == np.float16 and loaded.shape == (100, 90)
    np.testing.assert_allclose(loaded, hm.pixel_map(), atol=1e-3)
    with pytest.raises(ValueError, match="--stride"):
        H.sliding_heatmap(lambda x: x, photo, 32, window=64, stride=0)


@pytest.mark.parametrize("height, width, window, stride, fractional", [
    (4096, 4096, 128, 64, False), (517, 300, 128, 55, False), (100, 90, 128, 64, False), (700, 640, 128, 54.9, True)])
def test_share_above_equals_the_pixel_map_count(height, width, window, stride, fractional):
    rng = np.random.default_rng(height)

    def starts(length):
        if fractional:  # dense mode's whole cells of 18.3 px, as floats
            return np.arange(0, max(length - window, 0) + 1e-9, stride)
        return H.window_starts(length, window, int(stride))

    ys, xs = starts(height), starts(width)
    grid = rng.random((len(ys), len(xs))).astype(np.float32)
    heatmap = H.Heatmap(grid, ys, xs, window, height, width, 0.0)
    pixels = heatmap.pixel_map()
    for threshold in (0.2, 0.5, 0.77, float(rng.random())):
        assert heatmap.share_above(threshold) == pytest.approx((pixels > threshold).mean(), abs=1e-12)
    assert heatmap.share_above(1.0) == 0.0 and heatmap.share_above(-1.0) == 1.0


def test_pixel_metrics_strict_tolerant_and_joints():
    mask = np.zeros((100, 100), np.uint8)
    mask[50, 10:90] = 255  # an 80-px crack line
    mask[10, :] = 204  # a planking joint
    shifted = np.zeros((100, 100), np.float32)
    shifted[55, 10:90] = 1.0  # found 5 px off the label
    m = P.pixel_metrics(shifted, mask, 0.5, tolerance=8)
    assert m["iou"] == 0 and m["f1"] == 0
    assert m["tolerant_recall"] == m["tolerant_precision"] == m["tolerant_f1"] == m["tolerant_iou"] == 1.0
    assert P.pixel_metrics(shifted, mask, 0.5, tolerance=4)["tolerant_f1"] == 0
    exact = mask == 255
    both = np.where(exact, 1.0, 0.0).astype(np.float32)
    both[10, :50] = 1.0  # half of the joint predicted as crack
    m = P.pixel_metrics(both, np.stack([mask] * 3, -1), 0.5, tolerance=0)
    assert m["tp"] == 80 and m["fp"] == 50 and m["fn"] == 0
    assert m["iou"] == pytest.approx(80 / 130) and m["f1"] == pytest.approx(160 / 210)
    assert m["joint_positive_rate"] == pytest.approx(0.5)
    pooled = P.pool_metrics([m, m])
    assert pooled["tp"] == 160 and pooled["iou"] == pytest.approx(m["iou"])


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1])


def test_4000px_photo_streams_windows_in_bounded_memory():
    # 14,884 windows of 128x128x3: materialising them would take ~730 MB.
    photo = np.full((4000, 4000, 3), 150, np.uint8)
    photo[1000:3000, 2000:2003] = 20
    predict = predictor(darkness_model(128))
    predict(np.zeros((64, 128, 128, 3), np.uint8))  # warm up (graph tracing) outside the measurement
    if _reset_peak_rss():
        before = _rss_kb("VmRSS")
        hm = H.sliding_heatmap(predict, photo, 128, window=128, stride=32, batch=64, progress=False)
        growth_mb = (_rss_kb("VmHWM") - before) / 1024
    else:  # no /proc: count NumPy allocations instead
        tracemalloc.start()
        hm = H.sliding_heatmap(predict, photo, 128, window=128, stride=32, batch=64, progress=False)
        growth_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    assert hm.grid.shape == (122, 122)
    assert growth_mb < 300, f"peak memory grew by {growth_mb:.0f} MB"
    cols = hm.xs[hm.grid.max(0) > 0.5]
    assert cols.min() >= 2003 - 128 and cols.max() <= 2000  # only windows over the line fire


@pytest.mark.slow
def test_cli_writes_maps_overlay_and_boxes(tmp_path):
    model = darkness_model(32)
    model.save(tmp_path / "m.keras")
    photo, _ = crack_photo()
    Image.fromarray(photo).save(tmp_path / "p.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    cmd = [sys.executable, "-m", "crack_tf.heatmap", f"--model={tmp_path / 'm.keras'}", "--window=64", "--stride=32",
           f"--output_dir={tmp_path / 'out'}", "--image_size=32", str(tmp_path / "p.png")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "summary: 1 photos" in done.stdout and "s/MP" in done.stdout
    out = tmp_path / "out"
    assert np.load(out / "p_heatmap.npy").shape == (384, 512) and np.load(out / "p_grid.npy").shape == (11, 15)
    assert Image.open(out / "p_overlay.png").size == (512, 384)
    boxes = json.loads((out / "p_boxes.geojson").read_text())
    assert len(boxes["features"]) == 1 and boxes["features"][0]["geometry"]["type"] == "Polygon"
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "bad.jpg")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "bad.jpg: cannot read this photo" in bad.stderr


@pytest.mark.slow
def test_heatmap_eval_tool_on_photos_with_masks(tmp_path):
    model = darkness_model(32)
    model.save(tmp_path / "m.keras")
    for sub in ("images", "masks"):
        (tmp_path / "val" / sub).mkdir(parents=True)
    for i in range(2):
        photo, crack = crack_photo(seed=i)
        mask = np.where(crack, 255, 0).astype(np.uint8)
        mask[350, 20:200] = 204  # a planking joint, drawn faintly in the photo (not dark enough to fire)
        photo[350, 20:200] = 120
        Image.fromarray(photo).save(tmp_path / "val" / "images" / f"p{i}.jpg", quality=95)
        Image.fromarray(np.stack([mask] * 3 + [np.full_like(mask, 255)], -1)).save(tmp_path / "val" / "masks" / f"p{i}.png")
    cmd = [sys.executable, os.path.join(REPO, "tools", "heatmap_eval.py"), f"--model={tmp_path / 'm.keras'}",
           f"--data={tmp_path / 'val'}", "--window=64", "--stride=32", "--image_size=32",
           f"--json_out={tmp_path / 'e.json'}", f"--figure={tmp_path / 'maps.png'}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "summary: 2 photos" in done.stdout and "s/MP" in done.stdout
    report = json.loads((tmp_path / "e.json").read_text())
    pooled = report["pooled"]
    assert report["tolerance"] == 32 and len(report["photos"]) == 2
    assert pooled["tolerant_recall"] == 1.0 and pooled["joint_positive_rate"] == 0.0
    assert pooled["crack"] == 2 * int(crack.sum()) and 0 < pooled["iou"] < 0.2  # a window map vs 3-px lines
    assert pooled["tolerant_precision"] > 0.3
    with Image.open(tmp_path / "maps.png") as fig:  # two panels side by side
        assert fig.width > fig.height > 100


def test_batched_prefetched_heatmap_equals_window_by_window_scoring():
    """Parity: the streamed, padded, prefetched batches give each window's own score."""
    model = darkness_model(32)
    predict = predictor(model)
    photo, _ = crack_photo(200, 300, seed=4)
    hm = H.sliding_heatmap(predict, photo, 32, window=64, stride=24, batch=5)  # 5 does not divide the windows
    ys, xs = H.window_starts(200, 64, 24), H.window_starts(300, 64, 24)
    from crack_tf.data.image_np import resize_bilinear_np

    brute = np.array([[predict(resize_bilinear_np(photo[y : y + 64, x : x + 64], 32, 32)[None])[0] for x in xs]
                      for y in ys])
    np.testing.assert_allclose(hm.grid, brute, atol=1e-6)
    seen = []
    H.sliding_heatmap(lambda b: seen.append(b.shape) or predict(b), photo, 32, window=64, stride=24, batch=5)
    assert set(seen) == {(5, 32, 32, 3)}  # one shape: a compiled model never recompiles


def test_threaded_window_resizing_gives_the_same_batches():
    """Resizing a batch's windows in several threads changes nothing but the speed."""
    import threading

    photo, _ = crack_photo(230, 310, seed=5)
    ys, xs = H.window_starts(230, 64, 20), H.window_starts(310, 64, 20)
    one = list(H._windows(photo, *H.grid_origins(ys, xs), 64, 40, 7))
    names = set()
    real_fill = H.resize_bilinear_np

    def spy(*args):
        names.add(threading.current_thread().name)
        return real_fill(*args)

    H.resize_bilinear_np = spy
    try:
        three = [(b.copy(), n) for b, n in H._windows(photo, *H.grid_origins(ys, xs), 64, 40, 7, workers=3)]
    finally:
        H.resize_bilinear_np = real_fill
    assert names and all(n.startswith("ThreadPoolExecutor") for n in names)  # cut in the pool's threads
    assert [n for _, n in one] == [n for _, n in three] and sum(n for _, n in one) == len(ys) * len(xs)
    for (a, _), (b, _) in zip(one, three):
        np.testing.assert_array_equal(a, b)
