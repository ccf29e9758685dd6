"""Input pipelines for crack / background patches (label 1 = crack, 0 = background).

Importing this package never imports TensorFlow: ``decode_image_tf`` and ``eval_transform_tf``
are loaded lazily on first use, and the NumPy loader works on any Keras backend.
"""

from __future__ import annotations

from crack_tf.data.config import DataConfig, InputSplit
from crack_tf.data.image_np import decode_image_np, eval_transform_np, train_transform_np
from crack_tf.data.input import make_input
from crack_tf.data.listing import IMAGE_EXTS, check_file, list_folder

_TF_NAMES = ("decode_image_tf", "eval_transform_tf", "train_transform_tf")


def __getattr__(name: str):
    if name in _TF_NAMES:
        from crack_tf.data import image_tf

        return getattr(image_tf, name)
    raise AttributeError(f"module 'crack_tf.data' has no attribute {name!r}")


__all__ = [
    "IMAGE_EXTS",
    "DataConfig",
    "InputSplit",
    "check_file",
    "decode_image_np",
    "decode_image_tf",
    "eval_transform_np",
    "eval_transform_tf",
    "list_folder",
    "make_input",
    "train_transform_np",
    "train_transform_tf",
]
