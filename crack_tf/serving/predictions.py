"""What a TF Serving deployment of crack_tf answers, and the REST client (standard library only).

The gRPC client is in :mod:`crack_tf.serving.grpc_client` (it builds on this module, never the
other way round); :func:`crack_tf.serving.client.make_client` picks one of the two, and the
command line is in :mod:`crack_tf.serving.client`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Sequence

from crack_tf.serving import DEFAULT_SIGNATURE, IMAGE_BYTES_INPUT

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
