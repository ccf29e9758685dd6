"""Loaders of the photos source: a training crop stream and fixed evaluation tiles.

Both loaders run the same NumPy / Pillow code, so they give the same batches:

* ``CropPyDataset`` / ``crop_dataset_tf``: batch ``i`` is global step ``skip_batches + i`` of
  :meth:`CropSampler.batch` (an infinite stream, like the folder pipelines; pass
  ``steps_per_epoch`` to ``fit``). Keras' PyDataset workers (threads) render whole batches in
  parallel; tf.data maps the same function with ``tf.numpy_function`` (AUTOTUNE parallelism,
  deterministic order).
* ``ArrayPyDataset`` / ``array_dataset_tf``: ordered batches of in-memory uint8 images
  (remainder kept), for the fixed val / train-eval tiles.

Only the ``*_tf`` functions import TensorFlow, and only when called.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from crack_tf.data.crops import CropSampler
from crack_tf.data.pipeline_np import enqueued_workers
from crack_tf.data.shared_batches import BatchRing, SlotHandle, fork_workers, slots_for_queue

_INFINITE = 2**62


class CropPyDataset(keras.utils.PyDataset):
    """Training crops (uint8 [B,S,S,3], int32 [B]); infinite (``len`` = steps per epoch).

    ``processes``: Keras' worker processes (forked: the decoded photos are shared, not copied)
    instead of threads; batches come back through a shared-memory ring
    (:mod:`crack_tf.data.shared_batches`; ``shared_memory=False``: pickled through a pipe, as
    Keras does by default). The batches are the same either way.
    """

    def __init__(self, sampler: CropSampler, batch_size: int, num_shards: int = 1, shard_index: int = 0,
                 skip_batches: int = 0, steps_per_epoch: int = 1, workers: int = 1, max_queue_size: int = 0,
                 processes: bool = False, shared_memory: bool = True):
        super().__init__(workers=enqueued_workers(workers), use_multiprocessing=processes,
                         max_queue_size=max_queue_size or max(10, 2 * workers))
        self.sampler, self.batch_size = sampler, batch_size
        self.num_shards, self.shard_index, self.skip_batches = num_shards, shard_index, skip_batches
        self._steps = steps_per_epoch
        self.ring = None
        if processes and shared_memory and fork_workers():
            s = sampler.options.image_size
            self.ring = BatchRing([((batch_size, s, s, 3), np.uint8), ((batch_size,), np.int32)],
                                  slots_for_queue(self.max_queue_size))

    def __len__(self) -> int:
        return self._steps

    @property
    def num_batches(self) -> int | None:
        return None

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray] | SlotHandle:
        step = self.skip_batches + i
        if self.ring is None or self.ring.in_owner:
            return self.sampler.batch(step, self.batch_size, self.num_shards, self.shard_index)
        self.sampler.batch(step, self.batch_size, self.num_shards, self.shard_index, out=self.ring.views(i))
        return self.ring.handle(i)  # in a forked worker: unpickles in the trainer as the batch


class ArrayPyDataset(keras.utils.PyDataset):
    """Ordered batches of in-memory images and labels (finite, remainder kept)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int):
        super().__init__()
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    @property
    def num_batches(self) -> int:
        return len(self)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.images[sl], self.labels[sl]


def crop_dataset_tf(sampler: CropSampler, batch_size: int, num_shards: int = 1, shard_index: int = 0,
                    skip_batches: int = 0):
    """The crop stream as a ``tf.data.Dataset`` (batches rendered by ``tf.numpy_function``)."""
    import tensorflow as tf

    s = sampler.options.image_size

    def render(step):
        return sampler.batch(int(step), batch_size, num_shards, shard_index)

    def load(step):
        images, labels = tf.numpy_function(render, [step], (tf.uint8, tf.int32), stateful=False)
        images.set_shape([batch_size, s, s, 3])
        labels.set_shape([batch_size])
        return images, labels

    ds = tf.data.Dataset.range(skip_batches, _INFINITE).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = True  # batch order must not depend on thread timing (exact resume)
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.prefetch(tf.data.AUTOTUNE).with_options(opts)


def array_dataset_tf(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """In-memory images as an ordered, batched ``tf.data.Dataset``."""
    import tensorflow as tf

    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(opts)
