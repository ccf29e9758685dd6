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
* ``--refine_band`` (dense only): the windows whose dense p(crack) lies within the band of the
  verdict threshold, where dense and windows disagree most, are scored again window by window at
  the same origins (exact windows-mode values there); 0 = off.
* ``--compile_cache_dir``: on JAX, compiled inference is kept on disk across processes (JAX's
  persistent cache, the trainer's; default ``$JAX_COMPILATION_CACHE_DIR`` or
  ``~/.cache/crack_tf/jax``; ``none`` = off). Batches and tiles have fixed shapes per photo size,
  so a second run over the same kind of photos compiles nothing.
"""

from __future__ import annotations

import dataclasses
import time
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
    flags.DEFINE_float("refine_band", 0.0, "Dense scoring: windows whose p(crack) is within this of the threshold "
                       "are scored again window by window (exact windows-mode values where dense is least sure); "
                       "0 = off.", lower_bound=0.0, upper_bound=1.0)
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
                 image_size: int | None = None, device: bool | None = None, refine_band: float = 0.0,
                 threshold: float | None = None) -> PhotoScanner:
    """The scanner of ``--mode`` for a loaded predictor (``device``: cut windows on the device; None
    = on the JAX backend; ``refine_band`` around ``threshold``, default the predictor's: see the module
    docstring). ValueError for ``--mode=dense`` with a model that cannot run it, and for a refine band
    with ``--mode=windows`` or outside [0, 1]."""
    from crack_tf.inspection import dense

    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}; choose one of {MODES}")
    if not 0.0 <= refine_band <= 1.0:
        raise ValueError(f"--refine_band={refine_band}: choose a band in [0, 1] (0 = off, 1 = every window)")
    if refine_band and mode == "windows":
        raise ValueError("--refine_band refines dense scores: it needs --mode=dense or --mode=auto")
    size = int(image_size or predictor.image_size or 0)
    if not size:
        raise ValueError(f"{predictor.path}: the model's input size is unknown")
    reason = dense.unsupported(predictor.model)
    if mode == "dense" and reason:
        raise ValueError(f"--mode=dense: {reason}")
    on_device = (keras.backend.backend() == "jax" and predictor.kind == "keras") if device is None else device
    if mode != "windows" and not reason:
        scorer = dense.DenseScorer(predictor, window, stride)
        note = scorer.describe() + ("" if stride == round(scorer.stride_px) else f" (--stride={stride})")
        if not refine_band:
            return PhotoScanner("dense", note, scorer.heatmap)
        t = predictor.threshold if threshold is None else threshold
        note += f"; windows with p within {refine_band:g} of {t:.4g} scored again window by window"
        return PhotoScanner("dense", note, refined(scorer.heatmap, predictor.predict, size, window, batch, on_device,
                                                   t, refine_band))
    note = f"windows: every {stride} px, cut and resized {'on the device' if on_device else 'with NumPy'}"
    if mode == "auto":
        note += f" (dense not possible: {reason}{'; --refine_band unused' if refine_band else ''})"

    def scan(photo: np.ndarray) -> Heatmap:
        return sliding_heatmap(predictor.predict, photo, size, window, stride, batch, device=on_device)

    return PhotoScanner("windows", note, scan)


def refined(dense_scan: Callable[[np.ndarray], Heatmap], predict, image_size: int, window: int, batch: int,
            device: bool, threshold: float, band: float) -> Callable[[np.ndarray], Heatmap]:
    """``dense_scan`` with the windows whose p(crack) is within ``band`` of ``threshold`` replaced by
    their window-by-window scores at the same origins (``crack_tf.inspection.heatmap.score_windows_at``)."""
    from crack_tf.inspection.heatmap import score_windows_at

    def scan(photo: np.ndarray) -> Heatmap:
        heatmap = dense_scan(photo)
        started = time.perf_counter()
        iy, ix = np.nonzero(np.abs(heatmap.grid - np.float32(threshold)) < band)
        if not len(iy):
            return heatmap
        grid = heatmap.grid.copy()
        grid[iy, ix] = score_windows_at(predict, photo, heatmap.ys[iy], heatmap.xs[ix], image_size, window, batch,
                                        device=device)
        return dataclasses.replace(heatmap, grid=grid, seconds=heatmap.seconds + time.perf_counter() - started)

    return scan
