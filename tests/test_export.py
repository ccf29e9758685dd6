"""crack_tf.export: versioned SavedModel with serving_default (image bytes) and predict_images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from crack_tf import CLASS_NAMES, export, models  # noqa: E402
from crack_tf.data import decode_image_tf, eval_transform_tf  # noqa: E402

SIZE = 64
OUTPUTS = {"probabilities", "crack_probability", "class_id", "class_name"}  # the contract, spelled out
RUN_JSON = {
    "config": {"model": "zhang2016", "image_size": SIZE, "epochs": 1},
    "class_names": list(CLASS_NAMES),
    "image_size": SIZE,
    "small_policy": "resize",
    "metrics": {"val": {"recall": 0.5, "accuracy": 0.75}},
    "versions": {"keras": keras.__version__},
}


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def _keras_probs(model, images) -> np.ndarray:
    return tf.nn.softmax(model(np.asarray(images, np.float32), training=False), axis=-1).numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A .keras model + run.json exported once through the real CLI (python -m crack_tf.export)."""
    keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("export")
    model = models.get("zhang2016", input_shape=(SIZE, SIZE, 3), dropout=0.5)
    model_path = root / "run" / "best.keras"
    model_path.parent.mkdir()
    model.save(model_path)
    (model_path.parent / "run.json").write_text(json.dumps(RUN_JSON))
    export_dir = root / "exports" / "crack_tf"
    proc = subprocess.run(
        [sys.executable, "-m", "crack_tf.export", f"--model={model_path}", f"--export_dir={export_dir}"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verified" in proc.stdout
    return {"model": keras.models.load_model(model_path), "model_path": model_path,
            "export_dir": export_dir, "version_dir": export_dir / "1", "stdout": proc.stdout}


@pytest.fixture(scope="module")
def loaded(trained):
    return tf.saved_model.load(str(trained["version_dir"]))


@pytest.mark.slow
def test_version_folder_and_metadata(trained):
    vdir = trained["version_dir"]
    assert sorted(os.listdir(trained["export_dir"])) == ["1"]  # no temporary folder left behind
    assert (vdir / "saved_model.pb").is_file()
    meta = json.loads((vdir / "assets" / export.METADATA_FILE).read_text())
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["crack_class_id"] == 1
    assert meta["image_size"] == SIZE and meta["small_policy"] == "resize"
    assert meta["training"]["metrics"] == RUN_JSON["metrics"]
    assert meta["training"]["config"]["model"] == "zhang2016"
    assert meta["export_version"] == 1


def test_warmup_record_is_a_valid_predict_request(trained, loaded):
    log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    records = list(tf.data.TFRecordDataset(str(trained["version_dir"] / "assets.extra" / export.WARMUP_FILE)))
    assert len(records) == 1
    req = log_pb2.PredictionLog.FromString(records[0].numpy()).predict_log.request
    assert req.model_spec.signature_name == "serving_default"
    images = tf.make_ndarray(req.inputs["image_bytes"])
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    assert out["probabilities"].shape == (1, 2)


@pytest.mark.slow
def test_saved_model_cli_lists_both_signatures(trained):
    cli = shutil.which("saved_model_cli")
    cmd = [cli] if cli else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    proc = subprocess.run(
        cmd + ["show", "--all", "--dir", str(trained["version_dir"])],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    blocks = {name: out.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
              for name in ("serving_default", "predict_images")}
    assert "inputs['image_bytes']" in blocks["serving_default"]
    assert "DT_STRING" in blocks["serving_default"].split("outputs[")[0]
    assert "inputs['images']" in blocks["predict_images"]
    assert f"shape: (-1, {SIZE}, {SIZE}, 3)" in blocks["predict_images"]
    for block in blocks.values():
        assert {n for n in OUTPUTS if f"outputs['{n}']" in block} == OUTPUTS
        assert "tensorflow/serving/predict" in block


def _check_outputs(out, expected_probs):
    probs = out["probabilities"].numpy()
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected_probs, atol=1e-5)
    np.testing.assert_allclose(out["crack_probability"].numpy(), probs[:, 1], atol=0)
    ids = out["class_id"].numpy()
    np.testing.assert_array_equal(ids, probs.argmax(-1))
    assert [n.decode() for n in out["class_name"].numpy()] == [CLASS_NAMES[i] for i in ids]


def test_predict_images_matches_keras(trained, loaded):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.float32)
    out = loaded.signatures["predict_images"](images=tf.constant(images))
    _check_outputs(out, _keras_probs(trained["model"], images))


def test_image_bytes_decoded_like_evaluation(trained, loaded):
    """PNG (lossless) of three sizes: smaller (upscaled), equal, larger (center-cropped)."""
    rng = np.random.default_rng(1)
    raw = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 52, 3), (SIZE, SIZE, 3), (90, 71, 3))]
    pngs = [_png(im) for im in raw]
    expected_images = np.stack([eval_transform_tf(decode_image_tf(p), SIZE, "resize").numpy() for p in pngs])
    assert not np.array_equal(expected_images[2], raw[2][:SIZE, :SIZE])  # cropping really happened
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(pngs))
    _check_outputs(out, _keras_probs(trained["model"], expected_images))


def test_tfsm_layer_matches_keras(trained):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    expected = _keras_probs(trained["model"], images)
    by_images = keras.layers.TFSMLayer(str(trained["version_dir"]), call_endpoint="predict_images")
    by_bytes = keras.layers.TFSMLayer(str(trained["version_dir"]), call_endpoint="serving_default")
    np.testing.assert_allclose(by_images(tf.constant(images))["probabilities"], expected, atol=1e-5)
    pngs = tf.constant([_png(im.astype(np.uint8)) for im in images])
    np.testing.assert_allclose(by_bytes(pngs)["probabilities"], expected, atol=1e-5)


@pytest.mark.parametrize(
    "bad",
    [b"this is not an image", b"", b"\x89PNG\r\n\x1a\n truncated"],
    ids=["text", "empty", "truncated_png"],
)
def test_invalid_bytes_fail_with_invalid_argument(loaded, bad):
    good = _png(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        loaded.signatures["serving_default"](image_bytes=tf.constant([good, bad]))
    if not bad.startswith(b"\x89PNG"):  # non-images are named by index; broken PNGs by the decoder
        assert "image_bytes[1]" in info.value.message
        assert "is not a JPEG, PNG" in info.value.message


def test_empty_batch_is_a_clear_error(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([], tf.string))


def test_versioning_pad_policy_and_overwrite(trained, tmp_path):
    model = trained["model"]
    export_dir = str(tmp_path / "crack_tf")
    os.makedirs(os.path.join(export_dir, "7"))
    os.makedirs(os.path.join(export_dir, "notes"))  # non-numeric folders are ignored
    assert export.next_version(export_dir) == 8
    meta = export.build_metadata(model, {}, small_policy="pad")
    path = export.export_saved_model(model, export_dir, meta, warmup=False)
    assert path.endswith(os.sep + "8")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_saved_model(model, export_dir, meta, version=8, warmup=False)
    assert not [d for d in os.listdir(export_dir) if d.startswith(".tmp")]
    small = np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    expected = eval_transform_tf(tf.constant(small), SIZE, "pad").numpy()
    assert expected[0, 0].sum() == 0  # zero padding, not upscaling
    out = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant([_png(small)]))
    np.testing.assert_allclose(out["probabilities"].numpy(), _keras_probs(model, expected[None]), atol=1e-5)


def test_metadata_errors(trained, tmp_path):
    model = trained["model"]
    with pytest.raises(ValueError, match="does not match the model input size"):
        export.build_metadata(model, {}, image_size=SIZE + 1)
    with pytest.raises(ValueError, match="small_policy"):
        export.build_metadata(model, {"small_policy": "stretch"})
    import crack_tf

    with pytest.raises(FileNotFoundError, match="--model"):  # the one loader (crack_tf.load_model)
        crack_tf.load_model(str(tmp_path / "missing.keras"))
    meta = export.build_metadata(model, {})  # no run.json: defaults from the model
    assert meta["image_size"] == SIZE and meta["class_names"] == list(CLASS_NAMES)


def test_the_exported_small_image_policies_are_the_trainers():
    """export spells out what each --small_policy does in serving_default; the trainer, evaluate and the
    export command offer the names of crack_tf.choices: the two must name the same policies."""
    from crack_tf.choices import SMALL_POLICIES

    assert tuple(export.SMALL_IMAGE_POLICIES) == SMALL_POLICIES
    assert all(isinstance(what, str) and what for what in export.SMALL_IMAGE_POLICIES.values())


@pytest.mark.slow
def test_resnet50_aspp_round_trip(tmp_path):
    """The real architecture (custom ASPP + CaffePreprocess layers) survives .keras -> SavedModel."""
    model = models.get("resnet50_aspp", input_shape=(32, 32, 3), insert_after="layer1")
    model.save(tmp_path / "m.keras")
    import crack_tf

    reloaded = crack_tf.load_model(str(tmp_path / "m.keras")).model
    meta = export.build_metadata(reloaded, {})
    path = export.export_saved_model(reloaded, str(tmp_path / "exp"), meta, warmup=False)
    assert export.verify_export(model, path, 32, atol=1e-5) <= 1e-5


def test_read_run_json_prefers_run_json_then_config_json(tmp_path):
    model_path = str(tmp_path / "best.keras")
    assert export.read_run_json(model_path) == {}
    (tmp_path / "config.json").write_text(json.dumps({"image_size": 96, "small_policy": "pad", "lr": 0.1}))
    run = export.read_run_json(model_path)
    assert run["image_size"] == 96 and run["small_policy"] == "pad" and run["config"]["lr"] == 0.1
    (tmp_path / "run.json").write_text(json.dumps(RUN_JSON))
    assert export.read_run_json(model_path) == RUN_JSON


@pytest.mark.slow
def test_a_bf16_trained_model_is_exported_in_float32_unless_asked(tmp_path):
    """GPU runs save mixed_bfloat16 layers; the export serves float32 by default (every CPU can run it)."""
    from crack_tf.predictor import load_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(4)
        model = models.get("zhang2016", input_shape=(SIZE, SIZE, 3))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model_path = tmp_path / "bf16.keras"
    model.save(model_path)
    images = np.random.default_rng(5).integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    expected = {p: load_model(str(model_path), precision=p).predict(images) for p in ("float32", "bf16")}
    assert not np.array_equal(expected["float32"], expected["bf16"])
    for flag, policy, key in ((None, "float32", "float32"), ("saved", "mixed_bfloat16", "bf16")):
        export_dir = tmp_path / f"exp_{policy}"
        argv = [sys.executable, "-m", "crack_tf.export", f"--model={model_path}", f"--export_dir={export_dir}",
                "--nowarmup", *([f"--precision={flag}"] if flag else [])]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=240,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"precision {policy}" in proc.stdout
        meta = json.loads((export_dir / "1" / "assets" / export.METADATA_FILE).read_text())
        assert meta["precision"] == policy
        got = load_model(str(export_dir / "1")).predict(images)
        np.testing.assert_allclose(got, expected[key], atol=2e-3)  # PNG round trip of uint8 is exact
        other = expected["bf16" if key == "float32" else "float32"]
        assert np.abs(got - expected[key]).max() < np.abs(got - other).max()
