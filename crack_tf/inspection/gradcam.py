"""Grad-CAM (Selvaraju et al., 2017): where in a tile the model sees the crack.

The map of an image is ``ReLU(sum_k alpha_k A_k)`` over the channels ``k`` of a feature map
``A`` (the target layer), with ``alpha_k`` the spatial mean of d(crack logit - background logit)
/ dA_k, upsampled to the input and scaled to [0, 1].

The target layer is found automatically:
* models whose head is global average pooling + a dense layer (ResNet50 and ResNet50 + ASPP,
  nested backbone or spliced clone alike): ``A`` is the pooled feature map and the gradient is
  exactly ``(w_crack - w_background) / (H W)``, so Grad-CAM equals CAM (Zhou et al., 2016) and
  needs nothing but a forward pass: it runs on every Keras backend;
* other models (e.g. Zhang 2016: convolutions, flatten, dense): ``A`` is the last 4-D output
  before the flatten, and the gradient comes from the backend's autodiff (TensorFlow, JAX or
  PyTorch).

:func:`explain` writes the overlay of a scored tile or photo window (``--explain`` of predict / report).
"""

from __future__ import annotations

import os

import keras
import numpy as np
from PIL import Image


def _gap_head(model: keras.Model):
    """(GlobalAveragePooling2D layer, final Dense layer) when the head is GAP (+ dropout) + Dense."""
    layers = model.layers
    dense = layers[-1]
    if not isinstance(dense, keras.layers.Dense):
        return None
    for layer in reversed(layers[:-1]):
        if isinstance(layer, keras.layers.Dropout):
            continue
        return (layer, dense) if isinstance(layer, keras.layers.GlobalAveragePooling2D) else None
    return None


def _last_feature_layer(model: keras.Model) -> keras.layers.Layer:
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4 and not isinstance(layer, keras.layers.InputLayer):
            return layer
    raise ValueError(f"model {model.name} has no 4-D feature map for Grad-CAM")


def _margin(logits):
    return logits[:, 1] - logits[:, 0] if logits.shape[-1] == 2 else logits[:, 0]


def _gradients(head: keras.Model, features: np.ndarray) -> np.ndarray:
    """d margin / d features through ``head``, with the current backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(a)
            score = tf.reduce_sum(_margin(tf.cast(head(a, training=False), tf.float32)))
        return tape.gradient(score, a).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def score(a):
            return jnp.sum(_margin(jnp.asarray(head(a, training=False), jnp.float32)))

        return np.asarray(jax.grad(score)(jnp.asarray(features)))
    if backend == "torch":
        import torch

        a = torch.tensor(features, requires_grad=True)
        _margin(head(a, training=False).float()).sum().backward()
        return a.grad.detach().cpu().numpy()
    raise ValueError(f"Grad-CAM through gradients is not implemented for the {backend} backend")


class GradCAM:
    """Grad-CAM maps of a crack classifier (raw 0-255 RGB input at its input size)."""

    def __init__(self, model: keras.Model, method: str = "auto"):
        """``method``: "auto" (the CAM shortcut where it is exact, else gradients) or "gradients"."""
        if method not in ("auto", "gradients"):
            raise ValueError(f"method={method!r}; choose auto or gradients")
        self.model = model
        gap = _gap_head(model)
        target = gap[0].input if gap is not None else _last_feature_layer(model).output
        self.features = keras.Model(model.inputs, target)
        self.channel_weights, self.head = None, None
        if gap is not None and method == "auto":
            kernel = keras.ops.convert_to_numpy(gap[1].kernel)
            self.channel_weights = (kernel[:, 1] - kernel[:, 0]) if kernel.shape[1] == 2 else kernel[:, 0]
            self.kind = "cam (global average pooling + dense: exact Grad-CAM)"
        else:
            self.head = keras.Model(target, model.output)
            self.kind = f"grad-cam through {keras.backend.backend()} gradients"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Maps float32 [B, H, W] in [0, 1] at the input size of uint8 / float [B, H, W, 3] images."""
        x = np.asarray(images, np.float32)
        feats = np.asarray(keras.ops.convert_to_numpy(self.features.predict_on_batch(x)), np.float32)
        if self.channel_weights is not None:  # the gradient of the margin is w / (H W): same map
            alpha = np.broadcast_to(self.channel_weights[None], (len(x), feats.shape[-1]))
        else:
            alpha = _gradients(self.head, feats).mean(axis=(1, 2))
        cam = np.maximum(np.einsum("bhwk,bk->bhw", feats, alpha), 0.0)
        out = np.empty(x.shape[:3], np.float32)
        for i, c in enumerate(cam):
            peak = float(c.max())
            c = (c / peak if peak > 0 else c).astype(np.float32)
            out[i] = np.asarray(Image.fromarray(c, mode="F").resize((x.shape[2], x.shape[1]), Image.BILINEAR))
        return np.clip(out, 0.0, 1.0)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB: the image with the map in a red-yellow scale (hot = high)."""
    heat = np.stack([np.ones_like(cam), cam, np.zeros_like(cam)], -1) * 255.0
    w = alpha * cam[..., None]
    return np.clip(np.asarray(image, np.float32) * (1 - w) + heat * w, 0, 255).astype(np.uint8)


def explain(result, image_size: int, window: int, out_dir: str, cam: GradCAM, name: str | None = None) -> str:
    """Writes the Grad-CAM overlay of a scored tile (or of a photo's highest window) next to it
    (``<name>_gradcam.png``, ``result``: a ``crack_tf.inspection.scan.ScanResult`` with its pixels);
    returns its path."""
    from crack_tf.data.image_np import resize_bilinear_np

    image = result.image
    if result.kind == "photo":
        y, x = result.best_window
        image = resize_bilinear_np(np.ascontiguousarray(image[y : y + window, x : x + window]), image_size, image_size)
    heat = cam(image[None])[0]
    os.makedirs(out_dir, exist_ok=True)
    name = name or os.path.splitext(os.path.basename(result.path))[0]
    path = os.path.join(out_dir, name + "_gradcam.png")
    Image.fromarray(np.concatenate([image, overlay(image, heat)], axis=1)).save(path)
    return path
