"""How the inspection commands (heatmap, predict, report) score a photo: ``--mode`` and the compile cache.

* ``--mode=dense``: one fully convolutional pass per photo (``crack_tf.inspection.dense``); windows on whole
  feature cells, so the stride is rounded down to a whole number of cells (printed).
* ``--mode=windows``: every window cut, resized and scored on its own (``crack_tf.inspection.heatmap``), at
  exactly ``--stride``. On the JAX backend the windows are cut and resized on the device
  (``crack_tf.inspection.device_windows``); elsewhere with NumPy, as before.
* ``--mode=auto``: dense where the model allows it (a ``.keras`` model ending in global average
  pooling + a dense head), else windows. The default is :data:`DEFAULT_MODE` (``windows`` until
  dense agrees with it on >= 99% of the val windows of a trained model: docs/INSPECTION.md); the
  first line of each command says which ran.
* ``--compile_cache_dir``: on JAX, compiled inference is kept on disk across processes (JAX's
  persistent cache, the trainer's; default ``$JAX_COMPILATION_CACHE_DIR`` or
  ``~/.cache/crack_tf/jax``; ``none`` = off). Batches and tiles have fixed shapes per photo size,
  so a second run over the same kind of photos compiles nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np

from crack_tf.inspection.heatmap import Heatmap, sliding_heatmap

MODES = ("auto", "dense", "windows")
DEFAULT_MODE = "windows"


def define_scan_flags() -> None:
    """``--mode`` and ``--compile_cache_dir`` of the inspection commands."""
    from absl import flags

    flags.DEFINE_enum("mode", DEFAULT_MODE, list(MODES), "How photos are scored: dense = one fully convolutional "
                      "pass, about 4x less work (stride rounded down to whole feature cells); windows = every window "
                      "on its own at exactly --stride; auto = dense where the model allows it, else windows.")
    flags.DEFINE_string("compile_cache_dir", "", "JAX backend: persistent compilation cache folder ('' = "
                        "$JAX_COMPILATION_CACHE_DIR or ~/.cache/crack_tf/jax, 'none' = off).")


def start_compile_cache(setting: str) -> str | None:
    """Turns on JAX's persistent compilation cache (a no-op on other backends); returns its folder."""
    if keras.backend.backend() != "jax":
        return None
    from crack_tf.training.runtime import enable_compile_cache

    return enable_compile_cache(setting)


@dataclasses.dataclass
class PhotoScanner:
    """photo (uint8 H x W x 3) -> Heatmap, and a line saying how."""

    mode: str
    note: str
    scan: Callable[[np.ndarray], Heatmap]

    def __call__(self, photo: np.ndarray) -> Heatmap:
        return self.scan(photo)


def make_scanner(predictor, mode: str = DEFAULT_MODE, window: int = 128, stride: int = 64, batch: int = 64,
                 image_size: int | None = None, device: bool | None = None) -> PhotoScanner:
    """The scanner of ``--mode`` for a loaded predictor (``device``: cut windows on the device; None
    = on the JAX backend). ValueError for ``--mode=dense`` with a model that cannot run it."""
    from crack_tf.inspection import dense

    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}; choose one of {MODES}")
    size = int(image_size or predictor.image_size or 0)
    if not size:
        raise ValueError(f"{predictor.path}: the model's input size is unknown")
    reason = dense.unsupported(predictor.model)
    if mode == "dense" and reason:
        raise ValueError(f"--mode=dense: {reason}")
    if mode != "windows" and not reason:
        scorer = dense.DenseScorer(predictor, window, stride)
        note = scorer.describe() + ("" if stride == round(scorer.stride_px) else f" (--stride={stride})")
        return PhotoScanner("dense", note, scorer.heatmap)
    on_device = (keras.backend.backend() == "jax" and predictor.kind == "keras") if device is None else device
    note = f"windows: every {stride} px, cut and resized {'on the device' if on_device else 'with NumPy'}"
    if mode == "auto":
        note += f" (dense not possible: {reason})"

    def scan(photo: np.ndarray) -> Heatmap:
        return sliding_heatmap(predictor.predict, photo, size, window, stride, batch, device=on_device)

    return PhotoScanner("windows", note, scan)
