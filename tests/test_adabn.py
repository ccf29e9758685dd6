"""AdaBN: BatchNorm statistics re-estimated on unlabelled target images (library and command)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from crack_tf.training.adabn import adapt_batchnorm, adapt_to_source, batchnorm_layers, keep_batchnorm
from tests.photo_data import write_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Per-batch sums in float32, pooled in float64: means within 1e-5 of the activations' spread,
# variances within a relative 1e-4 of the float64 statistics.
MEAN_TOL, VAR_RTOL = 1e-5, 1e-4


@keras.saving.register_keras_serializable(package="test_adabn")
class Doubled(keras.layers.Layer):
    """A custom layer with a BatchNormalization inside its own call (like ASPP)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.BatchNormalization(name="inner_bn")

    def build(self, input_shape):
        self.norm.build(input_shape)

    def call(self, inputs, training=None):
        return self.norm(2.0 * inputs, training=training)


def tiny_model(custom: bool = True) -> keras.Model:
    """conv -> bn1 -> relu -> [nested: conv -> bn_nested] -> Doubled(inner_bn) -> pool -> dense
    (``custom=False``: without Doubled, so that another process can load the saved model)."""
    inner_in = keras.Input((8, 8, 4))
    nested = keras.Model(inner_in, keras.layers.BatchNormalization(name="bn_nested")(
        keras.layers.Conv2D(5, 3, padding="same", name="conv_nested")(inner_in)), name="nested")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = nested(x)
    x = Doubled(name="doubled")(x) if custom else x
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(x)))


def _stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64).reshape(-1, a.shape[-1])
    return a.mean(0), a.var(0)


def bn_inputs(model: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Each BatchNorm layer's input at inference, computed layer by layer outside the code under test."""
    bn1_in = model.get_layer("conv1")(images.astype(np.float32))
    nested = model.get_layer("nested")
    nested_in = keras.ops.relu(model.get_layer("bn1")(bn1_in, training=False))
    bn_nested_in = nested.get_layer("conv_nested")(nested_in)
    inner_in = 2.0 * nested.get_layer("bn_nested")(bn_nested_in, training=False)
    return {name: keras.ops.convert_to_numpy(v) for name, v in
            (("bn1", bn1_in), ("bn_nested", bn_nested_in), ("inner_bn", inner_in))}


def _layer(model, name):
    return next(layer for layer in batchnorm_layers(model) if layer.name == name)


@pytest.fixture
def target():
    rng = np.random.default_rng(0)  # a "new site": brighter, lower contrast than anything before
    return np.clip(rng.normal(190, 20, (40, 8, 8, 3)), 0, 255).astype(np.uint8)


def _other_weights(model):
    stats = {id(v) for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)}
    return [np.array(v.numpy()) for v in model.weights if id(v) not in stats]


def test_exact_statistics_are_those_of_each_layers_inputs_and_nothing_else_changes(target):
    model = tiny_model()
    before = _other_weights(model)
    assert {layer.name for layer in batchnorm_layers(model)} == {"bn1", "bn_nested", "inner_bn"}
    assert adapt_batchnorm(model, target, batch_size=16) is model  # 16, 16, 8: unequal batches pooled exactly
    for name, x in bn_inputs(model, target).items():
        mean, var = _stats(x)
        layer = _layer(model, name)
        scale = np.sqrt(var) + 1e-3
        assert np.abs(layer.moving_mean.numpy() - mean).max() <= MEAN_TOL * scale.max(), name
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=VAR_RTOL, err_msg=name)
    for a, b in zip(_other_weights(model), before):
        np.testing.assert_array_equal(a, b)


def test_batch_method_pools_the_statistics_of_training_mode_inputs(target):
    model = tiny_model()
    adapted = adapt_batchnorm(model, target, batch_size=20, method="batch", copy=True)
    assert np.allclose(_layer(model, "bn1").moving_mean.numpy(), 0)  # copy: the original is untouched
    exact = adapt_batchnorm(model, target, batch_size=20, copy=True)
    # The first layer has no BatchNorm upstream: both methods give its exact input statistics.
    np.testing.assert_allclose(_layer(adapted, "bn1").moving_variance.numpy(),
                               _layer(exact, "bn1").moving_variance.numpy(), rtol=VAR_RTOL)
    # Deeper: inputs when every upstream layer normalises with its own batch's statistics.
    bn1, conv = adapted.get_layer("bn1"), adapted.get_layer("nested").get_layer("conv_nested")
    parts = []
    for batch in (target[:20], target[20:]):
        h = keras.ops.convert_to_numpy(adapted.get_layer("conv1")(batch.astype(np.float32))).astype(np.float64)
        m, v = _stats(h)
        h = (h - m) / np.sqrt(v + bn1.epsilon) * bn1.gamma.numpy() + bn1.beta.numpy()
        parts.append(keras.ops.convert_to_numpy(conv(np.maximum(h, 0).astype(np.float32))))
    mean, var = _stats(np.concatenate(parts))
    layer = _layer(adapted, "bn_nested")
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, atol=1e-4 * np.sqrt(var).max())
    np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-3)


@pytest.mark.parametrize("passes", ["cached", "eager"])
def test_a_target_weight_blends_each_layers_own_statistics_with_its_target_inputs(target, passes):
    """target_weight w: each layer ends at (1 - w) x its statistics before + w x those of its inputs
    on the target at inference, measured with every upstream layer already blended (a fixed point
    checked from outside the code under test); the batch method blends its one-pass statistics."""
    model = tiny_model()
    source = np.random.default_rng(1).integers(0, 120, (24, 8, 8, 3)).astype(np.uint8)
    adapt_batchnorm(model, source, batch_size=8, passes=passes)  # statistics of a "training site" first
    before = {layer.name: (np.asarray(layer.moving_mean, np.float64), np.asarray(layer.moving_variance, np.float64))
              for layer in batchnorm_layers(model)}
    blended = adapt_batchnorm(model, target, batch_size=16, copy=True, passes=passes, target_weight=0.3)
    for name, x in bn_inputs(blended, target).items():
        mean, var = _stats(x)
        layer, (own_mean, own_var) = _layer(blended, name), before[name]
        scale = np.sqrt(0.7 * own_var + 0.3 * var) + 1e-3
        assert np.abs(layer.moving_mean.numpy() - (0.7 * own_mean + 0.3 * mean)).max() <= MEAN_TOL * scale.max(), name
        np.testing.assert_allclose(layer.moving_variance.numpy(), 0.7 * own_var + 0.3 * var, rtol=VAR_RTOL, err_msg=name)
        assert not np.allclose(layer.moving_mean.numpy(), mean, rtol=1e-2), name  # neither the target's alone...
        assert not np.allclose(layer.moving_mean.numpy(), own_mean, rtol=1e-2), name  # ...nor its own
    batch = adapt_batchnorm(model, target, batch_size=16, method="batch", copy=True, passes=passes)
    half = adapt_batchnorm(model, target, batch_size=16, method="batch", copy=True, passes=passes, target_weight=0.5)
    for layer in batchnorm_layers(half):
        own_mean = before[layer.name][0]
        np.testing.assert_allclose(layer.moving_mean.numpy(), 0.5 * own_mean + 0.5 * _layer(batch, layer.name).moving_mean.numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert _layer(model, "bn1").moving_mean.numpy() == pytest.approx(before["bn1"][0])  # copies: model untouched
    for weight in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="target_weight"):
            adapt_batchnorm(model, target, target_weight=weight)


def test_bad_input_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="target images"):
        adapt_batchnorm(model, np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="method"):
        adapt_batchnorm(model, np.zeros((2, 8, 8, 3), np.uint8), method="ema")
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no BatchNormalization"):
        adapt_batchnorm(plain, np.zeros((2, 8, 8, 3), np.uint8))


def test_adapt_to_source_uses_only_the_train_fold_of_a_source_without_val(tmp_path):
    from crack_tf.data.photos import SourceSpec, list_photos

    write_source(tmp_path / "deep", {"train": 10}, size=48)  # no val/: a val fold is held out of train/
    model = tiny_model()
    adapted, record = adapt_to_source(model, "deep", str(tmp_path), crops=24, crop_side=(8, 16), batch_size=8,
                                      image_size=8)
    train = list_photos(SourceSpec("deep", str(tmp_path / "deep")), "train")
    assert 0 < record["photos"] == len(train.pairs) < 10 and record["crops"] == 24 and record["method"] == "exact"
    digests = sorted(hashlib.sha256(open(p, "rb").read()).hexdigest() for p, _ in train.pairs)
    assert record["files_sha256"] == hashlib.sha256("\n".join(digests).encode()).hexdigest()
    assert adapted is not model and np.allclose(_layer(model, "bn1").moving_variance.numpy(), 1)
    assert not np.allclose(_layer(adapted, "bn1").moving_variance.numpy(), 1)
    model.compile(loss="mse")
    x = np.random.default_rng(2).integers(0, 255, (4, 8, 8, 3)).astype(np.float32)
    before = model.predict_on_batch(x)
    with keep_batchnorm(model):  # in place for the block: the compiled model itself, then restored
        same, again = adapt_to_source(model, "deep", str(tmp_path), crops=24, crop_side=(8, 16), batch_size=8,
                                      image_size=8, copy=False)
        assert same is model and again["files_sha256"] == record["files_sha256"]
        np.testing.assert_allclose(model.predict_on_batch(x), adapted.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.predict_on_batch(x), before)


def _saved_model(tmp_path, custom: bool = True):
    from crack_tf.model_meta import write_metadata

    path = str(tmp_path / "m.keras")
    tiny_model(custom).save(path)
    write_metadata(path, {"operating_point": {"threshold": 0.31, "temperature": 1.2, "rule": "f1"}, "image_size": 8})
    photos = tmp_path / "site_b"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(100, 255, (40, 56, 3), dtype=np.uint8)).save(photos / f"f{i}.png")
    (photos / "notes.txt").write_text("not a photo")
    return path, photos


def test_adapt_command_keeps_the_metadata_and_records_the_adaptation(tmp_path):
    from crack_tf.adapt import adapt_file
    from crack_tf.model_meta import read_metadata

    path, photos = _saved_model(tmp_path)
    out = str(tmp_path / "adapted.keras")
    record = adapt_file(path, out, photos=[str(photos)], crops=16, crop_side=(16, 32), batch_size=8)
    meta = read_metadata(out)
    assert meta["operating_point"]["threshold"] == 0.31 and meta["image_size"] == 8
    assert meta["adabn"] == [json.loads(json.dumps(record))]
    assert record["photos"] == 3 and record["crops"] == 16 and record["bn_layers"] == 3 and record["date"][:2] == "20"
    assert record["passes"] == "cached" and record["target_weight"] == 1.0  # the defaults
    original, adapted = (keras.saving.load_model(p, compile=False) for p in (path, out))
    assert not np.allclose(_layer(adapted, "bn1").moving_mean.numpy(), 0)
    for a, b in zip(_other_weights(adapted), _other_weights(original)):
        np.testing.assert_array_equal(a, b)
    again = str(tmp_path / "twice.keras")
    adapt_file(out, again, photos=[str(photos)], crops=8, crop_side=(16, 32))
    assert [r["crops"] for r in read_metadata(again)["adabn"]] == [16, 8]  # appended
    write_source(tmp_path / "src", {"train": 2, "val": 1}, size=48)  # --source: its train photos only
    from_source = adapt_file(path, str(tmp_path / "src.keras"), source="src", data_root=str(tmp_path), crops=8,
                             crop_side=(16, 32))
    assert from_source["inputs"] == "src (train)" and from_source["photos"] == 2
    half = adapt_file(path, str(tmp_path / "half.keras"), photos=[str(photos)], crops=16, crop_side=(16, 32),
                      batch_size=8, target_weight=0.5)  # halfway between the model's statistics and out's
    assert half["target_weight"] == 0.5 and read_metadata(str(tmp_path / "half.keras"))["adabn"][-1] == half
    halfway = keras.saving.load_model(str(tmp_path / "half.keras"), compile=False)
    np.testing.assert_allclose(_layer(halfway, "bn1").moving_mean.numpy(),
                               0.5 * _layer(adapted, "bn1").moving_mean.numpy(), rtol=1e-5)  # bn1: first, own mean 0
    with pytest.raises(ValueError, match="--target_weight=2"):
        adapt_file(path, str(tmp_path / "w.keras"), photos=[str(photos)], target_weight=2)
    for kwargs, message in ((dict(photos=[str(tmp_path / "empty")]), "no readable photo"),
                            (dict(photos=[str(photos)], source="x"), "exactly one of"),
                            (dict(photos=[str(photos)], out_name="a.h5"), "must end in .keras")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        name = kwargs.pop("out_name", "x.keras")
        with pytest.raises(ValueError, match=message):
            adapt_file(path, str(tmp_path / name), **kwargs)


@pytest.mark.slow
def test_adapt_command_line_and_jax_backend(tmp_path):
    path, photos = _saved_model(tmp_path, custom=False)
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, PYTHONPATH=REPO, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "sys.path.insert(0, sys.argv[1]); import tests.test_adabn as t, numpy as np\n"
            "target = np.clip(np.random.default_rng(0).normal(190, 20, (40, 8, 8, 3)), 0, 255).astype(np.uint8)\n"
            "t.test_exact_statistics_are_those_of_each_layers_inputs_and_nothing_else_changes(target)\n"
            "t.test_batch_method_pools_the_statistics_of_training_mode_inputs(target)\n"
            "t.test_compiled_passes_give_the_eager_statistics_for_both_methods(target)\nprint('jax ok')\n")
    done = subprocess.run([sys.executable, "-c", code, REPO], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "jax ok" in done.stdout, done.stderr[-3000:]
    command = [sys.executable, "-m", "crack_tf.adapt", f"--model={path}", "--crops=8", "--crop_side=16,32"]
    bad = subprocess.run([*command, f"--photos={tmp_path / 'empty'}", f"--out={tmp_path / 'a.keras'}"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: no readable photo")
    good = subprocess.run([*command, f"--photos={photos}", f"--out={tmp_path / 'b.keras'}", "--method=batch",
                           "--passes=compiled"], env=env, capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "summary: 2 BatchNormalization layers adapted (batch, compiled passes) on 8 crops of 3 photos" in good.stdout
    from crack_tf.model_meta import read_metadata

    assert read_metadata(str(tmp_path / "b.keras"))["adabn"][-1]["passes"] == "compiled"


@pytest.mark.slow
def test_resnet50_aspp_is_adapted_through_its_nested_backbone_and_aspp():
    import crack_tf.models

    model = crack_tf.models.get("resnet50_aspp", input_shape=(32, 32, 3))
    images = np.random.default_rng(0).integers(120, 255, (8, 32, 32, 3)).astype(np.uint8)
    adapted = adapt_batchnorm(model, images, batch_size=8, copy=True)
    aspp = [layer for layer in batchnorm_layers(adapted) if layer.name.startswith("bn_r")]
    assert len(batchnorm_layers(adapted)) == 56 and len(aspp) == 3
    assert all(not np.allclose(layer.moving_variance.numpy(), 1) for layer in aspp)
    assert np.allclose(np.asarray(model.get_layer(index=-1).get_weights()[0]),
                       np.asarray(adapted.get_layer(index=-1).get_weights()[0]))
    # The deepest BatchNorm sees inputs with exactly its statistics, every layer upstream adapted:
    # eager passes as an eager pass computes them, compiled passes as compiled inference (predict)
    # does. (Eager and compiled inference differ by ~3e-4 of the spread there, 55 layers deep.)
    compiled = adapt_batchnorm(model, images, batch_size=8, copy=True, passes="compiled")
    for net, tol, run in ((adapted, (1e-4, 1e-3), lambda probe, x: probe(x)),
                          (compiled, (1e-5, 1e-5), lambda probe, x: probe.predict_on_batch(x))):
        backbone = next(layer for layer in net.layers if isinstance(layer, keras.Model))
        probe = keras.Model(backbone.input, backbone.get_layer("conv5_block3_3_bn").input)
        x = run(probe, keras.ops.convert_to_numpy(net.get_layer("caffe_preprocess")(images.astype(np.float32))))
        mean, var = _stats(keras.ops.convert_to_numpy(x))
        layer = backbone.get_layer("conv5_block3_3_bn")
        assert np.abs(layer.moving_mean.numpy() - mean).max() <= tol[0] * np.sqrt(var).max()
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=tol[1])


def test_compiled_passes_give_the_eager_statistics_for_both_methods(target):
    """passes="compiled" (one probe model, predict_on_batch) re-estimates what the eager passes do,
    within the float32 sums' rounding, and leaves the other weights alone."""
    model = tiny_model()
    for method in ("exact", "batch"):
        eager = adapt_batchnorm(model, target, batch_size=16, method=method, copy=True)
        compiled = adapt_batchnorm(model, target, batch_size=16, method=method, copy=True, passes="compiled")
        for a, b in zip(batchnorm_layers(eager), batchnorm_layers(compiled)):
            spread = np.sqrt(np.asarray(a.moving_variance))
            assert np.abs(np.asarray(a.moving_mean) - np.asarray(b.moving_mean)).max() <= MEAN_TOL * spread.max()
            np.testing.assert_allclose(np.asarray(b.moving_variance), np.asarray(a.moving_variance), rtol=VAR_RTOL)
        for a, b in zip(eager.get_layer("logits").get_weights(), compiled.get_layer("logits").get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="passes='jit'"):
        adapt_batchnorm(model, target, passes="jit")


def test_bench_adabn_times_every_pass_kind_and_how_far_apart(tmp_path):
    """tools/bench_adabn.py: seconds per method, pass kind and attempt, and the statistics' distance."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import bench_adabn

    out = tmp_path / "bench.json"
    report = bench_adabn.main(["--image_size=64", "--images=8", "--batch_size=4", "--methods=batch", "--repeat=2",
                               f"--output={out}"])
    assert [(r["passes"], r["attempt"]) for r in report["rows"]] == [("eager", 1), ("eager", 2), ("compiled", 1),
                                                                     ("compiled", 2), ("cached", 1), ("cached", 2)]
    assert all(r["seconds"] > 0 for r in report["rows"]) and json.loads(out.read_text())["images"] == 8
    assert report["apart"]["batch"]["mean_over_spread"] < 1e-3 and report["apart"]["batch"]["variance_rel"] < 1e-2
    assert report["apart"]["batch_cached"] == {"mean_over_spread": 0.0, "variance_rel": 0.0}  # batch runs as eager
    only = bench_adabn.main(["--image_size=32", "--images=4", "--batch_size=4", "--methods=exact", "--passes=eager,cached"])
    assert [r["passes"] for r in only["rows"]] == ["eager", "cached"] and list(only["apart"]) == ["exact_cached"]
    assert only["apart"]["exact_cached"] == {"mean_over_spread": 0.0, "variance_rel": 0.0}  # bit for bit
    with pytest.raises(SystemExit, match="eager and any of"):
        bench_adabn.main(["--passes=cached"])


def _same_statistics(a: keras.Model, b: keras.Model) -> None:
    assert len(batchnorm_layers(a)) == len(batchnorm_layers(b))
    for x, y in zip(batchnorm_layers(a), batchnorm_layers(b)):  # in the same order (clones auto-name anew)
        np.testing.assert_array_equal(np.asarray(x.moving_mean), np.asarray(y.moving_mean))
        np.testing.assert_array_equal(np.asarray(x.moving_variance), np.asarray(y.moving_variance))


def test_cached_passes_give_the_eager_statistics_from_far_fewer_layer_calls():
    """passes="cached" (each exact pass from the latest kept cut of the graph) re-estimates exactly what
    the eager passes do on ResNet50 + ASPP (residual blocks, a nested backbone, BatchNorms inside ASPP),
    with a batch size that leaves a short last batch, and runs a fraction of the layer calls."""
    import crack_tf.models
    from crack_tf.training import adabn
    from crack_tf.training.adabn_cached import CachedExact, graph_nodes

    model = crack_tf.models.get("resnet50_aspp", input_shape=(32, 32, 3))
    images = np.random.default_rng(1).integers(60, 255, (10, 32, 32, 3)).astype(np.uint8)
    eager = adapt_batchnorm(model, images, batch_size=4, copy=True, passes="eager")
    cached = adapt_batchnorm(model, images, batch_size=4, copy=True, passes="cached")
    _same_statistics(eager, cached)
    assert not np.allclose(np.asarray(_layer(cached, "conv5_block3_3_bn").moving_variance), 1)
    # the layer calls one adaptation runs: eager passes from the images for each of the 56 layers
    # (~28 full passes' worth), cached ones only the segment from a kept cut to the layer measured
    probe = keras.models.clone_model(model)
    probe.set_weights(model.get_weights())
    order = adabn._call_order(probe, batchnorm_layers(probe), images[:1])
    cache = CachedExact(probe, order, images, 4)
    for k, layer in enumerate(order):
        adabn._assign(layer, cache.measure([k])[k])
    _same_statistics(eager, probe)
    full_pass_calls = len(graph_nodes(model)) * 3  # a pass over the 3 batches
    assert cache.computed_calls < 3 * full_pass_calls  # measured: 2.2 passes' worth (eager: ~28)
    assert len(cache.kept) <= 3  # the outputs of a few cuts at a time, not every layer's


def test_cached_passes_on_a_custom_layer_and_without_a_functional_graph(target):
    """The test model (a BatchNorm inside a custom layer, a nested model) and a subclassed model,
    which has no graph to cut (every pass then runs from the images): the eager statistics."""

    class Subclassed(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3, padding="same")
            self.norm = keras.layers.BatchNormalization()
            self.head = keras.layers.Dense(2)

        def call(self, x, training=None):
            return self.head(ops.mean(ops.relu(self.norm(self.conv(x), training=training)), axis=(1, 2)))

    from keras import ops

    subclassed = Subclassed()
    subclassed(np.zeros((1, 8, 8, 3), np.float32))
    for model in (tiny_model(), subclassed):
        eager = adapt_batchnorm(model, target, batch_size=16, copy=True, passes="eager")
        cached = adapt_batchnorm(model, target, batch_size=16, copy=True, passes="cached")
        _same_statistics(eager, cached)


def test_cached_passes_fall_back_to_the_images_when_the_kept_outputs_run_out_of_memory(monkeypatch):
    """A device out of memory while a pass starts from kept outputs: those are dropped, the rest of the
    passes run from the images, and the statistics are still the eager ones. Other errors propagate."""
    import crack_tf.models
    from crack_tf.training import adabn_cached

    model = crack_tf.models.get("resnet50_aspp", input_shape=(32, 32, 3))
    images = np.random.default_rng(2).integers(60, 255, (6, 32, 32, 3)).astype(np.uint8)
    eager = adapt_batchnorm(model, images, batch_size=3, copy=True, passes="eager")
    replay, calls = adabn_cached.CachedExact._replay, []

    def exhausted(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.6GiB")
        return replay(self, *args)

    monkeypatch.setattr(adabn_cached.CachedExact, "_replay", exhausted)
    cached = adapt_batchnorm(model, images, batch_size=3, copy=True, passes="cached")
    _same_statistics(eager, cached)
    assert len(calls) == 3  # no pass started from kept outputs after the failure

    def broken(self, *args):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(adabn_cached.CachedExact, "_replay", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        adapt_batchnorm(model, images, batch_size=3, copy=True, passes="cached")
