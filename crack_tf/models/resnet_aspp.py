"""ResNet50 with an ASPP module spliced in after one stage.

The backbone is ``keras.applications.ResNet50`` itself: its layers are re-used (not
copied) while the graph is re-traced with :class:`~crack_tf.models.aspp.ASPP` inserted
after the chosen stage end, so weights loaded into the backbone are kept exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
from keras import ops

from crack_tf.choices import MIXSTYLE_STAGES
from crack_tf.models.aspp import ASPP
from crack_tf.models.mixstyle import MixStyle

#: Stage-end layer names of ``keras.applications.ResNet50`` (see shared/PAPER.md).
STAGE_ENDS = {
    "conv1": "pool1_pool",
    "layer1": "conv2_block3_out",
    "layer2": "conv3_block4_out",
    "layer3": "conv4_block6_out",
    "layer4": "conv5_block3_out",
}
#: Channels at each stage end.
STAGE_CHANNELS = {"conv1": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}

IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="crack_tf")
class CaffePreprocess(keras.layers.Layer):
    """ResNet50 "caffe" preprocessing: raw 0-255 RGB -> BGR minus the ImageNet mean."""

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        x = ops.flip(x, axis=-1)  # RGB -> BGR
        return x - ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def keras_cache_dir() -> str:
    """The folder Keras caches downloaded weights in (``$KERAS_HOME/models``)."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "models")


def resolve_weights_path(weights: str | None) -> str | None:
    """Maps ``None | "imagenet" | path`` to a local file, failing fast when absent.

    Never touches the network: ``"imagenet"`` means the file Keras would have cached.
    """
    if weights is None or weights == "":
        return None
    if weights == "imagenet":
        path = os.path.join(keras_cache_dir(), IMAGENET_NOTOP_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"ImageNet weights requested but {IMAGENET_NOTOP_FILE} was not found at "
                f"{path}. This project never downloads weights: copy the Keras ResNet50 "
                f"no-top file there (or set KERAS_HOME), or pass weights=<path to .h5>, "
                f"or weights=None to train from scratch."
            )
        return path
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Backbone weights file not found: {path}. Pass the path of a ResNet50 "
            f"no-top weights file (e.g. {IMAGENET_NOTOP_FILE}, or a .weights.h5 written "
            f"by crack_tf pretraining), 'imagenet' for the Keras cache, or None."
        )
    return path


def _backbone(input_shape: Sequence[int | None], weights_path: str | None) -> keras.Model:
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=tuple(input_shape))
    if weights_path is not None:
        try:
            base.load_weights(weights_path)
        except Exception as err:  # wrong architecture, truncated file, ...
            raise ValueError(
                f"Could not load ResNet50 no-top weights from {weights_path}: {err}"
            ) from err
    return base


def build_model(
    input_shape: Sequence[int | None] = (224, 224, 3),
    insert_after: str | None = "layer1",
    rates: Sequence[int] = (2, 4, 8),
    depth_multiplier: int = 4,
    fusion: str = "max",
    filters: int | None = None,
    weights: str | None = None,
    dropout: float = 0.0,
    num_classes: int = 2,
    aspp_impl: str = "auto",
    bn_momentum: float | None = None,
    mixstyle: Sequence[str] = (),
    mixstyle_p: float = 0.5,
    mixstyle_alpha: float = 0.1,
    name: str | None = None,
) -> keras.Model:
    """Builds ResNet50 (+ ASPP after ``insert_after``) taking raw 0-255 RGB images.

    Args:
        input_shape: ``(H, W, 3)``; spatial dims may be ``None``.
        insert_after: ``"conv1" | "layer1" | ... | "layer4"``, or ``None`` for plain ResNet50.
        rates, depth_multiplier, fusion, filters, aspp_impl: see :class:`ASPP`.
        weights: ``None``, ``"imagenet"`` (the Keras cache file) or a local weights path.
        dropout: dropout rate before the classifier.
        num_classes: classifier outputs (float32 logits).
        bn_momentum: if set, the moving-average momentum of every BatchNorm (Keras'
            ResNet50 uses 0.99; from scratch on small data 0.9 tracks the fast-changing
            statistics better, so evaluation-mode outputs follow training sooner).
        mixstyle: stages (``"conv1"`` ... ``"layer3"``) after whose end (after ASPP where it is
            spliced at the same stage) a :class:`MixStyle` layer mixes the feature statistics of
            a training batch's samples (``mixstyle_p``, ``mixstyle_alpha``); the identity at
            inference.
    """
    if insert_after is not None and insert_after not in STAGE_ENDS:
        raise ValueError(
            f"insert_after must be one of {sorted(STAGE_ENDS)} or None, got {insert_after!r}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    unknown = sorted(set(mixstyle) - set(MIXSTYLE_STAGES))
    if unknown:
        raise ValueError(f"mixstyle stages {unknown}: choose from {list(MIXSTYLE_STAGES)} (not the last stage, "
                         "whose statistics are the classifier's input)")
    mixers = {STAGE_ENDS[stage]: MixStyle(mixstyle_p, mixstyle_alpha, name=f"mixstyle_{stage}") for stage in mixstyle}
    weights_path = resolve_weights_path(weights)
    # Validate ASPP arguments before the (slow) backbone build.
    aspp = None
    if insert_after is not None:
        aspp = ASPP(
            filters=filters,
            rates=rates,
            depth_multiplier=depth_multiplier,
            fusion=fusion,
            impl=aspp_impl,
            name=f"aspp_{insert_after}",
        )
        if filters is not None and filters != STAGE_CHANNELS[insert_after] and insert_after != "layer4":
            raise ValueError(
                f"filters={filters} after {insert_after} would not fit the next stage, "
                f"which expects {STAGE_CHANNELS[insert_after]} channels; leave filters=None"
            )
    base = _backbone(input_shape, weights_path)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = CaffePreprocess(name="caffe_preprocess")(inputs)
    if aspp is None and not mixers:
        features = base(x)  # plain ResNet50: the backbone as one nested model.
    else:
        stage_end = STAGE_ENDS[insert_after] if aspp is not None else None

        def call_layer(layer, *args, **kwargs):
            out = layer(*args, **kwargs)
            out = aspp(out) if layer.name == stage_end else out
            return mixers[layer.name](out) if layer.name in mixers else out

        spliced = keras.models.clone_model(
            base, clone_function=lambda layer: layer, call_function=call_layer
        )
        features = spliced(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    default_name = "resnet50" if aspp is None else f"resnet50_aspp_{insert_after}"
    model = keras.Model(inputs, logits, name=name or default_name)
    if bn_momentum is not None:
        if not 0.0 < bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1), got {bn_momentum}")
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    return model
