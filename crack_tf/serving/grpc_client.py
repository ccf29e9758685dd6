"""The gRPC client of a TF Serving deployment (``grpcio`` + ``tensorflow-serving-api``, imported
only when used) and the protobuf request / response helpers."""

from __future__ import annotations

from collections.abc import Sequence

from crack_tf.serving import DEFAULT_SIGNATURE, IMAGE_BYTES_INPUT, OUTPUT_NAMES
from crack_tf.serving.predictions import (
    InvalidInputError,
    Prediction,
    ServerUnavailableError,
    ServingError,
    _Client,
    one_line,
)


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
    """Flat values of a ``TensorProto`` (float/int/string fields or ``tensor_content``).

    Hand-written rather than ``tf.make_ndarray``: that one imports all of TensorFlow into the
    client and fails on a proto without ``tensor_shape`` (``tests/test_serving.py`` shows it),
    where this reads every value."""
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


