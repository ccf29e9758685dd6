"""One loader for trained models: ``crack_tf.load_model(path)`` -> :class:`Predictor`.

``path`` is a ``.keras`` file written by ``crack_tf.train`` or a SavedModel folder written by
``crack_tf.export``. The predictor knows the model's input size, small-image policy, class
names and its operating point (threshold and temperature picked on val, see
``crack_tf.evaluation.calibration``), read from the ``.keras`` file's ``crack_tf.json``
(``crack_tf.model_meta``) or the SavedModel's ``assets/crack_tf_metadata.json`` (input size and
policy also from ``run.json`` beside older files); a model without a stored operating point gets
threshold 0.5, and ``threshold_source`` says so. ``tta`` None = the mode the threshold was picked
with.

``Predictor.predict(images)`` takes uint8 [B, S, S, 3] (raw RGB at the model size) and returns
the calibrated crack probability [B]. Test-time augmentation (``tta``): ``flips`` averages the
probabilities of the 4 flips, ``d4`` of the 8 flips / 90-degree rotations.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from crack_tf.choices import INFERENCE_PRECISIONS, TTA_MODES
from crack_tf.model_meta import DEFAULT_THRESHOLD, read_metadata

ENDPOINTS = ("predict_images", "serving_default")  # SavedModel endpoints tried, in order
SAVEDMODEL_METADATA = "crack_tf_metadata.json"


# The views of each TTA mode as operations on [B, H, W, C] (x / y flip, transpose), applied in
# order; each is its own inverse, so a view of a map is undone by its operations in reverse order.
TTA_OPS = {"none": [()], "flips": [(), ("x",), ("y",), ("y", "x")]}
TTA_OPS["d4"] = TTA_OPS["flips"] + [("t",) + view for view in TTA_OPS["flips"]]


def apply_view(x, view: tuple[str, ...], xp=None):
    """``x`` [B, H, W, C] under one view of :data:`TTA_OPS` (``xp``: numpy, default ``keras.ops``)."""
    if xp is None:
        from keras import ops as xp
    for op in view:
        x = xp.swapaxes(x, 1, 2) if op == "t" else xp.flip(x, axis=2 if op == "x" else 1)
    return x


def tta_views(images: np.ndarray, mode: str) -> list[np.ndarray]:
    """The batch under each transform of ``mode`` (``none``: just the batch) [B, H, W, C] each."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta={mode!r}; choose one of {TTA_MODES}")
    if not isinstance(images, np.ndarray):  # a device array: the same views without leaving the device
        return [apply_view(images, view) for view in TTA_OPS[mode]]
    return [np.ascontiguousarray(apply_view(images, view, np)) for view in TTA_OPS[mode]]


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclasses.dataclass
class Predictor:
    """A loaded model with its input contract and operating point."""

    path: str
    kind: str  # "keras" or "savedmodel"
    image_size: int | None
    small_policy: str
    class_names: list[str]
    threshold: float
    threshold_source: str
    temperature: float
    tta: str
    metadata: dict
    model: Any = None  # the keras.Model of a .keras file
    _probabilities: Callable[[np.ndarray], np.ndarray] | None = None  # one view -> calibrated p [B]
    precision: str = "as exported"  # the Keras dtype policy a .keras model computes in

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Calibrated p(crack) float32 [B] of uint8 / float [B, S, S, 3] images (mean over TTA views);
        a ``.keras`` model also takes a Keras backend tensor (on the device: it stays there)."""
        if self.kind != "keras" or not hasattr(images, "shape"):
            images = np.asarray(images)
        probs = [self._probabilities(v) for v in tta_views(images, self.tta)]
        return np.mean(probs, axis=0).astype(np.float32)

    def is_crack(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs) > np.float32(self.threshold)

    def describe(self) -> str:
        return (f"threshold {self.threshold:.4g} ({self.threshold_source}), temperature {self.temperature:.3g}, "
                f"tta {self.tta}, precision {self.precision}")


def _operating_point(meta: dict) -> tuple[float, str, float]:
    """(threshold, where it came from, temperature) stored in the model file itself."""
    point = meta.get("operating_point")
    if point:
        site = point.get("site_calibration")
        where = (f"a site sample of {site.get('examples', '?')} tiles ({str(site.get('date', '?'))[:10]}, "
                 "crack_tf.calibrate)") if site else "val"
        return (float(point["threshold"]), f"stored in the model: {point.get('rule', '?')} on {where}",
                float(point.get("temperature", 1.0)))
    return DEFAULT_THRESHOLD, "default: the model stores no threshold", 1.0


def _keras(path: str, tta: str | None, precision: str | None) -> Predictor:
    import keras

    import crack_tf.models  # noqa: F401  (registers the custom layers)
    from crack_tf import model_precision as mp
    from crack_tf.choices import CLASS_NAMES
    from crack_tf.evaluation.calibration import calibrated_probability, logit_margin

    try:
        saved = mp.saved_policy(mp.read_config(path))
        policy = saved if precision is None else mp.choose_policy(
            precision, saved, mp.accelerator_available(), keras.backend.backend(), mp.native_bf16_cpu())
        model = (keras.saving.load_model(path, compile=False) if policy == saved
                 else mp.load_in_policy(path, policy))
    except Exception as e:  # noqa: BLE001  (re-raised with the path named)
        raise ValueError(f"{path}: cannot load this .keras file ({type(e).__name__}: {e})") from e
    if model.output_shape[-1] not in (1, 2):
        raise ValueError(f"{path}: output shape {model.output_shape}; expected 2 logits or 1 crack logit")
    meta = read_metadata(path)
    run = read_json(os.path.join(os.path.dirname(os.path.abspath(path)), "run.json"))
    threshold, source, temperature = _operating_point(meta)

    def probabilities(images: np.ndarray) -> np.ndarray:
        images = images.astype("float32") if isinstance(images, np.ndarray) else keras.ops.cast(images, "float32")
        logits = keras.ops.convert_to_numpy(model.predict_on_batch(images))
        return calibrated_probability(logit_margin(logits), temperature)

    tta = tta or meta.get("tta") or "none"
    return Predictor(path, "keras", meta.get("image_size") or run.get("image_size") or model.input_shape[1],
                     meta.get("small_policy") or run.get("small_policy") or "resize",
                     list(meta.get("class_names") or run.get("class_names") or CLASS_NAMES), threshold, source,
                     temperature, tta, meta, model, probabilities, policy)


def _endpoint_input(fn: Any) -> tuple[str | None, Any]:
    """(keyword name or None for positional, TensorSpec or None) of an endpoint's single input."""
    signature = getattr(fn, "structured_input_signature", None)  # concrete signature function
    if signature:
        args, kwargs = signature
        if kwargs:
            return next(iter(kwargs.items()))
        if args:
            return None, args[0]
    specs = getattr(fn, "input_signature", None)  # tf.function endpoint
    return None, (specs[0] if specs else None)


def _png_bytes(images: np.ndarray) -> list[bytes]:
    import io

    from PIL import Image

    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(im, np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _savedmodel(path: str, tta: str | None) -> Predictor:
    import keras
    import tensorflow as tf

    from crack_tf import metrics as M
    from crack_tf.choices import CLASS_NAMES

    layer, endpoint = None, None
    for endpoint in ENDPOINTS:
        try:
            layer = keras.layers.TFSMLayer(path, call_endpoint=endpoint)
            break
        except ValueError:
            continue
    if layer is None:
        raise ValueError(f"{path}: the SavedModel has none of the endpoints {ENDPOINTS}")
    fn = layer.call_endpoint_fn
    input_name, input_spec = _endpoint_input(fn)
    meta = read_json(os.path.join(path, "assets", SAVEDMODEL_METADATA))
    run = read_json(os.path.join(os.path.dirname(os.path.abspath(path.rstrip("/"))), "run.json"))
    size = meta.get("image_size") or run.get("image_size")
    if size is None and input_spec is not None and input_spec.shape.rank == 4:
        size = input_spec.shape[1]
    string_input = input_spec is not None and input_spec.dtype == tf.string
    threshold, source, temperature = _operating_point(meta)

    def probabilities(images: np.ndarray) -> np.ndarray:  # the export applies the temperature itself
        x = tf.constant(_png_bytes(images)) if string_input else tf.constant(images, tf.float32)
        out = fn(**{input_name: x}) if input_name else layer(x)
        if isinstance(out, dict):
            out = out.get("probabilities", out.get("crack_probability", next(iter(out.values()))))
        return keras.ops.convert_to_numpy(M.crack_probability(out, from_logits=False))

    meta = dict(meta, endpoint=endpoint)
    tta = tta or "none"  # an export bakes its test-time augmentation into the signature
    return Predictor(path, "savedmodel", size, meta.get("small_policy") or run.get("small_policy") or "resize",
                     list(meta.get("class_names") or CLASS_NAMES), threshold, source, temperature, tta, meta,
                     None, probabilities)


def load_model(path: str, tta: str | None = None, precision: str | None = None) -> Predictor:
    """Loads a ``.keras`` file or a SavedModel folder; raises ValueError / FileNotFoundError.

    ``precision`` (``.keras`` only): None = the saved dtype policy; ``auto`` / ``float32`` /
    ``bf16`` as in :mod:`crack_tf.model_precision` (``auto``: float32 on a CPU without native bf16).
    """
    if tta is not None and tta not in TTA_MODES:
        raise ValueError(f"--tta={tta!r}; choose one of {TTA_MODES}")
    if precision is not None and precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"--precision={precision!r}; choose one of {INFERENCE_PRECISIONS}")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"--model={path} is a folder without saved_model.pb: pass a .keras file or a SavedModel "
                             "folder")
        if precision not in (None, "auto"):
            raise ValueError(f"--precision={precision}: a SavedModel computes in the precision it was exported "
                             "with; pass the .keras file to choose")
        return _savedmodel(path, tta)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--model={path}: no such file or folder")
    if not path.endswith(".keras"):
        raise ValueError(f"--model={path} is neither a .keras file nor a SavedModel folder")
    return _keras(path, tta, precision)
