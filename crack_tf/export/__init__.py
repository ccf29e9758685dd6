"""Export of trained models: a versioned SavedModel for TensorFlow Serving (this module) and
TFLite flatbuffers (:mod:`crack_tf.export.tflite`); the command lines are in
:mod:`crack_tf.export.cli` (``python -m crack_tf.export``) and ``python -m crack_tf.export.tflite``.

Example::

    python -m crack_tf.export --model=runs/exp1/best.keras --export_dir=exports/crack_tf

writes ``exports/crack_tf/<N>/`` (``N`` = highest existing version + 1, or ``--version``)
with two signatures (Keras 3 ``keras.export.ExportArchive``):

- ``serving_default``: ``image_bytes`` string [B] of encoded JPEG/PNG/BMP/GIF files, decoded
  and center-cropped in the graph exactly as in evaluation (``crack_tf.data.decode_image_tf`` +
  ``eval_transform_tf``); an image whose shorter side is below the input size is first brought
  up to it as :data:`SMALL_IMAGE_POLICIES` says (``resize`` or ``pad``, stored in the metadata);
- ``predict_images``: ``images`` float32 [B, S, S, 3], raw 0-255 RGB already at model size;

both returning ``probabilities`` float32 [B, 2], ``crack_probability`` float32 [B],
``is_crack`` bool [B] (``crack_probability > threshold``), ``threshold`` float32 [B],
``class_id`` int32 [B] and ``class_name`` string [B] (the class ``is_crack`` decides). The
probabilities are calibrated with the temperature stored in the ``.keras`` file and, with a
test-time augmentation (``--tta``, default: the one the threshold was picked with), averaged
over the flipped / rotated views; the threshold is the model's stored operating point
(``--threshold`` overrides it; 0.5 for a model without one). Bytes that are not an image fail
the request with ``INVALID_ARGUMENT`` naming the offending element. The version folder also
holds ``assets/crack_tf_metadata.json`` (class names, input size, small_policy, operating
point, training config and metrics from ``run.json`` next to the model) and, when
tensorflow-serving-api is installed, ``assets.extra/tf_serving_warmup_requests``. The folder is written under a
temporary name and renamed at the end, so a running server never sees a half-written version.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil

import keras

import crack_tf
from crack_tf.serving import DEFAULT_SIGNATURE, IMAGE_BYTES_INPUT, IMAGES_INPUT, IMAGES_SIGNATURE

METADATA_FILE = "crack_tf_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP (+ RIFF....WEBP)
#: ``small_policy``: what ``serving_default`` does with a decoded image whose shorter side is below
#: ``image_size``, before the centre ``image_size`` crop (``crack_tf.data.image_tf.fit_small_tf``,
#: the training run's own evaluation transform). ``predict_images`` takes images already at size.
SMALL_IMAGE_POLICIES = {
    "resize": "bilinear upscale, aspect ratio kept, until the shorter side is image_size",
    "pad": "centred black (zero) padding of each short side up to image_size; the pixels are not scaled",
}


def read_run_json(model_path: str) -> dict:
    """``run.json`` next to the model (written by crack_tf.train), or ``{}``.

    Falls back to the trainer's ``config.json`` (flags only) while a run has no run.json yet.
    """
    folder = os.path.dirname(os.path.abspath(model_path))
    path = os.path.join(folder, "run.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    path = os.path.join(folder, "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
        return {"config": cfg, **{k: cfg[k] for k in ("image_size", "small_policy") if k in cfg}}
    return {}


def next_version(export_dir: str) -> int:
    """Highest numeric sub-folder of ``export_dir`` + 1 (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def _model_image_size(model: keras.Model) -> int | None:
    shape = model.input_shape
    h, w = shape[1], shape[2]
    if h is not None and h != w:
        raise ValueError(f"the model input is not square ({h}x{w}); crack_tf exports square inputs only")
    return h


def build_metadata(
    model: keras.Model,
    run: dict | None = None,
    image_size: int | None = None,
    small_policy: str | None = None,
    source: str | None = None,
    model_meta: dict | None = None,
    tta: str | None = None,
    threshold: float | None = None,
) -> dict:
    """Metadata JSON: explicit arguments win over the ``.keras`` file's own metadata
    (``model_meta``), which wins over ``run.json``, which wins over the model."""
    from crack_tf.model_meta import DEFAULT_THRESHOLD
    from crack_tf.predictor import TTA_MODES

    run = run or {}
    model_meta = model_meta or {}
    point = dict(model_meta.get("operating_point") or {})
    tta = tta or model_meta.get("tta") or "none"
    if tta not in TTA_MODES:
        raise ValueError(f"--tta={tta!r}; choose one of {TTA_MODES}")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"--threshold={threshold} must be in [0, 1]")
        point = {**point, "threshold": threshold, "rule": "--threshold at export"}
    model_size = _model_image_size(model)
    size = image_size or model_meta.get("image_size") or run.get("image_size") or model_size
    if size is None:
        raise ValueError("the model accepts any input size: pass --image_size (the eval crop size)")
    if model_size is not None and size != model_size:
        raise ValueError(f"--image_size={size} does not match the model input size {model_size}")
    policy = small_policy or model_meta.get("small_policy") or run.get("small_policy") or "resize"
    if policy not in SMALL_IMAGE_POLICIES:
        raise ValueError(f"small_policy must be 'resize' or 'pad', got {policy!r}")
    class_names = list(model_meta.get("class_names") or run.get("class_names") or crack_tf.CLASS_NAMES)
    if len(class_names) != model.output_shape[-1]:
        raise ValueError(f"{len(class_names)} class names {class_names} for a model with {model.output_shape[-1]} outputs")
    import tensorflow as tf

    return {
        "model_name": model.name,
        "class_names": class_names,
        "crack_class_id": class_names.index("crack") if "crack" in class_names else len(class_names) - 1,
        "image_size": int(size),
        "small_policy": policy,
        "input": "raw 0-255 RGB; serving_default takes encoded image bytes",
        "threshold": float(point.get("threshold", DEFAULT_THRESHOLD)),
        "temperature": float(point.get("temperature", 1.0)),
        "tta": tta,
        "operating_point": point or None,
        "signatures": {
            DEFAULT_SIGNATURE: {"inputs": {IMAGE_BYTES_INPUT: "string [B]"}},
            IMAGES_SIGNATURE: {"inputs": {IMAGES_INPUT: f"float32 [B,{size},{size},3]"}},
            "outputs": {
                "probabilities": "float32 [B,C]",
                "crack_probability": "float32 [B]",
                "is_crack": "bool [B]",
                "threshold": "float32 [B]",
                "class_id": "int32 [B]",
                "class_name": "string [B]",
            },
        },
        "source_model": os.path.abspath(source) if source else None,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"crack_tf": crack_tf.__version__, "keras": keras.__version__, "tensorflow": tf.__version__},
        "training": {k: run[k] for k in ("config", "metrics", "versions") if k in run},
    }


def build_archive(model: keras.Model, metadata: dict):
    """A ``keras.export.ExportArchive`` with the two signatures described in the module doc."""
    import tensorflow as tf

    from crack_tf.data import decode_image_tf, eval_transform_tf

    size, policy = metadata["image_size"], metadata["small_policy"]
    names = tf.constant(metadata["class_names"])
    crack_id = metadata["crack_class_id"]
    threshold, temperature = float(metadata.get("threshold", 0.5)), float(metadata.get("temperature", 1.0))

    def views(images):  # the test-time augmentation of crack_tf.predictor.tta_views, in the graph
        out = [images]
        if metadata.get("tta", "none") in ("flips", "d4"):
            out += [tf.reverse(images, [2]), tf.reverse(images, [1]), tf.reverse(images, [1, 2])]
        if metadata.get("tta") == "d4":
            t = tf.transpose(images, [0, 2, 1, 3])
            out += [t, tf.reverse(t, [2]), tf.reverse(t, [1]), tf.reverse(t, [1, 2])]
        return out

    def outputs(images):
        check = tf.debugging.assert_positive(
            tf.shape(images)[0], message="crack_tf: empty batch; send at least one image"
        )
        with tf.control_dependencies([check]):
            images = tf.identity(tf.cast(images, tf.float32))
        probs = tf.add_n([
            tf.nn.softmax(tf.cast(model(v, training=False), tf.float32) / temperature, axis=-1) for v in views(images)
        ]) / len(views(images))
        crack = probs[:, crack_id]
        is_crack = crack > threshold
        class_id = tf.where(is_crack, crack_id, 1 - crack_id)
        return {
            "probabilities": probs,
            "crack_probability": crack,
            "is_crack": is_crack,
            "threshold": tf.fill(tf.shape(crack), tf.constant(threshold, tf.float32)),
            "class_id": class_id,
            "class_name": tf.gather(names, class_id),
        }

    def decode_one(args):
        data, index = args
        head = tf.strings.join([tf.strings.substr(data, 0, 12), "\0" * 12])
        ok = tf.reduce_any([tf.equal(tf.strings.substr(head, 0, len(m)), m) for m in _MAGIC])
        ok = ok | (tf.equal(tf.strings.substr(head, 0, 4), "RIFF") & tf.equal(tf.strings.substr(head, 8, 4), "WEBP"))
        message = tf.strings.join([
            f"crack_tf: {IMAGE_BYTES_INPUT}[", tf.strings.as_string(index), "] (",
            tf.strings.as_string(tf.strings.length(data)), " bytes) is not a JPEG, PNG, BMP, GIF or WebP "
            "image; send the encoded file contents (REST: base64 in a b64 object)",
        ])
        check = tf.debugging.Assert(ok, [message], name="check_image_bytes")
        with tf.control_dependencies([check]):
            image = decode_image_tf(tf.identity(data))
        return eval_transform_tf(image, size, policy)

    def serving_default(image_bytes):
        index = tf.range(tf.shape(image_bytes, out_type=tf.int64)[0])
        images = tf.map_fn(
            decode_one, (image_bytes, index), fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8)
        )
        return outputs(images)

    def predict_images(images):
        return outputs(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        DEFAULT_SIGNATURE, serving_default, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)]
    )
    archive.add_endpoint(
        IMAGES_SIGNATURE,
        predict_images,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=IMAGES_INPUT)],
    )
    return archive


def _sample_png(size: int, seed: int = 0) -> bytes:
    import numpy as np
    import tensorflow as tf

    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return tf.io.encode_png(image).numpy()


def _write_warmup(version_dir: str, model_name: str, size: int) -> bool:
    """TF Serving warmup record (one PNG through serving_default); False if the API is missing."""
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        return False
    import tensorflow as tf

    from crack_tf.serving.grpc_client import predict_request

    req = predict_request([_sample_png(size)], model_name)
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
    extra = os.path.join(version_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
        writer.write(log.SerializeToString())
    return True


def export_saved_model(
    model: keras.Model,
    export_dir: str,
    metadata: dict,
    version: int | None = None,
    overwrite: bool = False,
    warmup: bool = True,
    serving_name: str = "crack_tf",
) -> str:
    """Writes ``<export_dir>/<version>/`` atomically and returns its path."""
    version = next_version(export_dir) if version is None else version
    if version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} exists; pick another --version (or omit it) or pass --overwrite")
    tmp = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")  # non-numeric: ignored by TF Serving
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(export_dir, exist_ok=True)
    try:
        build_archive(model, metadata).write_out(tmp, verbose=False)
        assets = os.path.join(tmp, "assets")
        os.makedirs(assets, exist_ok=True)
        with open(os.path.join(assets, METADATA_FILE), "w", encoding="utf-8") as fh:
            json.dump({**metadata, "export_version": version}, fh, indent=2, default=str)
        if warmup:
            _write_warmup(tmp, serving_name, metadata["image_size"])
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def verify_export(model: keras.Model, version_dir: str, size: int, atol: float = 1e-4, metadata: dict | None = None
                  ) -> float:
    """Max |p_savedmodel - p_keras| over both signatures on a random PNG (the Keras side with the
    same temperature and test-time augmentation); raises if > atol or is_crack disagrees."""
    import numpy as np
    import tensorflow as tf

    from crack_tf.evaluation.calibration import calibrated_probability, logit_margin
    from crack_tf.predictor import tta_views

    metadata = metadata or {}
    png = _sample_png(size, seed=1)
    image = tf.io.decode_png(png).numpy()[None].astype("float32")
    margins = np.stack([logit_margin(keras.ops.convert_to_numpy(model(v, training=False)))
                        for v in tta_views(image, metadata.get("tta", "none"))])
    expected = calibrated_probability(margins, metadata.get("temperature", 1.0))
    loaded = tf.saved_model.load(version_dir)
    got_bytes = loaded.signatures[DEFAULT_SIGNATURE](**{IMAGE_BYTES_INPUT: tf.constant([png])})
    got_images = loaded.signatures[IMAGES_SIGNATURE](**{IMAGES_INPUT: tf.constant(image)})
    diff = max(
        float(np.abs(got_bytes["crack_probability"].numpy() - expected).max()),
        float(np.abs(got_images["crack_probability"].numpy() - expected).max()),
    )
    threshold = metadata.get("threshold", 0.5)
    for got in (got_bytes, got_images):
        if bool(got["is_crack"].numpy()[0]) != bool(got["crack_probability"].numpy()[0] > np.float32(threshold)):
            raise RuntimeError("exported is_crack disagrees with crack_probability > threshold")
    if diff > atol:
        raise RuntimeError(f"exported SavedModel differs from the Keras model by {diff:.2e} > {atol:g}")
    return diff


def export_model_file(
    model_path: str,
    export_dir: str,
    version: int | None = None,
    image_size: int | None = None,
    small_policy: str | None = None,
    tta: str | None = None,
    threshold: float | None = None,
    precision: str = "float32",
    overwrite: bool = False,
    warmup: bool = True,
    serving_name: str = "crack_tf",
    run: dict | None = None,
) -> tuple[str, dict, keras.Model]:
    """Exports a ``.keras`` file with its stored operating point (what ``python -m crack_tf.export``
    does); ``run``: the training's run.json (default: the one beside the file). ``precision``:
    ``float32`` / ``bf16`` / ``saved``. Returns (version folder, metadata, the Keras model)."""
    from crack_tf.model_meta import read_metadata
    from crack_tf.predictor import load_model

    predictor = load_model(model_path, precision=None if precision == "saved" else precision)
    if predictor.model is None:
        raise ValueError(f"--model={model_path} is a SavedModel already; export takes the .keras file")
    metadata = build_metadata(predictor.model, read_run_json(model_path) if run is None else run, image_size,
                              small_policy, source=model_path, model_meta=read_metadata(model_path), tta=tta,
                              threshold=threshold)
    metadata["precision"] = predictor.precision
    path = export_saved_model(predictor.model, export_dir, metadata, version, overwrite, warmup, serving_name)
    return path, metadata, predictor.model


def quiet_tf_logs() -> None:
    """WARNING-level absl logging (TF's INFO lines) unless --verbosity was given."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
