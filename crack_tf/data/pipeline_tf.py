"""tf.data pipelines (TF Model Garden order).

file-level shard -> seeded shuffle -> repeat -> enumerate (global element index) -> skip
(resume) -> parallel decode + augment (AUTOTUNE, stateless seeds) -> batch (drop_remainder for
training) -> prefetch, with ``tf.data.Options`` for determinism and the auto-shard policy.
Skipping happens on file indices / raw records, before any decoding, so resuming is cheap.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from crack_tf.data.config import DataConfig, epoch_indices
from crack_tf.data.image_np import decode_image_np
from crack_tf.data.image_tf import decode_image_tf, eval_transform_tf, train_transform_tf

AUTOTUNE = tf.data.AUTOTUNE
_INFINITE = 2**62


def _options(config: DataConfig, policy: tf.data.experimental.AutoShardPolicy) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = config.deterministic
    opts.experimental_distribute.auto_shard_policy = policy
    return opts


def _calls(config: DataConfig) -> int:
    return AUTOTUNE if config.num_parallel_calls < 0 else config.num_parallel_calls


def _transform(config: DataConfig, training: bool, seed: int, num_shards: int, shard_index: int):
    """(image uint8, label, local element index) -> (image SxS, label)."""

    def fn(image, label, g):
        if training:
            g_global = g * num_shards + shard_index  # distinct across workers
            pair = tf.stack([tf.constant(seed, tf.int64), tf.cast(g_global, tf.int64)])
            image = train_transform_tf(
                image, pair, config.image_size, config.small_policy,
                config.flips, config.rot90, config.brightness, config.contrast,
            )  # fmt: skip
        else:
            image = eval_transform_tf(image, config.image_size, config.small_policy)
        return image, label

    return fn


def _finish(ds, config, training, batch_size, skip_batches, load, transform, policy):
    ds = ds.enumerate().skip(skip_batches * batch_size)
    ds = ds.map(lambda g, elem: transform(*load(elem), g), num_parallel_calls=_calls(config))
    if training:  # a file that breaks after listing (deleted, rewritten) is logged, not fatal
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(AUTOTUNE).with_options(_options(config, policy))


def _pil_decode(path: bytes) -> np.ndarray:
    return decode_image_np(path.decode())


def folder_dataset(
    paths: list[str],
    labels: list[int],
    needs_pil: list[bool],
    config: DataConfig,
    training: bool,
    batch_size: int,
    seed: int,
    num_shards: int,
    shard_index: int,
    skip_batches: int,
) -> tf.data.Dataset:
    """Dataset over validated files of ONE shard (already ``[shard_index::num_shards]``)."""
    paths_t = tf.constant(paths, tf.string)
    labels_t = tf.constant(labels, tf.int32)
    pil_t = tf.constant(needs_pil, tf.bool)
    any_pil = any(needs_pil)

    def load(i):
        data = tf.io.read_file(paths_t[i])
        if any_pil:  # rare formats TF cannot decode (TIFF...): PIL, only for those files

            def via_pil():
                img = tf.numpy_function(_pil_decode, [paths_t[i]], tf.uint8, stateful=False)
                img.set_shape([None, None, 3])
                return img

            image = tf.cond(pil_t[i], via_pil, lambda: decode_image_tf(data))
        else:
            image = decode_image_tf(data)
        return image, labels_t[i]

    if training:
        idx = tf.constant(epoch_indices(np.asarray(labels), config.balance, seed), tf.int64)

        def one_epoch(e):
            perm = tf.random.experimental.stateless_shuffle(idx, seed=tf.stack([tf.constant(seed, tf.int64), e]))
            return tf.data.Dataset.from_tensor_slices(perm)

        ds = tf.data.Dataset.range(_INFINITE).flat_map(one_epoch)  # seeded shuffle, repeated
    else:
        ds = tf.data.Dataset.range(len(paths))
    policy = tf.data.experimental.AutoShardPolicy
    return _finish(
        ds, config, training, batch_size, skip_batches, load,
        _transform(config, training, seed, num_shards, shard_index),
        policy.OFF if num_shards > 1 else policy.DATA,
    )  # fmt: skip


def record_dataset(
    records: tf.data.Dataset,
    config: DataConfig,
    training: bool,
    batch_size: int,
    seed: int,
    num_shards: int,
    shard_index: int,
    skip_batches: int,
    policy: tf.data.experimental.AutoShardPolicy,
) -> tf.data.Dataset:
    """Dataset over a stream of (encoded bytes, int32 label) records of ONE shard."""
    if training:
        buf = max(1, config.shuffle_buffer)
        if config.balance == "oversample":
            streams = [
                records.filter(lambda _, y, c=c: tf.equal(y, c)).shuffle(buf, seed=seed + c).repeat()
                for c in (0, 1)
            ]
            records = tf.data.Dataset.sample_from_datasets(streams, [0.5, 0.5], seed=seed)
        else:
            records = records.shuffle(buf, seed=seed, reshuffle_each_iteration=True).repeat()

    def load(elem):
        data, label = elem
        return decode_image_tf(data), label

    return _finish(
        records.map(lambda d, y: (d, y)), config, training, batch_size, skip_batches, load,
        _transform(config, training, seed, num_shards, shard_index), policy,
    )  # fmt: skip


def tfrecord_records(files: list[str], training: bool, seed: int) -> tf.data.Dataset:
    """Raw (bytes, label) records from shard files, files shuffled (seeded) and interleaved."""
    from crack_tf.data.tfrecord import parse_example_tf

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(
            tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE, deterministic=True
        )
    else:
        ds = ds.flat_map(tf.data.TFRecordDataset)
    return ds.map(parse_example_tf, num_parallel_calls=AUTOTUNE)
