"""The pieces AdaBN's pass kinds share (:mod:`crack_tf.training.adabn`,
:mod:`crack_tf.training.adabn_cached`): a layer's input statistics, pooled over batches, recorded by
temporarily wrapping layers' ``call``, and a pass that ends once the layer measured has seen its input."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import keras
import numpy as np
from keras import ops


class _Stop(BaseException):  # not an Exception: Keras' traceback helpers pass it through untouched
    """Ends an eager forward pass once the layer being measured has seen its input."""


class _Moments:
    """Per-channel mean and sum of squared deviations pooled over batches (float64)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, mean, m2, n) -> None:
        mean = np.asarray(ops.convert_to_numpy(mean), np.float64).reshape(-1)
        m2 = np.asarray(ops.convert_to_numpy(m2), np.float64).reshape(-1)
        n = int(np.asarray(ops.convert_to_numpy(n)).reshape(-1)[0])
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / self.n


def _moments(layer, inputs):
    """(float32 inputs, per-channel mean with kept dims, sum of squared deviations, element count per
    channel: a float32 scalar tensor, as the batch size may be unknown while tracing)."""
    x = ops.cast(inputs, "float32")
    axis = layer.axis % len(x.shape)
    axes = tuple(a for a in range(len(x.shape)) if a != axis)
    mean = ops.mean(x, axis=axes, keepdims=True)
    count = ops.cast(ops.size(x), "float32") / float(x.shape[axis])
    return x, mean, ops.sum(ops.square(x - mean), axis=axes), count


@contextlib.contextmanager
def _wrapped(layers: list, make_call: Callable) -> Iterator[None]:
    """Temporarily replaces each layer's ``call`` by ``make_call(layer, original_call)``."""
    try:
        for layer in layers:
            object.__setattr__(layer, "call", make_call(layer, type(layer).call.__get__(layer)))
        yield
    finally:
        for layer in layers:
            if "call" in vars(layer):
                object.__delattr__(layer, "call")


def _batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """``images`` in float32 batches of ``batch_size`` (the last one shorter), as every pass feeds them."""
    for start in range(0, len(images), batch_size):
        yield np.asarray(images[start : start + batch_size], np.float32)


def _forward(model: keras.Model, images: np.ndarray, batch_size: int) -> None:
    for batch in _batches(images, batch_size):
        try:
            model(batch, training=False)
        except _Stop:
            pass


def _batch_normalised(layer, x, mean, m2, n):
    """``layer``'s output normalised by its batch's own statistics (training-mode BatchNorm)."""
    out = ops.batch_normalization(
        x, ops.reshape(mean, (-1,)), m2 / n, axis=layer.axis, epsilon=layer.epsilon,
        offset=ops.cast(layer.beta, "float32") if layer.center else None,
        scale=ops.cast(layer.gamma, "float32") if layer.scale else None)
    return ops.cast(out, layer.compute_dtype)


def _recording(record: Callable, batch_stats: bool, stop_at=None) -> Callable:
    """A ``call`` wrapper (for :func:`_wrapped`) that hands its layer's input statistics to
    ``record(layer, mean, m2, count)``, then normalises by them (``batch_stats``) or as the layer
    does; a pass ends (:class:`_Stop`) right after ``stop_at`` is measured."""

    def make(layer, original):
        def call(inputs, training=None, mask=None):
            x, mean, m2, n = _moments(layer, inputs)
            record(layer, mean, m2, n)
            if layer is stop_at:
                raise _Stop
            if batch_stats:
                return _batch_normalised(layer, x, mean, m2, n)
            return original(inputs, training=training, mask=mask)
        return call

    return make
