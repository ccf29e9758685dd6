"""TEST DOUBLES of TensorFlow Serving -- test fixtures only, NOT a deployment.

No ``tensorflow_model_server`` binary can be installed in CI, so the client is tested end to
end against two small in-process stand-ins that serve an exported SavedModel (loaded with
``tf.saved_model.load``) through the same wire formats as TF Serving:

- :class:`GrpcPredictionServer`: a ``grpc`` server on 127.0.0.1 implementing
  ``tensorflow.serving.PredictionService/Predict`` (``PredictRequest`` -> ``PredictResponse``),
  failing with ``INVALID_ARGUMENT`` / ``NOT_FOUND`` like the real server;
- :class:`RestPredictServer`: an ``http.server`` speaking ``POST /v1/models/<name>
  [/versions/N|/labels/L]:predict`` with the row (``instances``) and columnar (``inputs``)
  JSON formats, ``{"b64": ...}`` binary values, and ``{"error": ...}`` with HTTP 400/404.

They implement only what crack_tf needs (one model, Predict). Deploy with the real
``tensorflow/serving`` image instead: see docs/DEPLOY.md.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf


class BadRequest(Exception):
    """Maps to INVALID_ARGUMENT (gRPC) / HTTP 400 (REST)."""


class NotFound(Exception):
    """Maps to NOT_FOUND (gRPC) / HTTP 404 (REST)."""


class SavedModelBackend:
    """Runs signatures of versioned SavedModels: ``{version: export_dir}`` plus labels."""

    def __init__(self, name: str, versions: dict[int, str], labels: dict[str, int] | None = None):
        self.name = name
        self.models = {v: tf.saved_model.load(path) for v, path in versions.items()}
        self.labels = labels or {}
        self.batch_sizes: list[int] = []  # rows per Predict call, for tests
        self._lock = threading.Lock()

    def _resolve(self, name: str, version: int | None, label: str | None):
        if name != self.name:
            raise NotFound(f"Servable not found for request: Latest({name})")
        if label:
            if label not in self.labels:
                raise NotFound(f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        version = max(self.models) if version is None else version
        if version not in self.models:
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")
        return self.models[version]

    def signature(self, name: str, version: int | None, label: str | None, signature: str):
        model = self._resolve(name, version, label)
        signature = signature or "serving_default"
        if signature not in model.signatures:
            raise BadRequest(f'Serving signature name: "{signature}" not found in signature def')
        return model.signatures[signature]

    def run(self, fn, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = fn.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise BadRequest(f"input names {sorted(inputs)} do not match the signature's {sorted(specs)}")
        try:
            tensors = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()}
            with self._lock:
                self.batch_sizes.append(int(next(iter(tensors.values())).shape[0]))
                out = fn(**tensors)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            raise BadRequest(getattr(err, "message", str(err))) from err
        return {k: v.numpy() for k, v in out.items()}


# --------------------------------------------------------------------------- gRPC


class GrpcPredictionServer:
    """``PredictionService`` on ``127.0.0.1:<free port>``; use as a context manager."""

    def __init__(self, backend: SavedModelBackend):
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        backend_ = backend

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (gRPC method name)
                spec = request.model_spec
                version = spec.version.value if spec.HasField("version") else None
                try:
                    fn = backend_.signature(spec.name, version, spec.version_label, spec.signature_name)
                    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                    outputs = backend_.run(fn, inputs)
                except NotFound as err:
                    context.abort(grpc.StatusCode.NOT_FOUND, str(err))
                except BadRequest as err:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
                response = predict_pb2.PredictResponse()
                response.model_spec.CopyFrom(spec)
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
                return response

        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2),
            options=[("grpc.max_receive_message_length", 64 << 20)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def __enter__(self) -> GrpcPredictionServer:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None)


# --------------------------------------------------------------------------- REST

_URL = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:predict$")


def _decode_b64(value):
    """Replaces ``{"b64": s}`` objects (anywhere in a JSON value) by their bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (ValueError, TypeError) as err:
                raise BadRequest(f"invalid base64 in a b64 object: {err}") from err
        raise BadRequest(f"unexpected JSON object {str(value)[:80]} where a tensor value was expected")
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _to_json(value: np.ndarray):
    if value.dtype.kind in ("S", "O"):
        return [v.decode("utf-8") if isinstance(v, bytes) else _to_json(np.asarray(v)) for v in value]
    return value.tolist()


def parse_predict_body(body: dict, input_names: list[str]) -> tuple[dict[str, list], bool]:
    """TF Serving ``:predict`` JSON -> ({input: values}, row_format)."""
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest("JSON Value: request must have exactly one of 'instances' or 'inputs'")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise BadRequest("'instances' must be a non-empty list")
        if all(isinstance(r, dict) and "b64" not in r for r in rows):
            columns = {k: [_decode_b64(r.get(k)) for r in rows] for k in rows[0]}
        elif len(input_names) == 1:
            columns = {input_names[0]: [_decode_b64(r) for r in rows]}
        else:
            raise BadRequest(f"instances must be objects naming the inputs {input_names}")
        return columns, True
    inputs = body["inputs"]
    if isinstance(inputs, dict) and "b64" not in inputs:
        return {k: _decode_b64(v) for k, v in inputs.items()}, False
    return {input_names[0]: _decode_b64(inputs)}, False


class RestPredictServer:
    """TF Serving's REST ``:predict`` on ``127.0.0.1:<free port>``; use as a context manager."""

    def __init__(self, backend: SavedModelBackend):
        backend_ = backend

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                match = _URL.match(self.path)
                if not match:
                    return self._reply(404, {"error": f"Malformed request: POST {self.path}"})
                name, version, label = match.groups()
                try:
                    raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    try:
                        body = json.loads(raw)
                    except json.JSONDecodeError as err:
                        raise BadRequest(f"JSON Parse error: {err}") from err
                    if not isinstance(body, dict):
                        raise BadRequest("JSON Value: request body must be an object")
                    fn = backend_.signature(name, int(version) if version else None, label, body.get("signature_name"))
                    columns, rows = parse_predict_body(body, sorted(fn.structured_input_signature[1]))
                    outputs = backend_.run(fn, {k: np.asarray(v, dtype=object if _is_bytes(v) else None) for k, v in columns.items()})
                except NotFound as err:
                    return self._reply(404, {"error": str(err)})
                except BadRequest as err:
                    return self._reply(400, {"error": str(err)})
                if rows:
                    n = len(next(iter(outputs.values())))
                    preds = [{k: _to_json(v[i : i + 1])[0] for k, v in outputs.items()} for i in range(n)]
                    return self._reply(200, {"predictions": preds})
                return self._reply(200, {"outputs": {k: _to_json(v) for k, v in outputs.items()}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RestPredictServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _is_bytes(values) -> bool:
    return isinstance(values, list) and bool(values) and isinstance(values[0], bytes)
