"""Model zoo: ``crack_tf.models.get(name, **kwargs)`` builds a model by name.

Backend-agnostic Keras 3 code (``keras.ops`` only): importing this package never
imports TensorFlow unless Keras itself runs on the TensorFlow backend.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from crack_tf.models.aspp import ASPP
from crack_tf.models.mixstyle import MixStyle
from crack_tf.models.resnet_aspp import STAGE_ENDS, CaffePreprocess, build_model
from crack_tf.models.zhang2016 import build_zhang2016


def _resnet50(**kwargs) -> keras.Model:
    for key in ("insert_after", "rates", "depth_multiplier", "fusion", "filters", "aspp_impl"):  # (mixstyle kept)
        kwargs.pop(key, None)
    return build_model(insert_after=None, **kwargs)


def _resnet50_aspp(**kwargs) -> keras.Model:
    return build_model(**kwargs)


def _zhang2016(**kwargs) -> keras.Model:
    allowed = {"input_shape", "num_classes", "dropout", "name"}  # no BN, no backbone, no stages to mix
    return build_zhang2016(**{k: v for k, v in kwargs.items() if k in allowed})


_REGISTRY: dict[str, Callable[..., keras.Model]] = {
    "resnet50": _resnet50,
    "resnet50_aspp": _resnet50_aspp,
    "zhang2016": _zhang2016,
}


def names() -> list[str]:
    """Registered model names."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs) -> keras.Model:
    """Builds the model registered as ``name``; unknown options for it are ignored.

    ``resnet50`` ignores ASPP options; ``zhang2016`` ignores ASPP and backbone-weight
    options (it has no pretrained backbone).
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; choose one of {names()}")
    return _REGISTRY[name](**kwargs)


__all__ = ["ASPP", "CaffePreprocess", "MixStyle", "STAGE_ENDS", "build_model", "build_zhang2016", "get", "names"]
