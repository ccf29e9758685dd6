"""Windows cut and resized on the device: the decoded photo goes there once, pixels never come back.

``gather_resize`` samples a photo with the evaluation's bilinear formula
(``crack_tf.data.image_np.resize_bilinear_np``: TF's half-pixel centres, no antialiasing, the
x pass first, rounded to whole 0-255 values) at any batch of output rows and columns, in
``keras.ops`` only (every backend). :class:`DevicePhoto` holds one photo on the device, flattened
and padded to a multiple of :data:`BUCKET_PX` pixels so photos of similar size share one compiled
function (on JAX the sampler is ``jax.jit``-compiled once per bucket and batch shape).
:func:`window_batches` cuts the windows of ``crack_tf.inspection.heatmap`` that way (the fast path of
``--mode=windows`` on JAX); ``crack_tf.inspection.dense`` resizes its tiles with the same sampler.

Same pixels as the NumPy path up to float rounding: on the JAX CPU backend the batches are equal;
a fused multiply-add on another device can move a value by 1 where the NumPy result lies exactly
on a .5 (``tests/test_dense.py`` checks |difference| <= 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache

import keras
import numpy as np
from keras import ops

from crack_tf.data.image_np import axis_weights

BUCKET_PX = 1 << 22  # photos are padded to a multiple of 4 Mpx: one compiled sampler per bucket


def compiled(fn: Callable) -> Callable:
    """``fn`` compiled for the backend where that pays (JAX: ``jax.jit``); else ``fn`` itself."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def gather_resize(flat, width, r0, r1, fy, c0, c1, fx):
    """float32 [B, h, w, 3]: bilinear samples of the photo ``flat`` ([>= H*W, 3] uint8, row-major,
    ``width`` = W) at input rows ``r0`` / ``r1`` [B, h] with weights ``fy`` [B, h] and input columns
    ``c0`` / ``c1`` [B, w] with ``fx`` [B, w]; rounded and clipped to 0-255 like the NumPy resize."""

    def take(rows, cols):
        return ops.cast(ops.take(flat, rows[:, :, None] * width + cols[:, None, :], axis=0), "float32")

    fx = fx[:, None, :, None]
    top_left, top_right = take(r0, c0), take(r0, c1)
    top = top_left + (top_right - top_left) * fx
    bottom_left, bottom_right = take(r1, c0), take(r1, c1)
    bottom = bottom_left + (bottom_right - bottom_left) * fx
    out = top + (bottom - top) * fy[:, :, None, None]
    return ops.clip(ops.round(out), 0.0, 255.0)


@lru_cache(maxsize=1)
def _sampler() -> Callable:
    return compiled(gather_resize)


class DevicePhoto:
    """One uint8 photo [H, W, 3] on the device, flattened and padded to a pixel bucket."""

    def __init__(self, photo: np.ndarray):
        self.height, self.width = photo.shape[:2]
        n = self.height * self.width
        flat = np.zeros((-(-n // BUCKET_PX) * BUCKET_PX, 3), np.uint8)
        flat[:n] = np.asarray(photo, np.uint8).reshape(n, 3)
        self.flat = ops.convert_to_tensor(flat)
        self._width = ops.convert_to_tensor(np.int32(self.width))

    def sample(self, rows: tuple[np.ndarray, ...], cols: tuple[np.ndarray, ...]):
        """float32 [B, h, w, 3] of ``rows`` = (r0, r1, fy) [B, h] and ``cols`` = (c0, c1, fx) [B, w]."""
        r0, r1, fy = rows
        c0, c1, fx = cols
        return _sampler()(self.flat, self._width, r0.astype(np.int32), r1.astype(np.int32), fy.astype(np.float32),
                          c0.astype(np.int32), c1.astype(np.int32), fx.astype(np.float32))


def _offsets(starts: np.ndarray, weights: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """(lower, upper, fraction) [len(starts), size] of windows starting at ``starts``."""
    lower, upper, frac = weights
    return starts[:, None] + lower[None], starts[:, None] + upper[None], np.broadcast_to(frac, (len(starts), len(frac)))


def window_batches(photo: np.ndarray, top: np.ndarray, left: np.ndarray, window: int, size: int,
                   batch: int) -> Iterator[tuple[object, int]]:
    """(device batch float32 [batch, size, size, 3], number of real windows) of the windows at
    (top[i], left[i]), as ``crack_tf.inspection.heatmap._windows`` gives them (the last batch padded
    with the first window)."""
    device = DevicePhoto(photo)
    weights = axis_weights(window, size)
    top, left = np.asarray(top, np.int64), np.asarray(left, np.int64)
    for start in range(0, len(top), batch):
        y, x = top[start : start + batch], left[start : start + batch]
        real = len(y)
        if real < batch:
            y, x = np.pad(y, (0, batch - real)), np.pad(x, (0, batch - real))
        yield device.sample(_offsets(y, weights), _offsets(x, weights)), real
