"""NumPy / PIL image decoding and transforms (TF-free twins of ``image_tf``).

Bilinear resizing is implemented here with TensorFlow's exact half-pixel formula (not PIL's
filter), so ``eval_transform_np`` matches ``eval_transform_tf`` up to float rounding (max abs
difference <= 1 on uint8). Augmentation is a pure function of ``(seed, index)`` through
``np.random.default_rng([seed, index])``.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None  # size limits are enforced by the listing (DataConfig.max_pixels)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 HxWx3. 16-bit is scaled like TF (value >> 8); alpha is dropped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        if img.mode == "I" and arr.max(initial=0) <= 255:  # 8-bit data stored as int32
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            arr8 = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=-1)
    if img.mode == "F":
        arr8 = np.clip(np.asarray(img), 0, 255).round().astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=-1)
    if img.mode != "RGB":
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def decode_image_np(path_or_bytes: str | os.PathLike | bytes) -> np.ndarray:
    """Decodes an image file or its bytes with PIL into RGB uint8 [H, W, 3] (first frame)."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(src) as img:
            img.load()
            return pil_to_rgb(img)


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """Shape after upscaling so the shorter side equals ``size`` (aspect kept)."""
    short = min(h, w)
    return max(size, int(np.floor(h * size / short + 0.5))), max(size, int(np.floor(w * size / short + 0.5)))


def axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper input index, float32 fraction) of each output position: TF's half-pixel bilinear."""
    scale = np.float32(in_size / out_size)
    pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(pos)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.int64)
    return lower, upper, (pos - floor).astype(np.float32)


def resize_bilinear_np(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres, as ``tf.image.resize(antialias=False)``; uint8 out."""
    h, w = image.shape[:2]
    y0, y1, fy = axis_weights(h, out_h)
    x0, x1, fx = axis_weights(w, out_w)
    # TF's formula: top = lerp_x(row y0), bottom = lerp_x(row y1), out = top + (bottom - top) * fy;
    # lerp_x is applied once to every input row and the rows are gathered afterwards (same values).
    left = np.take(image, x0, axis=1).astype(np.float32)
    right = np.take(image, x1, axis=1).astype(np.float32)
    rows = left + (right - left) * fx[None, :, None]
    top, bottom = np.take(rows, y0, axis=0), np.take(rows, y1, axis=0)
    out = top + (bottom - top) * fy[:, None, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def fit_small_np(image: np.ndarray, size: int, small_policy: str = "resize") -> np.ndarray:
    """Makes both sides >= ``size``: bilinear upscale (shorter side = size) or centred zero pad."""
    h, w = image.shape[:2]
    if min(h, w) >= size:
        return image
    if small_policy == "resize":
        return resize_bilinear_np(image, *resized_shape(h, w, size))
    ph, pw = max(size - h, 0), max(size - w, 0)
    return np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))


def eval_transform_np(image: np.ndarray, image_size: int, small_policy: str = "resize") -> np.ndarray:
    """Upscale/pad if the shorter side < S, then centre-crop SxS; uint8 [S, S, 3]."""
    image = fit_small_np(np.asarray(image, dtype=np.uint8), image_size, small_policy)
    h, w = image.shape[:2]
    top, left = (h - image_size) // 2, (w - image_size) // 2
    return np.ascontiguousarray(image[top : top + image_size, left : left + image_size])


def train_transform_np(
    image: np.ndarray,
    seed: int,
    index: int,
    image_size: int,
    small_policy: str = "resize",
    flips: bool = True,
    rot90: bool = True,
    brightness: float = 0.0,
    contrast: float = 0.0,
) -> np.ndarray:
    """Random crop, flips, 90-degree rotation, brightness/contrast; pure function of (seed, index)."""
    rng = np.random.default_rng([int(seed), int(index)])
    draws = rng.random(8)  # fixed number of draws: every option uses its own slot
    image = fit_small_np(np.asarray(image, dtype=np.uint8), image_size, small_policy)
    h, w = image.shape[:2]
    top = int(draws[0] * (h - image_size + 1))
    left = int(draws[1] * (w - image_size + 1))
    image = image[top : top + image_size, left : left + image_size]
    if flips and draws[2] < 0.5:
        image = image[:, ::-1]
    if flips and draws[3] < 0.5:
        image = image[::-1]
    if rot90:
        image = np.rot90(image, int(draws[4] * 4))
    if brightness or contrast:
        img = image.astype(np.float32)
        if contrast:
            factor = np.float32(1 - contrast + 2 * contrast * draws[6])
            flat = img.reshape(-1, 3)
            mean = np.ones(len(flat), np.float32) @ flat / np.float32(len(flat))  # BLAS: fast
            img = (img - mean) * factor + mean
        if brightness:
            img = img + np.float32((2 * draws[5] - 1) * brightness * 255)
        image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)
