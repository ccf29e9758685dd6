"""Batch norm folded into the convolution before it, for inference (``--mode=dense``).

In evaluation mode a ``BatchNormalization`` after a ``Conv2D`` is an affine map per output channel,
``y = (conv(x) - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``; it is the same function
as one convolution with the kernel scaled by ``s`` and the bias ``(b - mean) * s + beta``. Folding
removes two elementwise passes over every such activation: on the 2-core CPU (TF 2.21, float32) the
resnet50_aspp dense pass over a 1792-px tile went from 5.7-6.4 s to 5.0-5.2 s (docs/PERFORMANCE.md).

Keras has no such transform (``tensorflow-batchnorm-folding`` on PyPI is tf.keras only), hence this
small one: :func:`conv_bn_pairs` finds the pairs in a functional model's graph (a plain ``Conv2D``
with no activation, called once, whose output feeds only the batch norm), :func:`folded_clone`
re-traces the model with each pair as one convolution; every other layer is reused as it is.
The result is for inference only (the folded batch norms no longer learn).
"""

from __future__ import annotations

from collections import Counter

import keras
import numpy as np


def _history_names(value) -> list[str]:
    """Names of the layers whose outputs a serialised call argument holds (any nesting)."""
    if isinstance(value, dict):
        history = value.get("config", {}).get("keras_history") if value.get("class_name") == "__keras_tensor__" else None
        return [history[0]] if history else [n for v in value.values() for n in _history_names(v)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _history_names(v)]
    return []


def conv_bn_pairs(model: keras.Model) -> dict[str, str]:
    """{conv layer name: batch-norm layer name} of the pairs :func:`folded_clone` folds."""
    config = model.get_config()
    layers = {layer["name"]: layer for layer in config.get("layers", [])}
    consumers: Counter = Counter(_history_names(config.get("output_layers", [])))
    for layer in layers.values():
        for node in layer.get("inbound_nodes", []):
            consumers.update(_history_names(node))
    by_name = {layer.name: layer for layer in model.layers}
    pairs = {}
    for name, layer in layers.items():
        bn, nodes = by_name.get(name), layer.get("inbound_nodes", [])
        if not isinstance(bn, keras.layers.BatchNormalization) or len(nodes) != 1 or bn.axis not in (-1, 3):
            continue
        inputs = _history_names(nodes[0])
        conv = by_name.get(inputs[0]) if len(inputs) == 1 else None
        if (type(conv) is keras.layers.Conv2D and len(layers[conv.name].get("inbound_nodes", [])) == 1
                and consumers[conv.name] == 1 and conv.get_config()["activation"] == "linear"):
            pairs[conv.name] = name
    return pairs


def folded_conv(conv: keras.layers.Conv2D, bn: keras.layers.BatchNormalization) -> keras.layers.Conv2D:
    """A new ``Conv2D`` (with bias) computing ``bn(conv(x))`` of the evaluation-mode batch norm."""
    channels = conv.filters
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones(channels)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros(channels)
    scale = gamma / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    bias = np.asarray(conv.bias, np.float64) if conv.use_bias else np.zeros(channels)
    config = {**conv.get_config(), "use_bias": True}
    folded = keras.layers.Conv2D.from_config(config)
    folded.build((None, None, None, conv.kernel.shape[2]))
    folded.set_weights([(np.asarray(conv.kernel, np.float64) * scale).astype(np.float32),
                        ((bias - np.asarray(bn.moving_mean, np.float64)) * scale + beta).astype(np.float32)])
    return folded


def folded_clone(model: keras.Model, input_tensor) -> keras.Model:
    """``model`` re-traced on ``input_tensor`` with each pair of :func:`conv_bn_pairs` as one convolution."""
    pairs = conv_bn_pairs(model)
    folded_bns = set(pairs.values())
    by_name = {layer.name: layer for layer in model.layers}

    def clone(layer):
        return folded_conv(layer, by_name[pairs[layer.name]]) if layer.name in pairs else layer

    def call(layer, *args, **kwargs):
        return args[0] if layer.name in folded_bns else layer(*args, **kwargs)

    return keras.models.clone_model(model, input_tensors=input_tensor, clone_function=clone, call_function=call)
