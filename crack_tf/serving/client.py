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

import os
import sys
from collections.abc import Iterable, Sequence

from crack_tf.serving import DEFAULT_SIGNATURE
from crack_tf.serving.grpc_client import GrpcClient, _tensor_values, predict_request  # noqa: F401 (re-exported)
from crack_tf.serving.predictions import (  # noqa: F401 (re-exported)
    PROTOCOLS,
    FileResult,
    InvalidInputError,
    Prediction,
    RestClient,
    ServerUnavailableError,
    ServingError,
    _Client,
    one_line,
)


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
