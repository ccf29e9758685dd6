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

import keras
import numpy as np

from crack_tf.data.config import DataConfig, epoch_indices
from crack_tf.data.image_np import decode_image_np, eval_transform_np, train_transform_np


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
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
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
            return eval_transform_np(decode_image_np(self.paths[g]), cfg.image_size, cfg.small_policy), int(
                self.labels[g]
            )
        epoch, pos = divmod(g, len(self._index))
        i = int(self._perm(epoch)[pos])
        image = train_transform_np(
            decode_image_np(self.paths[i]), self.seed, g * self.num_shards + self.shard_index,
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
