"""Command-line client for a TensorFlow Serving deployment of crack_tf (REST or gRPC).

Example::

    python -m crack_tf.serving.client --server=localhost:8501 --protocol=rest tile1.jpg tile2.png
    python -m crack_tf.serving.client --server=localhost:8500 --protocol=grpc --batch_size=16 tiles/*.jpg

Sends the encoded image files (JPEG/PNG/BMP/GIF) unchanged to the ``serving_default``
signature (input ``image_bytes``); the server decodes, resizes and center-crops exactly as
in evaluation. Prints one row per file (crack probability, class) and a summary line.
Exit codes: 0 all files classified, 1 some files failed (unreadable or rejected by the
server as invalid images), 2 the server could not be reached / answered with an error.

REST needs only the standard library. gRPC needs ``grpcio`` and ``tensorflow-serving-api``
(``pip install --no-deps tensorflow-serving-api==2.21.0``, see docs/DEPLOY.md); it is only
imported when ``--protocol=grpc`` is used.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence

from crack_tf.serving import DEFAULT_SIGNATURE, IMAGE_BYTES_INPUT, OUTPUT_NAMES

PROTOCOLS = ("rest", "grpc")


class ServingError(RuntimeError):
    """The server answered with an error (other than a bad input)."""


class ServerUnavailableError(ServingError):
    """The server could not be reached or did not answer within the timeout."""


class InvalidInputError(ServingError):
    """The server rejected the request's inputs (e.g. bytes that are not an image)."""


@dataclasses.dataclass
class Prediction:
    """The model's answer for one image."""

    crack_probability: float
    class_id: int
    class_name: str
    probabilities: list[float]
    is_crack: bool | None = None  # at the model's stored threshold (exports without it: None)
    threshold: float | None = None

    @property
    def crack(self) -> bool:
        return self.is_crack if self.is_crack is not None else self.class_id == 1


@dataclasses.dataclass
class FileResult:
    """A file and its prediction, or the reason it has none."""

    path: str
    prediction: Prediction | None = None
    error: str | None = None


def _prediction(row: dict) -> Prediction:
    name = row["class_name"]
    if isinstance(name, bytes):
        name = name.decode("utf-8")
    elif isinstance(name, dict) and "b64" in name:  # servers may b64 any string output
        name = base64.b64decode(name["b64"]).decode("utf-8")
    return Prediction(
        crack_probability=float(row["crack_probability"]),
        class_id=int(row["class_id"]),
        class_name=str(name),
        probabilities=[float(p) for p in row["probabilities"]],
        is_crack=bool(row["is_crack"]) if "is_crack" in row else None,
        threshold=float(row["threshold"]) if "threshold" in row else None,
    )


class _Client:
    protocol = ""

    def __init__(
        self,
        server: str,
        model_name: str = "crack_tf",
        signature: str = DEFAULT_SIGNATURE,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float = 10.0,
    ):
        if version is not None and version_label:
            raise ValueError("give either a model version or a version label, not both")
        self.server = server
        self.model_name = model_name
        self.signature = signature
        self.version = version
        self.version_label = version_label
        self.timeout = timeout

    def describe(self) -> str:
        return f"TF Serving {self.protocol.upper()} server {self.server}"

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        """Classifies encoded images (one request)."""
        raise NotImplementedError


class RestClient(_Client):
    """``POST /v1/models/<name>[/versions/N|/labels/L]:predict`` with b64 image bytes."""

    protocol = "rest"

    @property
    def url(self) -> str:
        base = self.server if "://" in self.server else f"http://{self.server}"
        path = f"/v1/models/{self.model_name}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.version_label:
            path += f"/labels/{self.version_label}"
        return base.rstrip("/") + path + ":predict"

    def request_body(self, images: Sequence[bytes]) -> dict:
        """The JSON body (row format, binary input as ``{"b64": ...}``)."""
        return {
            "signature_name": self.signature,
            "instances": [{IMAGE_BYTES_INPUT: {"b64": base64.b64encode(b).decode("ascii")}} for b in images],
        }

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        data = json.dumps(self.request_body(images)).encode("utf-8")
        req = urllib.request.Request(
            self.url, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            message = _error_message(err.read())
            cls = InvalidInputError if err.code == 400 else ServingError
            raise cls(f"{self.describe()} ({self.url}) answered HTTP {err.code}: {message}") from err
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise ServerUnavailableError(
                f"cannot reach {self.describe()} at {self.url} within {self.timeout:g}s: {reason}"
            ) from err
        except json.JSONDecodeError as err:
            raise ServingError(f"{self.describe()} sent a response that is not JSON: {err}") from err
        if "error" in body:
            raise ServingError(f"{self.describe()}: {body['error']}")
        rows = body.get("predictions")
        if not isinstance(rows, list) or len(rows) != len(images):
            raise ServingError(f"{self.describe()}: expected {len(images)} predictions, got {str(body)[:200]}")
        return [_prediction(r) for r in rows]


def _error_message(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    try:
        return one_line(str(json.loads(text).get("error", text)))
    except (json.JSONDecodeError, AttributeError):
        return one_line(text)


_NOISE = ("[[", "Detected at node", "<stack traces", "Graph execution error", "(most recent call last)")


def one_line(message: str, limit: int = 400) -> str:
    """A TF error message on one line, without graph-node and stack-trace noise."""
    lines = [line.strip() for line in str(message).splitlines()]
    kept = [line for line in lines if line and not line.startswith(_NOISE)] or [lines[0] if lines else ""]
    text = " ".join(kept)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GrpcClient(_Client):
    """``PredictionService.Predict`` with a ``DT_STRING`` ``image_bytes`` tensor."""

    protocol = "grpc"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc
        except ImportError as err:
            raise ImportError(
                f"--protocol=grpc needs grpcio and tensorflow-serving-api ({err}); install them with "
                "`pip install grpcio && pip install --no-deps tensorflow-serving-api==2.21.0`, "
                "or use --protocol=rest"
            ) from err
        self._grpc = grpc
        target = self.server.split("://", 1)[-1]
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def request(self, images: Sequence[bytes]):
        """The ``PredictRequest`` for ``images``."""
        return predict_request(images, self.model_name, self.signature, self.version, self.version_label)

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        grpc = self._grpc
        try:
            resp = self._stub.Predict(self.request(images), timeout=self.timeout)
        except grpc.RpcError as err:
            code, details = err.code(), one_line(err.details() or "")
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServerUnavailableError(
                    f"cannot reach {self.describe()} within {self.timeout:g}s ({code.name}): {details}"
                ) from err
            cls = InvalidInputError if code == grpc.StatusCode.INVALID_ARGUMENT else ServingError
            raise cls(f"{self.describe()} answered {code.name}: {details}") from err
        cols = {name: _tensor_values(t) for name, t in resp.outputs.items()}
        missing = set(OUTPUT_NAMES) - set(cols)
        if missing:
            raise ServingError(f"{self.describe()}: response lacks outputs {sorted(missing)}")
        n = len(cols["crack_probability"])
        probs = cols["probabilities"]
        width = len(probs) // max(n, 1)
        return [
            Prediction(
                crack_probability=float(cols["crack_probability"][i]),
                class_id=int(cols["class_id"][i]),
                class_name=cols["class_name"][i].decode("utf-8"),
                probabilities=[float(p) for p in probs[i * width : (i + 1) * width]],
                is_crack=bool(cols["is_crack"][i]) if "is_crack" in cols else None,
                threshold=float(cols["threshold"][i]) if "threshold" in cols else None,
            )
            for i in range(n)
        ]


def predict_request(
    images: Sequence[bytes],
    model_name: str = "crack_tf",
    signature: str = DEFAULT_SIGNATURE,
    version: int | None = None,
    version_label: str | None = None,
):
    """A ``tensorflow.serving.PredictRequest`` with ``images`` as the ``image_bytes`` tensor."""
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    elif version_label:
        req.model_spec.version_label = version_label
    tensor = req.inputs[IMAGE_BYTES_INPUT]
    tensor.dtype = 7  # tensorflow.DataType.DT_STRING
    tensor.tensor_shape.dim.add(size=len(images))
    tensor.string_val.extend(images)
    return req


def _tensor_values(tensor) -> list:
    """Flat values of a ``TensorProto`` (float/int/string fields or ``tensor_content``)."""
    import numpy as np

    for field in ("float_val", "double_val", "int_val", "int64_val", "string_val", "bool_val"):
        values = getattr(tensor, field)
        if len(values):
            return list(values)
    if tensor.tensor_content:
        dtypes = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 10: np.bool_}
        if tensor.dtype not in dtypes:
            raise ServingError(f"unsupported tensor dtype {tensor.dtype} in the response")
        return np.frombuffer(tensor.tensor_content, dtype=dtypes[tensor.dtype]).tolist()
    return []


def make_client(protocol: str, server: str, **kwargs) -> _Client:
    """A :class:`RestClient` or :class:`GrpcClient`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not server or ":" not in server:
        raise ValueError(f"--server must be host:port (e.g. localhost:8501 for REST, :8500 for gRPC), got {server!r}")
    return (RestClient if protocol == "rest" else GrpcClient)(server, **kwargs)


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def classify_files(client: _Client, paths: Sequence[str], batch_size: int = 16) -> list[FileResult]:
    """Sends ``paths`` in batches; a batch the server rejects is retried file by file.

    Unreadable files and images the server rejects get an ``error``; an unreachable or
    failing server raises :class:`ServingError` (other than :class:`InvalidInputError`).
    """
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    results = {p: FileResult(p) for p in paths}
    readable: list[tuple[str, bytes]] = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                readable.append((path, fh.read()))
        except OSError as err:
            results[path].error = f"cannot read file: {err.strerror or err}"
    for batch in _batches(readable, batch_size):
        try:
            preds = client.predict([b for _, b in batch])
        except InvalidInputError as err:
            if len(batch) == 1:
                results[batch[0][0]].error = f"rejected by the server: {err}"
                continue
            for path, data in batch:  # find the offending file(s)
                try:
                    results[path].prediction = client.predict([data])[0]
                except InvalidInputError as single_err:
                    results[path].error = f"rejected by the server: {single_err}"
            continue
        for (path, _), pred in zip(batch, preds):
            results[path].prediction = pred
    return [results[p] for p in paths]


def format_table(results: Sequence[FileResult]) -> str:
    """A plain-text table: file, crack probability, class (or the error)."""
    width = max([len("file")] + [len(r.path) for r in results])
    lines = [f"{'file':<{width}}  {'p(crack)':>8}  class", f"{'-' * width}  {'-' * 8}  {'-' * 10}"]
    for r in results:
        if r.prediction is None:
            lines.append(f"{r.path:<{width}}  {'-':>8}  ERROR: {r.error}")
        else:
            lines.append(f"{r.path:<{width}}  {r.prediction.crack_probability:>8.4f}  {r.prediction.class_name}")
    return "\n".join(lines)


def run_cli(
    paths: Sequence[str],
    server: str,
    protocol: str = "rest",
    batch_size: int = 16,
    out=None,
    err=None,
    **client_kwargs,
) -> int:
    """Classifies ``paths`` and prints the table; returns the process exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    if not paths:
        print("crack_tf.serving.client: give one or more image files to classify", file=err)
        return 2
    try:
        client = make_client(protocol, server, **client_kwargs)
        results = classify_files(client, paths, batch_size)
    except (ValueError, ImportError) as e:
        print(f"crack_tf.serving.client: {e}", file=err)
        return 2
    except ServingError as e:
        print(f"crack_tf.serving.client: error: {e}", file=err)
        return 2
    print(format_table(results), file=out)
    failed = sum(r.prediction is None for r in results)
    cracks = sum(r.prediction is not None and r.prediction.crack for r in results)
    thresholds = {r.prediction.threshold for r in results if r.prediction is not None}
    used = (f"the model's threshold {thresholds.pop():.4g}" if len(thresholds) == 1 and None not in thresholds
            else "the model's class_id (export without a stored threshold)")
    print(
        f"{len(results) - failed}/{len(results)} files classified via {protocol} {server}: "
        f"{cracks} crack, {len(results) - failed - cracks} background, {failed} failed; crack = {used}",
        file=out,
    )
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    return run_cli(
        argv[1:],
        server=FLAGS.server,
        protocol=FLAGS.protocol,
        batch_size=FLAGS.batch_size,
        model_name=FLAGS.model_name,
        signature=FLAGS.signature,
        version=FLAGS.model_version,
        version_label=FLAGS.version_label or None,
        timeout=FLAGS.timeout,
    )


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("server", os.environ.get("CRACK_TF_SERVER", "localhost:8501"), "host:port of TF Serving (8501 REST, 8500 gRPC by default).")
    flags.DEFINE_enum("protocol", "rest", list(PROTOCOLS), "rest (port 8501) or grpc (port 8500).")
    flags.DEFINE_string("model_name", "crack_tf", "Model name in the server's models.config.")
    flags.DEFINE_string("signature", DEFAULT_SIGNATURE, "Signature taking image_bytes.")
    flags.DEFINE_integer("model_version", None, "Ask for this version (default: the server's latest).")
    flags.DEFINE_string("version_label", "", "Ask for a labelled version, e.g. stable or canary.")
    flags.DEFINE_integer("batch_size", 16, "Images per request (<= the server's max_batch_size).")
    flags.DEFINE_float("timeout", 10.0, "Seconds to wait for each request.")


if __name__ == "__main__":
    from crack_tf import cli

    _define_flags()
    cli.run(main)
