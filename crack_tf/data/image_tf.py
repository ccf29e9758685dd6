"""TensorFlow image decoding and transforms (graph-friendly twins of ``image_np``).

Augmentation uses stateless random ops seeded by ``(seed, global element index)``, so each
element's augmentation is reproducible regardless of parallelism, sharding or resumption.
"""

from __future__ import annotations

import tensorflow as tf


def decode_image_tf(bytes_tensor: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG/BMP/GIF/WebP bytes -> uint8 [H, W, 3]; gray/RGBA/16-bit converted (16-bit: >> 8)."""
    image = tf.io.decode_image(bytes_tensor, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _resized_shape(h: tf.Tensor, w: tf.Tensor, size: int) -> tf.Tensor:
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    short = tf.minimum(hf, wf)
    nh = tf.maximum(size, tf.cast(tf.floor(hf * size / short + 0.5), tf.int32))
    nw = tf.maximum(size, tf.cast(tf.floor(wf * size / short + 0.5), tf.int32))
    return tf.stack([nh, nw])


def fit_small_tf(image: tf.Tensor, size: int, small_policy: str = "resize") -> tf.Tensor:
    """Makes both sides >= ``size``: bilinear upscale (shorter side = size) or centred zero pad."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    if small_policy == "resize":

        def grow() -> tf.Tensor:
            out = tf.image.resize(image, _resized_shape(h, w, size), method="bilinear", antialias=False)
            return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

        out = tf.cond(tf.minimum(h, w) < size, grow, lambda: image)
    else:
        ph, pw = tf.maximum(size - h, 0), tf.maximum(size - w, 0)
        out = tf.pad(image, [[ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2], [0, 0]])
    out.set_shape([None, None, 3])
    return out


def eval_transform_tf(image: tf.Tensor, image_size: int, small_policy: str = "resize") -> tf.Tensor:
    """Upscale/pad if the shorter side < S, then centre-crop SxS; uint8 [S, S, 3]."""
    image = fit_small_tf(tf.convert_to_tensor(image, tf.uint8), image_size, small_policy)
    shape = tf.shape(image)
    top, left = (shape[0] - image_size) // 2, (shape[1] - image_size) // 2
    out = image[top : top + image_size, left : left + image_size]
    out.set_shape([image_size, image_size, 3])
    return out


def train_transform_tf(
    image: tf.Tensor,
    seed: tf.Tensor,
    image_size: int,
    small_policy: str = "resize",
    flips: bool = True,
    rot90: bool = True,
    brightness: float = 0.0,
    contrast: float = 0.0,
) -> tf.Tensor:
    """Random crop, flips, rot90, brightness/contrast from a stateless ``seed`` (int64 [2])."""
    draws = tf.random.stateless_uniform([8], seed=tf.cast(seed, tf.int64), dtype=tf.float32)
    image = fit_small_tf(image, image_size, small_policy)
    shape = tf.shape(image)
    top = tf.cast(draws[0] * tf.cast(shape[0] - image_size + 1, tf.float32), tf.int32)
    left = tf.cast(draws[1] * tf.cast(shape[1] - image_size + 1, tf.float32), tf.int32)
    top = tf.minimum(top, shape[0] - image_size)
    left = tf.minimum(left, shape[1] - image_size)
    image = image[top : top + image_size, left : left + image_size]
    if flips:
        image = tf.cond(draws[2] < 0.5, lambda: tf.reverse(image, [1]), lambda: image)
        image = tf.cond(draws[3] < 0.5, lambda: tf.reverse(image, [0]), lambda: image)
    if rot90:
        image = tf.image.rot90(image, tf.cast(draws[4] * 4, tf.int32))
    if brightness or contrast:
        img = tf.cast(image, tf.float32)
        if contrast:
            factor = 1 - contrast + 2 * contrast * draws[6]
            mean = tf.reduce_mean(img, axis=[0, 1], keepdims=True)
            img = (img - mean) * factor + mean
        if brightness:
            img = img + (2 * draws[5] - 1) * brightness * 255
        image = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
    image.set_shape([image_size, image_size, 3])
    return image
