"""Deployment helpers for TensorFlow Serving.

- :mod:`crack_tf.serving.config`: writes a ``models.config`` (``ModelServerConfig`` text
  proto) and validates ``batching_parameters.txt``.
- :mod:`crack_tf.serving.client`: a REST / gRPC command-line client for the exported model.

The SavedModel itself is written by :mod:`crack_tf.export`. Nothing here imports TensorFlow
at module import time; the gRPC client imports ``tensorflow_serving`` only when used.
"""

from __future__ import annotations

import pathlib

#: Folder holding ``batching_parameters.txt`` and the default ``models.config``.
SERVING_DIR = pathlib.Path(__file__).resolve().parent
BATCHING_PARAMETERS_FILE = SERVING_DIR / "batching_parameters.txt"
MODELS_CONFIG_FILE = SERVING_DIR / "models.config"
#: Name of the signature input / outputs of the exported SavedModel (see crack_tf.export).
IMAGE_BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUT_NAMES = ("probabilities", "crack_probability", "class_id", "class_name")
DEFAULT_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
