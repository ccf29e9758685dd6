"""crack_tf.serving: models.config / batching files, and the REST + gRPC client end to end.

The servers here are TEST DOUBLES (tests/serving_doubles.py) backed by a real export;
production uses the tensorflow/serving image (docs/DEPLOY.md).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from crack_tf.serving import BATCHING_PARAMETERS_FILE, MODELS_CONFIG_FILE, client, config

SIZE = 64

# ----------------------------------------------------------------------------- config files


def test_model_config_parses_with_tf_serving_protos():
    pytest.importorskip("tensorflow_serving")
    entry = config.ModelEntry("crack_tf", "/models/crack_tf", "specific", (1, 2), labels={"stable": 1, "canary": 2})
    msg = config.validate_model_config(config.model_config_text([entry]))
    (cfg,) = msg.model_config_list.config
    assert (cfg.name, cfg.base_path, cfg.model_platform) == ("crack_tf", "/models/crack_tf", "tensorflow")
    assert list(cfg.model_version_policy.specific.versions) == [1, 2]
    assert dict(cfg.version_labels) == {"stable": 1, "canary": 2}
    for policy, check in [("latest", lambda p: p.latest.num_versions == 2), ("all", lambda p: p.HasField("all"))]:
        text = config.model_config_text([config.ModelEntry("m", "/m", policy, num_latest=2)])
        assert check(config.validate_model_config(text).model_config_list.config[0].model_version_policy)


def test_committed_models_config_is_the_generated_default():
    default = config.ModelEntry("crack_tf", "/models/crack_tf")
    assert MODELS_CONFIG_FILE.read_text() == config.model_config_text([default])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"policy": "specific"}, "needs --versions"),
        ({"policy": "specific", "versions": (1,), "labels": {"canary": 2}}, "not served"),
        ({"policy": "latest", "versions": (1,)}, "only applies"),
        ({"policy": "newest"}, "--policy"),
        ({"name": "bad name"}, "--name"),
        ({"labels": {"1abc": 1}}, "start with a letter"),
    ],
)
def test_model_config_rejects_bad_entries(kwargs, match):
    entry = config.ModelEntry(**{"name": "crack_tf", "base_path": "/m", **kwargs})
    with pytest.raises(ValueError, match=match):
        config.model_config_text([entry])


def test_config_cli_and_parsers():
    proc = subprocess.run(
        [sys.executable, "-m", "crack_tf.serving.config", "--name", "crack_tf", "--base_path", "/models/crack_tf",
         "--versions", "2,1", "--labels", "stable=1,canary=2"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "specific {" in proc.stdout and 'key: "canary"' in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "crack_tf.serving.config", "--labels", "stable"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "label=version" in bad.stderr
    assert config.parse_versions("2, 1,2") == (1, 2)
    with pytest.raises(ValueError):
        config.parse_versions("1,x")


def test_batching_parameters_file_is_valid_and_validator_is_strict():
    params = config.parse_batching_parameters(BATCHING_PARAMETERS_FILE.read_text())
    assert params.max_batch_size.value == 32
    assert 0 < params.batch_timeout_micros.value <= 10_000
    assert params.num_batch_threads.value >= 1
    from google.protobuf import text_format

    with pytest.raises(text_format.ParseError):
        config.parse_batching_parameters("max_batch_size { value: 8 }\nmax_batch_sise { value: 8 }\n")
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        config.parse_batching_parameters("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")


def test_rest_client_needs_no_tensorflow():
    code = (
        "import sys, crack_tf.serving.client, crack_tf.serving.config;"
        "bad = [m for m in ('tensorflow', 'tensorflow_serving', 'grpc') if m in sys.modules];"
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_request_building():
    rest = client.RestClient("host:8501", model_name="m", version=3)
    assert rest.url == "http://host:8501/v1/models/m/versions/3:predict"
    assert client.RestClient("https://h:1/", version_label="canary").url == "https://h:1/v1/models/crack_tf/labels/canary:predict"
    body = rest.request_body([b"\xff\xd8\xffabc"])
    assert body == {"signature_name": "serving_default", "instances": [{"image_bytes": {"b64": "/9j/YWJj"}}]}
    with pytest.raises(ValueError, match="either"):
        client.RestClient("h:1", version=1, version_label="stable")
    with pytest.raises(ValueError, match="host:port"):
        client.make_client("rest", "localhost")
    pytest.importorskip("tensorflow_serving")
    req = client.GrpcClient("h:1", model_name="m", version_label="stable").request([b"a", b"bc"])
    assert (req.model_spec.name, req.model_spec.version_label, req.model_spec.signature_name) == ("m", "stable", "serving_default")
    tensor = req.inputs["image_bytes"]
    assert tensor.dtype == 7 and [d.size for d in tensor.tensor_shape.dim] == [2] and list(tensor.string_val) == [b"a", b"bc"]


def test_tensor_values_reads_proto_fields_and_tensor_content():
    pytest.importorskip("tensorflow")
    from tensorflow.core.framework import tensor_pb2

    assert client._tensor_values(tensor_pb2.TensorProto(dtype=1, float_val=[0.25, 0.5])) == [0.25, 0.5]
    assert client._tensor_values(tensor_pb2.TensorProto(dtype=3, int_val=[1, 0])) == [1, 0]
    packed = tensor_pb2.TensorProto(dtype=1, tensor_content=np.array([0.25, 0.75], np.float32).tobytes())
    assert client._tensor_values(packed) == [0.25, 0.75]


def test_one_line_error_messages():
    raw = "Graph execution error:\n\nDetected at node x\n<stack traces unavailable>\nassertion failed: [bad]\n\t [[{{node a}}]]"
    assert client.one_line(raw) == "assertion failed: [bad]"


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tf):
    """An exported zhang2016 (versions 1 and 2, labels stable/canary) behind both doubles."""
    pytest.importorskip("tensorflow_serving")
    import keras

    from crack_tf import export, models
    from tests.serving_doubles import GrpcPredictionServer, RestPredictServer, SavedModelBackend

    root = tmp_path_factory.mktemp("serving")
    keras.utils.set_random_seed(5)
    model = models.get("zhang2016", input_shape=(SIZE, SIZE, 3))
    meta = export.build_metadata(model, {})
    v1 = export.export_saved_model(model, str(root / "crack_tf"), meta, warmup=False)
    backend = SavedModelBackend("crack_tf", {1: v1, 2: v1}, labels={"stable": 1, "canary": 2})
    rng = np.random.default_rng(0)
    files = []
    for i, shape in enumerate([(SIZE, SIZE, 3), (80, 50, 3), (SIZE, 90, 3), (30, 30, 3), (SIZE, SIZE, 3)]):
        path = root / f"tile{i}.png"
        path.write_bytes(tf.io.encode_png(rng.integers(0, 256, shape, dtype=np.uint8)).numpy())
        files.append(str(path))
    bad = root / "not_an_image.jpg"
    bad.write_bytes(b"just text, not an image")
    signature = tf.saved_model.load(v1).signatures["serving_default"]
    expected = signature(image_bytes=tf.constant([open(f, "rb").read() for f in files]))
    with GrpcPredictionServer(backend) as grpc_server, RestPredictServer(backend) as rest_server:
        yield {
            "files": files, "bad": str(bad), "backend": backend,
            "expected": {k: v.numpy() for k, v in expected.items()},
            "servers": {"grpc": grpc_server.address, "rest": rest_server.address},
        }


def _run(paths, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    code = client.run_cli(paths, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_client_matches_saved_model(served, protocol):
    c = client.make_client(protocol, served["servers"][protocol], timeout=30)
    images = [open(f, "rb").read() for f in served["files"]]
    preds = c.predict(images)
    exp = served["expected"]
    np.testing.assert_allclose([p.probabilities for p in preds], exp["probabilities"], atol=1e-6)
    np.testing.assert_allclose([p.crack_probability for p in preds], exp["crack_probability"], atol=1e-6)
    assert [p.class_id for p in preds] == exp["class_id"].tolist()
    assert [p.class_name for p in preds] == [n.decode() for n in exp["class_name"]]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_cli_batches_and_reports_bad_files(served, protocol):
    backend = served["backend"]
    backend.batch_sizes.clear()
    paths = served["files"] + [served["bad"], "/nonexistent/tile.png"]
    code, out, err = _run(paths, server=served["servers"][protocol], protocol=protocol, batch_size=2, timeout=30)
    assert code == 1, err  # some files failed
    lines = out.splitlines()
    for path, p in zip(served["files"], served["expected"]["crack_probability"]):
        (row,) = [line for line in lines if line.startswith(path + " ")]
        assert f"{p:.4f}" in row
    (bad_row,) = [line for line in lines if line.startswith(served["bad"])]
    assert "rejected by the server" in bad_row and "not a JPEG, PNG" in bad_row
    assert "cannot read file" in [line for line in lines if line.startswith("/nonexistent")][0]
    assert f"5/7 files classified via {protocol}" in lines[-1]
    # 5 good + 1 bad file in batches of 2: [2, 2, (good, bad) rejected -> retried 1 + 1]
    assert backend.batch_sizes[:2] == [2, 2] and len(backend.batch_sizes) == 5


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_version_labels_and_unknown_model(served, protocol):
    addr = served["servers"][protocol]
    code, out, _ = _run(served["files"][:1], server=addr, protocol=protocol, version_label="canary", timeout=30)
    assert code == 0 and "1/1 files classified" in out
    code, _, err = _run(served["files"][:1], server=addr, protocol=protocol, model_name="nope", timeout=30)
    assert code == 2 and "Servable not found" in err and addr in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_unreachable_server_is_a_clear_error(served, protocol):
    addr = f"127.0.0.1:{_free_port()}"
    code, out, err = _run(served["files"][:1], server=addr, protocol=protocol, timeout=5)
    assert code == 2 and out == ""
    assert addr in err and protocol.upper() in err and "cannot reach" in err


def _post(addr: str, path: str, body) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_double_speaks_tf_serving_json(served, tf):
    addr = served["servers"]["rest"]
    data = open(served["files"][0], "rb").read()
    b64 = {"b64": base64.b64encode(data).decode()}
    status, body = _post(addr, "/v1/models/crack_tf/versions/1:predict", {"inputs": {"image_bytes": [b64]}})
    assert status == 200
    np.testing.assert_allclose(body["outputs"]["probabilities"][0], served["expected"]["probabilities"][0], atol=1e-6)
    image = tf.io.decode_png(data).numpy().astype(float).tolist()
    status, body = _post(addr, "/v1/models/crack_tf:predict", {"signature_name": "predict_images", "instances": [image]})
    assert status == 200
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], served["expected"]["probabilities"][0], atol=1e-5)
    bad = {"b64": base64.b64encode(b"plain text").decode()}
    status, body = _post(addr, "/v1/models/crack_tf:predict", {"instances": [{"image_bytes": bad}]})
    assert status == 400 and "not a JPEG, PNG" in body["error"]
    status, body = _post(addr, "/v1/models/crack_tf:predict", {"instances": [{"image_bytes": {"b64": "@@"}}]})
    assert status == 400 and "base64" in body["error"]


# ----------------------------------------------------------------------------- TFLite (optional path)


def test_tflite_variants_track_the_float_model(tf):
    import keras

    from crack_tf import models
    from crack_tf.export import tflite

    keras.utils.set_random_seed(7)
    model = models.get("zhang2016", input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    images = rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1])
    fbs = {v: tflite.convert(model, SIZE, v, lambda: iter(calib)) for v in tflite.VARIANTS}
    assert len(fbs["int8"]) < len(fbs["float16"]) < len(fbs["float32"])
    report = tflite.evaluate(model, fbs, images, labels)
    assert report["float32"]["max_abs_prob_diff"] < 1e-5
    assert report["float16"]["max_abs_prob_diff"] < 1e-2
    assert report["int8"]["max_abs_prob_diff"] < 0.1
    for v in tflite.VARIANTS:
        assert report[v]["accuracy_delta"] == pytest.approx(report[v]["accuracy"] - report["keras_float"]["accuracy"])
    with pytest.raises(ValueError, match="calibration"):
        tflite.convert(model, SIZE, "int8")


@pytest.mark.shared_data
def test_tflite_loads_shared_val_tiles(shared_data):
    from crack_tf.export import tflite

    images, labels = tflite.load_split(str(shared_data / "uav75_tiles"), "val", SIZE, "resize", limit=12)
    assert images.shape == (12, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert set(labels.tolist()) == {0, 1}


def test_tf_make_ndarray_cannot_read_a_shapeless_tensor_so_the_client_keeps_its_reader():
    tf = pytest.importorskip("tensorflow")
    from tensorflow.core.framework import tensor_pb2

    shapeless = tensor_pb2.TensorProto(dtype=1, float_val=[0.25, 0.5])
    try:
        got = tf.make_ndarray(shapeless).ravel().tolist()  # the library
    except ValueError:
        got = None
    assert got != [0.25, 0.5]
    assert client._tensor_values(shapeless) == [0.25, 0.5]  # the client: every value
