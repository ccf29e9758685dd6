"""tools/pretrain.py: batches, NT-Xent, a JAX run without TensorFlow whose backbone --weights loads exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from tests.tool_loader import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pt = load_tool("pretrain")


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (200, 240, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    return [str(folder)]


def test_batches_are_deterministic_and_labelled_per_mode(photos):
    tiles, labels = pt.synthetic_pool(6, 40, seed=1, workers=1)
    assert tiles.shape == (6, 40, 40, 3) and list(labels) == [0, 1, 0, 1, 0, 1]
    x, y = pt.make_batch("synthetic", 3, 5, 32, 0, tiles=tiles, labels=labels)
    x2, y2 = pt.make_batch("synthetic", 3, 5, 32, 0, tiles=tiles, labels=labels)
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.uint8 and np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, pt.make_batch("synthetic", 4, 5, 32, 0, tiles=tiles, labels=labels)[0])
    imgs = pt.load_photos(photos)
    x, y = pt.make_batch("rotation", 0, 8, 32, 0, photos=imgs, crop=64)
    assert x.shape == (8, 32, 32, 3) and set(y.tolist()) <= {0, 1, 2, 3}
    # The label is the rotation: undoing it gives back a crop of some photo (same pixels, same order).
    rng = np.random.default_rng([0, 0])
    rng.integers(len(imgs), size=8), rng.integers(4, size=8)
    crop0 = pt._crop(imgs[int(np.random.default_rng([0, 0]).integers(len(imgs), size=8)[0])], 64, rng, 32)
    assert np.array_equal(np.rot90(x[0], -int(y[0])), crop0)
    x, y = pt.make_batch("simclr", 0, 3, 32, 0, photos=imgs, crop=64)
    assert x.shape == (6, 32, 32, 3) and y.shape == (6,)


def test_nt_xent_rewards_matching_views():
    loss = pt.nt_xent(0.2)
    z = np.eye(8, 16, dtype=np.float32)[:4]
    matched = np.concatenate([z, z])  # view 2 == view 1, pairs orthogonal to each other
    shuffled = np.concatenate([z, z[[1, 2, 3, 0]]])
    low = float(keras.ops.convert_to_numpy(loss(None, matched)))
    high = float(keras.ops.convert_to_numpy(loss(None, shuffled)))
    # Positive similarity 1/0.2 = 5 against 6 orthogonal negatives (0); shuffled: the positive is 0, one negative 5.
    assert low == pytest.approx(np.log(1 + 6 * np.exp(-5)), rel=1e-4)
    assert high == pytest.approx(np.log(np.exp(5) + 6), rel=1e-4)
    uniform = float(keras.ops.convert_to_numpy(loss(None, np.ones((8, 16), np.float32))))
    assert uniform == pytest.approx(np.log(7), rel=1e-4)  # all similarities equal: log(2B - 1)


def test_bad_output_name_and_missing_photos(tmp_path):
    with pytest.raises(ValueError, match="weights.h5"):
        pt.pretrain("synthetic", str(tmp_path / "x.h5"))
    with pytest.raises(ValueError, match="--photos"):
        pt.load_photos([str(tmp_path)])


def _backbone_layers(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Weights of the nested ResNet50 backbone, by layer name."""
    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in inner.layers if layer.weights}


@pytest.mark.slow
def test_jax_pretraining_without_tensorflow_loads_as_backbone_weights(tmp_path, photos):
    out, full = tmp_path / "syn.weights.h5", tmp_path / "syn.keras"
    argv = ["pretrain.py", "--mode=synthetic", "--steps=2", "--log_every=1", "--batch_size=4", "--image_size=32",
            "--num_tiles=8", f"--output={out}", f"--save_model={full}"]
    code = ("import sys, runpy; sys.modules['tensorflow'] = None\n"
            "from absl import app\n"
            f"tool = runpy.run_path({os.path.join(REPO, 'tools', 'pretrain.py')!r}, run_name='pretrain_tool')\n"
            "tool['define_flags']()\n"
            "try:\n"
            f"    app.run(tool['main'], argv={argv!r})\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            # The self-supervised contrastive path (custom batch-wide loss inside fit) in the same process.
            f"tool['pretrain']('simclr', {str(tmp_path / 'sim.weights.h5')!r}, image_size=32, steps=1, "
            f"batch_size=3, log_every=1, photos={photos!r}, crop=48)\n"
            "assert sys.modules['tensorflow'] is None\n")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "summary: synthetic pretraining, 2 steps" in done.stdout
    record = json.loads((tmp_path / "syn.weights.h5.json").read_text())
    assert record["backend"] == "jax" and len(record["history"]["loss"]) == 2
    simclr = json.loads((tmp_path / "sim.weights.h5.json").read_text())
    assert (tmp_path / "sim.weights.h5").is_file() and np.isfinite(simclr["history"]["loss"][0])

    import crack_tf.models

    trained = _backbone_layers(keras.saving.load_model(full, compile=False))
    fresh = _backbone_layers(crack_tf.models.get("resnet50_aspp", input_shape=(32, 32, 3)))
    loaded = _backbone_layers(crack_tf.models.get("resnet50_aspp", weights=str(out), input_shape=(32, 32, 3)))
    assert len(trained) == 106  # every ResNet50 layer with weights (53 conv + 53 BN)
    for name, weights in trained.items():
        assert len(loaded[name]) == len(weights)
        for a, b in zip(loaded[name], weights):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.array_equal(fresh["conv1_conv"][0], trained["conv1_conv"][0])
    # BatchNorm moving statistics were learned in pretraining and carried over too.
    assert not np.allclose(trained["conv1_bn"][3], 1.0) and np.array_equal(loaded["conv1_bn"][3], trained["conv1_bn"][3])


@pytest.mark.slow
def test_crack_pretraining_on_photo_sources_gives_loadable_backbone_weights(tmp_path):
    from crack_tf import models
    from crack_tf.data.crops import crop_label
    from tests.photo_data import write_source

    write_source(tmp_path / "src", {"train": 3, "val": 1})
    sampler = pt.crack_sampler("src", str(tmp_path), 32, (16, 48), 20, seed=0, crops=64)
    x, y = pt.make_batch("crack", 1, 8, 32, 0, sampler=sampler)
    assert x.shape == (8, 32, 32, 3) and set(y.tolist()) <= {0, 1}
    # Labels are the crop rule on the source's train masks (the trainer's photos source).
    for index in range(8):
        label, _, (i, top, left, side), _ = sampler.draw(0, 8 + index)
        photo = sampler.sources[0].photos[i]
        assert crop_label(photo, top, left, side, sampler.options.min_pixels(side), 1.0) == label == y[index]
    out = tmp_path / "crack.weights.h5"
    record = pt.pretrain("crack", str(out), image_size=32, steps=2, batch_size=4, log_every=1, data_dir="src",
                         data_root=str(tmp_path), crop_side=(16, 48), min_crack_pixels=20)
    assert record["mode"] == "crack" and record["steps"] == 2 and os.path.isfile(out)
    model = models.get("resnet50_aspp", weights=str(out), input_shape=(32, 32, 3))  # --weights= reads it
    assert model.count_params() > 0
