"""crack_tf: crack / background classification of concrete image patches.

ResNet50 with an ASPP module of dilated depthwise-separable convolutions, in Keras 3.
"""

from crack_tf.choices import CLASS_NAMES  # noqa: F401  (the public crack_tf.CLASS_NAMES)

__version__ = "0.1.0"


def __getattr__(name: str):
    """``crack_tf.load_model``: loaded on first use (importing crack_tf stays light)."""
    if name == "load_model":
        from crack_tf.predictor import load_model

        return load_model
    raise AttributeError(f"module 'crack_tf' has no attribute {name!r}")
