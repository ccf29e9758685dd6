"""Fully convolutional window scores (``--mode=dense``): one network pass over the photo, not one per window.

Window scoring resizes each ``window`` x ``window`` crop to the model input ``image_size``
(scale f = image_size / window) and runs the whole model on it. The models here end in global
average pooling and a dense head, so the same score can be read from one pass of the model's
convolutional part over the photo resized once by f: a window is ``image_size / s`` cells of the
feature map (s = the network's output stride, 32 for ResNet50: 7 cells at 224 px), its score the
average pooling of those cells followed by the model's own dense head applied to every position
(a 1x1 convolution), then the temperature and test-time views as ``Predictor.predict`` does.

* **Stride.** Windows lie on whole cells: the photo-pixel stride is k * s / f (224 px for 128-px
  windows: 18.3 px per cell, k = 3 -> 54.9 px). k is the largest whole number of cells whose stride
  is not above ``--stride`` (at least 1), so the grid is never sparser than asked; the last row /
  column is moved to end at the border as in window scoring.
* **Scale.** The photo is resized to whole cells on each side (n = round(side * f / s)), which
  changes the scale by at most 1 / (2n) (0.8% for a 544-px side; 0 for 256, 384, 512, 1024,
  4096); window origins are given in photo pixels, rounded.
* **Tiles.** Large photos run in overlapping tiles of at most ``max_tile`` resized pixels a side
  (bounded memory, one shape per photo size so nothing recompiles within a flight); each window
  is read from the tile where it lies farthest from the tile's edges, with at least
  ``margin_cells`` of photo around it wherever the photo has them.
* **What differs** from window scoring: inside the photo a window's border cells see the photo
  around it (window scoring sees zero padding there), and the network's padding only happens at
  the photo's (or a tile's) border; docs/INSPECTION.md has the measured agreement.

The model must be a chain of layers ending in GlobalAveragePooling2D, optional Dropout and a
Dense head (``resnet50`` and ``resnet50_aspp`` are); :func:`unsupported` says why another is not.
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np

from crack_tf.data.image_np import axis_weights
from crack_tf.evaluation.calibration import calibrated_probability, logit_margin
from crack_tf.inspection.device_windows import DevicePhoto
from crack_tf.inspection.fold_bn import folded_clone
from crack_tf.inspection.heatmap import Heatmap, _pad_to_window, window_starts
from crack_tf.predictor import TTA_OPS, apply_view


def _chain(model: keras.Model) -> list | None:
    """The model's top-level layers if each takes the previous one's output (one input each)."""
    config = model.get_config()
    names = [layer["name"] for layer in config.get("layers", [])]
    if len(names) != len(model.layers):
        return None
    for i, layer in enumerate(config["layers"][1:], 1):
        nodes = layer.get("inbound_nodes", [])
        args = nodes[0].get("args", []) if len(nodes) == 1 else []
        history = args[0].get("config", {}).get("keras_history") if len(args) == 1 and isinstance(args[0], dict) else None
        if not history or history[0] != names[i - 1]:
            return None
    return model.layers


def unsupported(model) -> str | None:
    """Why dense scoring cannot run ``model`` (None when it can)."""
    if model is None:
        return "a SavedModel has no layers to run fully convolutionally"
    layers = _chain(model) if isinstance(model, keras.Model) else None
    if not layers:
        return "the model is not a chain of layers"
    gaps = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not gaps or not isinstance(layers[-1], keras.layers.Dense):
        return "the model does not end in global average pooling and a dense head"
    if not all(isinstance(layer, keras.layers.Dropout) for layer in layers[gaps[-1] + 1 : -1]):
        return "layers other than dropout lie between the global average pooling and the head"
    return None


def build_dense_model(model: keras.Model, image_size: int, fold: bool = True) -> tuple[keras.Model, int, int]:
    """(model of [B, H, W, 3] -> logits [B, H/s - c + 1, W/s - c + 1, classes] at every cell
    position, output stride s, window cells c); the layers (and weights) are the model's own, with
    ``fold`` the batch norms of a nested backbone folded into their convolutions (``fold_bn``)."""
    reason = unsupported(model)
    if reason:
        raise ValueError(f"--mode=dense: {reason}")
    layers = model.layers
    gap = max(i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    inputs = keras.Input((None, None, 3), name="photo")
    x = inputs
    for layer in layers[1:gap]:
        if isinstance(layer, keras.Model):  # a nested model checks its saved input shape: re-trace it on any size
            any_size = keras.Input((None, None, layer.input_shape[-1]))
            layer = (folded_clone(layer, any_size) if fold else
                     keras.models.clone_model(layer, input_tensors=any_size, clone_function=lambda inner: inner))
        x = layer(x)
    probe = keras.Model(inputs, x).compute_output_spec(keras.KerasTensor((1, image_size, image_size, 3))).shape
    cells = probe[1]
    if not cells or image_size % cells:
        raise ValueError(f"--mode=dense: the feature map of a {image_size}-px input is {cells} cells, not a whole "
                         "divisor of the input")
    pooled = keras.layers.AveragePooling2D(cells, strides=1, dtype=layers[gap].dtype_policy, name="window_pool")(x)
    logits = layers[-1](pooled)
    return keras.Model(inputs, logits, name=f"{model.name}_dense"), image_size // cells, cells


def axis_plan(n: int, max_tile: int, cells: int, stride: int, margin: int) -> tuple[int, np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """Along one axis of ``n`` cells: (tile length, tile starts, window origins, owning tile of each
    origin). Tiles of at most ``max_tile`` cells overlap so every window lies ``margin`` cells inside
    one of them wherever the photo allows; the lengths are rounded up to 4 cells (fewer shapes)."""
    origins = window_starts(n, cells, stride)
    if n <= max_tile:
        return n, np.zeros(1, np.int64), origins, np.zeros(len(origins), np.int64)
    reach = max_tile - 2 * margin - cells + 1  # window origins a tile serves with the full margin
    if reach < 1:
        raise ValueError(f"tiles of {max_tile} cells cannot hold a {cells}-cell window with {margin} cells of margin")
    count = math.ceil((n - max_tile) / reach) + 1
    length = min(n, max_tile, 4 * math.ceil((n + (count - 1) * (2 * margin + cells - 1)) / count / 4))
    starts = np.round(np.linspace(0, n - length, count)).astype(np.int64)
    slack = np.minimum(origins[:, None] - starts[None], starts[None] + length - cells - origins[:, None])
    return length, starts, origins, np.argmax(np.where(slack >= 0, slack, -n), axis=1)


class DenseScorer:
    """Window grids of photos from one fully convolutional pass per tile (see the module docstring)."""

    def __init__(self, predictor, window: int = 128, stride: int = 64, max_tile: int | None = None,
                 margin_cells: int = 4):
        if window < 1 or stride < 1:
            raise ValueError(f"--window ({window}) and --stride ({stride}) must be >= 1")
        if predictor.tta not in TTA_OPS:
            raise ValueError(f"tta={predictor.tta!r}; choose one of {tuple(TTA_OPS)}")
        self.image_size, self.window, self.temperature = int(predictor.image_size), window, predictor.temperature
        self.views = TTA_OPS[predictor.tta]
        self.model, self.cell, self.cells = build_dense_model(predictor.model, self.image_size)
        self.scale = self.image_size / window
        cell_px = self.cell / self.scale  # photo pixels per cell
        self.stride_cells = max(1, int(stride / cell_px + 1e-9))
        self.stride_px = self.stride_cells * cell_px
        if max_tile is None:
            from crack_tf.model_precision import accelerator_available

            max_tile = 4096 if accelerator_available() else 2048
        self.max_tile_cells = max(self.cells, max_tile // self.cell)
        self.margin = margin_cells

    def describe(self) -> str:
        return (f"dense: windows every {self.stride_cells} cells = {self.stride_px:.1f} px, "
                f"{self.cells} cells of {self.cell / self.scale:.1f} px a window, tiles <= "
                f"{self.max_tile_cells * self.cell} px")

    def heatmap(self, photo: np.ndarray) -> Heatmap:
        """The window grid of ``photo`` (uint8 H x W x 3): p(crack) of windows on whole cells."""
        started = time.perf_counter()
        height, width = photo.shape[:2]
        padded = _pad_to_window(photo, self.window)
        ph, pw = padded.shape[:2]
        n_y, n_x = (max(self.cells, int(round(side * self.scale / self.cell))) for side in (ph, pw))
        plan_y, plan_x = (axis_plan(n, self.max_tile_cells, self.cells, self.stride_cells, self.margin)
                          for n in (n_y, n_x))
        weights_y, weights_x = axis_weights(ph, n_y * self.cell), axis_weights(pw, n_x * self.cell)
        device = DevicePhoto(padded)
        grid = np.zeros((len(plan_y[2]), len(plan_x[2])), np.float32)
        for iy, ty in enumerate(plan_y[1]):
            rows = plan_y[3] == iy
            for ix, tx in enumerate(plan_x[1]):
                cols = plan_x[3] == ix
                if rows.any() and cols.any():
                    probs = self._tile(device, _span(weights_y, ty, plan_y[0], self.cell),
                                       _span(weights_x, tx, plan_x[0], self.cell))
                    grid[np.ix_(rows, cols)] = probs[np.ix_(plan_y[2][rows] - ty, plan_x[2][cols] - tx)]
        ys, xs = (_photo_origins(origins, n, self.cells, side, self.window)
                  for origins, side, n in ((plan_y[2], ph, n_y), (plan_x[2], pw, n_x)))
        return Heatmap(grid, ys, xs, self.window, height, width, time.perf_counter() - started)

    def _tile(self, device: DevicePhoto, rows: tuple, cols: tuple) -> np.ndarray:
        """p(crack) [positions y, positions x] of every window position of one tile (mean over views)."""
        image = device.sample(rows, cols)
        probs = []
        for view in self.views:
            logits = np.asarray(self.model.predict_on_batch(apply_view(image, view)), np.float32)
            logits = apply_view(logits, view[::-1], np)[0]
            margin = logit_margin(logits.reshape(-1, logits.shape[-1]))
            probs.append(calibrated_probability(margin, self.temperature).reshape(logits.shape[:2]))
        return np.mean(probs, axis=0).astype(np.float32)


def _span(weights: tuple[np.ndarray, ...], start: int, length: int, cell: int) -> tuple[np.ndarray, ...]:
    """The resize weights of output cells [start, start + length) as one batch row [1, length * cell]."""
    part = slice(start * cell, (start + length) * cell)
    return tuple(w[part][None] for w in weights)


def _photo_origins(origins: np.ndarray, n: int, cells: int, side: int, window: int) -> np.ndarray:
    """Window origins in photo pixels (rounded) of origins in cells; the last ones end at the border."""
    px = np.round(origins * side / n).astype(np.int64)
    return np.clip(np.where(origins + cells >= n, side - window, px), 0, side - window)
