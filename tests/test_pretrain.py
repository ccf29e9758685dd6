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

from crack_tf.data.crops import CropOptions
from crack_tf.data.unlabelled import ViewSampler
from tests.fit_steps import steps_fit_sees
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
    imgs = pt.unlabelled_photos(photos, "", "")
    x, y = pt.make_batch("rotation", 0, 8, 32, 0, photos=imgs, crop=64)
    assert x.shape == (8, 32, 32, 3) and set(y.tolist()) <= {0, 1, 2, 3}
    # The label is the rotation: undoing it gives back a crop of some photo (same pixels, same order).
    rng = np.random.default_rng([0, 0])
    rng.integers(len(imgs), size=8), rng.integers(4, size=8)
    crop0 = pt._crop(imgs[int(np.random.default_rng([0, 0]).integers(len(imgs), size=8)[0])], 64, rng, 32)
    assert np.array_equal(np.rot90(x[0], -int(y[0])), crop0)
    sampler = ViewSampler(imgs, CropOptions(image_size=32, **pt.augmentation("simclr")), seed=0, region=96)
    x, y = pt.make_batch("simclr", 0, 3, 32, 0, sampler=sampler)
    assert x.shape == (6, 32, 32, 3) and y.shape == (6,) and not y.any()


@pytest.mark.parametrize("queue", [{"workers": 1}, {"workers": 3}, {"workers": 4, "use_multiprocessing": True}])
def test_fit_trains_on_one_batch_per_step_in_order_whatever_the_workers(queue):
    """Batches: batch ``skip + k`` at step k (``skip + k + 1`` on JAX, whose fit reads one batch first
    to build the optimizer), in order, across Keras epochs. The finite version with an epoch counter gave a shuffled mix of two
    epochs' indices that changed with the worker count (two backbones of one seed on the GPU)."""
    def make(i):
        return np.full((2, 2, 2, 1), i, np.float32), np.zeros(2, np.int32)

    seen = steps_fit_sees(pt.Batches(make, 5, **queue), (2, 2, 1), epochs=3)
    first = seen[0]
    assert first == (keras.backend.backend() == "jax") and seen == list(range(first, first + 15)), seen
    resumed = steps_fit_sees(pt.Batches(make, 5, skip=10, **queue), (2, 2, 1), epochs=1)
    assert resumed == list(range(10 + first, 15 + first)), resumed  # a run resumed at step 10 goes on


def test_simclr_views_pair_up_and_read_only_train_photos(tmp_path):
    # Photos of one flat level each: without colour augmentation a view's level names its photo.
    levels = [40, 90, 140, 190, 240]
    sampler = ViewSampler([np.full((120, 100, 3), v, np.uint8) for v in levels],
                          CropOptions(image_size=24, brightness=0.0, contrast=0.0), seed=3, region=64)
    x, y = sampler.batch(2, 16)
    first, second = x[:8, 0, 0, 0], x[8:, 0, 0, 0]
    np.testing.assert_array_equal(first, second)  # both views of pair j come from one photo
    assert len(set(first.tolist())) > 2 and set(first.tolist()) <= set(levels)
    np.testing.assert_array_equal(sampler.batch(2, 16)[0], x)
    dataset = pt.CropPyDataset(sampler, 16, skip_batches=2, steps_per_epoch=1)  # the pretraining loader
    np.testing.assert_array_equal(dataset[0][0], x)
    with pytest.raises(ValueError, match="even"):
        sampler.batch(0, 5)
    # The --data_dir sources' train photos only: deepcrack-like (no val/) gives its train fold.
    from crack_tf.data.photos import SourceSpec, list_photos
    from tests.photo_data import write_source

    write_source(tmp_path / "deep", {"train": 10}, size=48)
    write_source(tmp_path / "site", {"train": 2, "val": 2}, size=48, seed=1)
    images = pt.unlabelled_photos([], "deep,site", str(tmp_path))
    folds = [list_photos(SourceSpec(n, str(tmp_path / n)), "train").pairs for n in ("deep", "site")]
    assert len(images) == sum(len(f) for f in folds) < 12


def test_augmentation_defaults_per_mode_and_overrides():
    assert pt.augmentation("crack") == {}  # the trainer's CropOptions defaults: crack pretraining as before
    assert pt.augmentation("crack", {"gamma": 0.3, "hue": None}) == {"gamma": 0.3}
    simclr = pt.augmentation("simclr", {"blur": 0.0})
    assert simclr["grayscale"] == 0.2 and simclr["blur"] == 0.0 and simclr["contrast"] == 0.3


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
    with pytest.raises(ValueError, match="no readable photo"):
        pt.unlabelled_photos([str(tmp_path)], "", "")
    with pytest.raises(FileNotFoundError, match="--init"):
        pt.pretrain("crack", str(tmp_path / "x.weights.h5"), init=str(tmp_path / "none.weights.h5"))


def _backbone_layers(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Weights of the nested ResNet50 backbone, by layer name."""
    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in inner.layers if layer.weights}


@pytest.mark.slow
def test_jax_pretraining_without_tensorflow_loads_as_backbone_weights(tmp_path, photos):
    out, full = tmp_path / "syn.weights.h5", tmp_path / "syn.keras"
    argv = ["pretrain.py", "--mode=synthetic", "--steps=2", "--log_every=1", "--batch_size=4", "--image_size=32",
            "--num_tiles=8", f"--output={out}", f"--save_model={full}", "--deterministic"]
    code = ("import sys, runpy; sys.modules['tensorflow'] = None\n"
            "from absl import app\n"
            f"tool = runpy.run_path({os.path.join(REPO, 'tools', 'pretrain.py')!r}, run_name='pretrain_tool')\n"
            "tool['define_flags']()\n"
            "try:\n"
            f"    app.run(tool['main'], argv={argv!r})\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            # The same seed again: the same backbone (the batches are a function of seed and step).
            f"tool['pretrain']('synthetic', {str(tmp_path / 'again.weights.h5')!r}, image_size=32, steps=2, "
            "batch_size=4, log_every=1, num_tiles=8, deterministic=True)\n"
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
    # --deterministic: XLA's deterministic GPU kernels, set before JAX started, and recorded
    assert record["deterministic"] and "--xla_gpu_deterministic_ops=true" in record["xla_flags"]
    again = json.loads((tmp_path / "again.weights.h5.json").read_text())
    assert again["weights_sha256"] == record["weights_sha256"]  # one seed, one backbone
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
    # The sidecar's digest is that of the backbone weights in the file: two backbones compare by it.
    from crack_tf.training.rundir import weights_digest

    backbone = next(layer for layer in keras.saving.load_model(full, compile=False).layers
                    if isinstance(layer, keras.Model))
    assert record["weights_sha256"] == weights_digest(backbone) != simclr["weights_sha256"]
    # BatchNorm moving statistics were learned in pretraining and carried over too.
    assert not np.allclose(trained["conv1_bn"][3], 1.0) and np.array_equal(loaded["conv1_bn"][3], trained["conv1_bn"][3])


@pytest.mark.slow
def test_crack_pretraining_on_photo_sources_gives_loadable_backbone_weights(tmp_path, monkeypatch):
    from crack_tf import models
    from crack_tf.data.crops import crop_label
    from tests.photo_data import write_source

    # Eager steps: tracing ResNet50's AdamW step as a TF graph took 60 s a run on 2 CPU cores, for the
    # 4 steps of the two runs below (the compiled path: test_jax_pretraining_without_tensorflow_...).
    real_compile = keras.Model.compile
    monkeypatch.setattr(keras.Model, "compile", lambda self, *a, **k: real_compile(self, *a, **{**k, "run_eagerly": True}))

    write_source(tmp_path / "src", {"train": 3, "val": 1})
    sampler = pt.crack_sampler("src", str(tmp_path), 32, (16, 48), 20, seed=0, crops=64)
    x, y = pt.make_batch("crack", 1, 8, 32, 0, sampler=sampler)
    assert x.shape == (8, 32, 32, 3) and set(y.tolist()) <= {0, 1}
    # Labels are the crop rule on the source's train masks (the trainer's photos source).
    for index in range(8):
        label, _, (i, top, left, side), _ = sampler.draw(0, 8 + index)
        photo = sampler.sources[0].photos[i]
        assert crop_label(photo, top, left, side, sampler.options.min_pixels(side), 1.0) == label == y[index]
    # --init: the backbone starts from earlier weights (here a perturbed fresh one); a tiny lr keeps it there.
    _, start = pt.build_pretrainer("simclr", 32)
    kernel = start.get_layer("conv1_conv")
    kernel.set_weights([w + 0.5 for w in kernel.get_weights()])
    init = tmp_path / "simclr.weights.h5"
    start.save_weights(init)
    out = tmp_path / "crack.weights.h5"
    args = dict(image_size=32, steps=3, batch_size=4, log_every=1, data_dir="src", data_root=str(tmp_path),
                crop_side=(16, 48), min_crack_pixels=20, init=str(init), checkpoint_every=1, lr=1e-9,
                augment={"gamma": 0.3, "grayscale": 0.5})
    original, calls = pt.Checkpoints.on_epoch_end, []

    def interrupted(self, epoch, logs=None):  # killed right after the checkpoint of step 2
        original(self, epoch, logs)
        calls.append(epoch)
        if epoch == 1 and len(calls) == 2:
            raise KeyboardInterrupt

    pt.Checkpoints.on_epoch_end = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            pt.pretrain("crack", str(out), **args)
        assert not out.exists() and os.path.isdir(str(out) + ".ckpt")
        with pytest.raises(ValueError, match="other settings .*steps"):
            pt.pretrain("crack", str(out), **{**args, "steps": 4})
        record = pt.pretrain("crack", str(out), **args)  # the same command continues
    finally:
        pt.Checkpoints.on_epoch_end = original
    assert calls == [0, 1, 2] and record["resumed_at_step"] == 2 and len(record["history"]["loss"]) == 3
    assert record["mode"] == "crack" and record["steps"] == 3 and record["init"] == str(init)
    assert record["augment"] == {"gamma": 0.3, "grayscale": 0.5} and not os.path.exists(str(out) + ".ckpt")
    model = models.get("resnet50_aspp", weights=str(out), input_shape=(32, 32, 3))  # --weights= reads it
    trained = _backbone_layers(model)["conv1_conv"][0]
    np.testing.assert_allclose(trained, kernel.get_weights()[0], atol=1e-5)


@pytest.mark.slow
@pytest.mark.shared_data
def test_crack_mode_over_the_three_shared_sources_reads_train_splits_and_joints_as_background(shared_data):
    sampler = pt.crack_sampler("uav75,uavcrack,deepcrack", str(shared_data), 224, (96, 192), 40, seed=0, crops=1000)
    assert [(s.name, s.fold) for s in sampler.sources] == [
        ("uav75", "folder"), ("uavcrack", "folder"), ("deepcrack", "train minus val fold")]
    assert all("/train/" in p.path for s in sampler.sources for p in s.photos)  # never a val photo
    joints = 0
    for index in range(400):
        label, k, (i, y, x, side), _ = sampler.draw(0, index)
        if sampler.sources[k].name != "uav75":
            continue
        photo = sampler.sources[k].photos[i]
        mask = np.asarray(Image.open(photo.path.replace("/images/", "/masks/")[:-4] + ".png"))[..., 0]
        region = mask[y : y + side, x : x + side]
        assert label == int((region == 255).sum() >= sampler.options.min_pixels(side))
        joints += bool(label == 0 and (region == 204).any())  # planking joints (204): background crops
    assert joints > 10

