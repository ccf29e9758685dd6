"""TF-free loader: a ``keras.utils.PyDataset`` over PIL-decoded files (any Keras backend).

Same element stream semantics as the tf.data folder pipeline: training is an infinite stream
(``num_batches`` is None, like a repeated tf.data dataset: pass ``steps_per_epoch`` to ``fit``;
Keras then neither shuffles batch order nor restarts the index between epochs) whose epochs are
seeded permutations (``np.random.default_rng([seed, epoch])``) of the (oversampled) index list;
element ``g`` of this shard gets augmentation seed ``(seed, g * num_shards + shard_index)``, and
batch ``i`` of a loader built with ``skip_batches=k`` equals batch ``k + i`` of a fresh one.
Never imports TensorFlow.
"""

from __future__ import annotations

import math
import os
import threading

import keras
import numpy as np

from crack_tf.data.config import DataConfig, epoch_indices
from crack_tf.data.image_np import decode_image_np, eval_transform_np, fit_small_np, train_transform_np

# Decoded images, already made >= image_size (the deterministic first step of both
# transforms), shared by every loader of this process: the trainer builds a new loader each
# epoch, and decoding + upscaling is most of the NumPy loader's time. Keyed by the file's
# identity (path, mtime, size), so a changed file is decoded again.
_FITTED: dict[tuple, np.ndarray] = {}
_FITTED_BYTES = [0]
_FITTED_LOCK = threading.Lock()


def fitted_image(path: str, image_size: int, small_policy: str, cache_mb: int) -> np.ndarray:
    """``fit_small_np(decode_image_np(path))``, cached up to ``cache_mb`` MB per process."""
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size, image_size, small_policy)
    image = _FITTED.get(key)
    if image is None:
        image = fit_small_np(decode_image_np(path), image_size, small_policy)
        image.setflags(write=False)
        with _FITTED_LOCK:
            if _FITTED_BYTES[0] + image.nbytes <= cache_mb * 2**20:
                _FITTED[key] = image
                _FITTED_BYTES[0] += image.nbytes
    return image


def enqueued_workers(workers: int) -> int:
    """Keras workers for an infinite training PyDataset whose batch ``i`` must be step ``i``'s whatever
    the worker count: 2 at least, so Keras' enqueuer always serves it. Its index stream survives the
    batch JAX's ``fit`` reads first to build the loss; the plain one-worker generator starts again at
    0 after it, so 1 worker and 3 trained on batches shifted by one step (tested)."""
    return max(2, workers)


class FolderPyDataset(keras.utils.PyDataset):
    """Batches (uint8 [B,S,S,3], int32 [B]). Training: infinite, batch ``i`` is global batch
    ``skip_batches + i`` (``len`` = steps per epoch, for information); eval: finite, ordered,
    remainder kept."""

    def __init__(
        self,
        paths: list[str],
        labels: list[int],
        config: DataConfig,
        training: bool,
        batch_size: int,
        seed: int = 0,
        num_shards: int = 1,
        shard_index: int = 0,
        skip_batches: int = 0,
        steps_per_epoch: int | None = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ):
        super().__init__(workers=enqueued_workers(workers) if training else workers,
                         use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.paths, self.labels = list(paths), np.asarray(labels, np.int32)
        self.config, self.training, self.batch_size = config, training, batch_size
        self.seed, self.num_shards, self.shard_index = seed, num_shards, shard_index
        self.skip_batches = skip_batches
        self._index = epoch_indices(self.labels, config.balance, seed) if training else np.arange(len(paths))
        self._steps = steps_per_epoch or (
            max(1, len(self._index) // batch_size) if training else math.ceil(len(paths) / batch_size)
        )
        self._perm_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self._steps

    @property
    def num_batches(self) -> int | None:
        return None if self.training else self._steps

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            self._perm_cache[epoch] = self._index[np.random.default_rng([self.seed, epoch]).permutation(len(self._index))]
        return self._perm_cache[epoch]

    def element(self, g: int) -> tuple[np.ndarray, int]:
        """Element ``g`` of this shard's training stream (or eval element ``g``)."""
        cfg = self.config
        if not self.training:
            image = fitted_image(self.paths[g], cfg.image_size, cfg.small_policy, cfg.cache_mb)
            return eval_transform_np(image, cfg.image_size, cfg.small_policy), int(self.labels[g])
        epoch, pos = divmod(g, len(self._index))
        i = int(self._perm(epoch)[pos])
        image = train_transform_np(
            fitted_image(self.paths[i], cfg.image_size, cfg.small_policy, cfg.cache_mb),
            self.seed, g * self.num_shards + self.shard_index,
            cfg.image_size, cfg.small_policy, cfg.flips, cfg.rot90, cfg.brightness, cfg.contrast,
        )  # fmt: skip
        return image, int(self.labels[i])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.training:
            start = (self.skip_batches + i) * self.batch_size
            stop = start + self.batch_size
        else:
            if i >= self._steps:
                raise IndexError(i)
            start = (self.skip_batches + i) * self.batch_size
            stop = min(start + self.batch_size, len(self.paths))
        items = [self.element(g) for g in range(start, stop)]
        return np.stack([x for x, _ in items]), np.asarray([y for _, y in items], np.int32)
