"""``make_input``: one entry point for every source and backend."""

from __future__ import annotations

import importlib
import logging
import os

import numpy as np

from crack_tf.data.config import (
    DataConfig,
    InputSplit,
    check_two_classes,
    class_counts,
    class_weight,
    epoch_indices,
    local_batch_size,
    steps_for,
)

log = logging.getLogger("crack_tf.data")
BACKENDS = ("auto", "tf", "numpy")


def tensorflow_available() -> bool:
    try:
        importlib.import_module("tensorflow")
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "tf" if tensorflow_available() else "numpy"
    return backend


def numpy_batches(dataset):
    """(images, labels) NumPy batches of an eval dataset: a tf.data dataset or a Keras PyDataset."""
    if hasattr(dataset, "as_numpy_iterator"):
        yield from dataset.as_numpy_iterator()
    else:
        for i in range(len(dataset)):
            yield dataset[i]


def padded_batches(dataset):
    """(images, labels, rows) of :func:`numpy_batches`, every batch's images padded to the first
    batch's length (the last row repeated); ``rows``: the real ones, to slice the outputs with.

    A compiled predict function (XLA) compiles once per batch shape: the short last batch of each
    split would cost its own compile, tens of seconds for a ResNet50 when nine runs share a GPU
    machine's CPU cores."""
    size = None
    for images, labels in numpy_batches(dataset):
        images, rows = np.asarray(images), len(labels)
        size = size or len(images)
        if len(images) < size:
            images = np.concatenate([images, np.repeat(images[-1:], size - len(images), axis=0)])
        yield images, labels, rows


def make_input(
    config: DataConfig,
    split: str,
    training: bool,
    global_batch_size: int,
    seed: int = 0,
    backend: str = "auto",
    num_shards: int = 1,
    shard_index: int = 0,
    skip_batches: int = 0,
) -> InputSplit:
    """Builds the input of ``split``.

    Training: shuffled (seeded), repeated forever for tf.data (use ``steps_per_epoch``), augmented
    per (seed, global element index), batches of ``global_batch_size // num_shards`` with the
    remainder dropped; ``skip_batches`` resumes a run exactly. Eval: ordered, centre-cropped, not
    repeated, remainder kept. ``num_examples`` / ``class_counts`` describe the whole split,
    ``examples`` this shard in eval order. backend "tf" = tf.data, "numpy" = keras PyDataset
    (folder source only), "auto" = tf.data if TensorFlow imports.
    """
    backend = resolve_backend(backend)
    batch = local_batch_size(global_batch_size, num_shards)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} must be in [0, num_shards={num_shards})")
    if skip_batches < 0:
        raise ValueError(f"skip_batches={skip_batches} must be >= 0")
    if not config.path and config.source != "tfds":
        raise ValueError(f"DataConfig.path is empty: set it to the {config.source} folder (--data_path)")
    if backend == "numpy" and config.source not in ("folder", "photos"):
        raise ValueError(f"source={config.source!r} needs TensorFlow; use source='folder' or 'photos' with "
                         "backend='numpy'")
    if config.source == "photos":
        from crack_tf.data.photo_input import photos_input

        return photos_input(config, split, training, batch, global_batch_size, seed, backend, num_shards,
                            shard_index, skip_batches)
    if config.source == "folder":
        return _folder(config, split, training, batch, global_batch_size, seed, backend, num_shards, shard_index, skip_batches)
    return _records(config, split, training, batch, global_batch_size, seed, num_shards, shard_index, skip_batches)


def _folder(config, split, training, batch, global_batch, seed, backend, num_shards, shard_index, skip):
    from crack_tf.data.listing import list_folder

    lst = list_folder(config.path, split, config)
    sl = slice(shard_index, None, num_shards)
    paths, labels, pil = lst.paths[sl], lst.labels[sl], lst.needs_pil[sl]
    if not paths:
        raise ValueError(f"shard {shard_index}/{num_shards} of {config.path}/{split} is empty; use fewer shards")
    n_train = len(epoch_indices(lst.labels, config.balance, seed))
    steps = steps_for(n_train, global_batch, True) if training else steps_for(len(paths), batch, False)
    if backend == "numpy":
        from crack_tf.data.pipeline_np import FolderPyDataset

        ds = FolderPyDataset(
            paths, labels, config, training, batch, seed, num_shards, shard_index, skip, steps, workers=config.workers,
            use_multiprocessing=config.processes,
        )
    else:
        from crack_tf.data.pipeline_tf import folder_dataset

        ds = folder_dataset(paths, labels, pil, config, training, batch, seed, num_shards, shard_index, skip)
    return _split(ds, lst.labels, list(zip(paths, labels)), lst.skipped, steps, config)


def _split(ds, all_labels, examples, skipped, steps, config) -> InputSplit:
    counts = class_counts(all_labels)
    return InputSplit(
        dataset=ds,
        num_examples=len(all_labels),
        steps_per_epoch=steps,
        class_counts=counts,
        class_weight=class_weight(counts) if config.balance == "class_weight" else None,
        examples=examples,
        skipped=skipped,
    )


def _records(config, split, training, batch, global_batch, seed, num_shards, shard_index, skip):
    import tensorflow as tf

    from crack_tf.data import pipeline_tf

    policy = tf.data.experimental.AutoShardPolicy
    if config.source == "tfrecord":
        from crack_tf.data.tfrecord import read_split_info

        info = read_split_info(config.path, split)
        all_labels = [y for s in info["shards"] for _, y in s["examples"]]
        shards = info["shards"][shard_index::num_shards]
        if not shards:
            raise ValueError(f"{config.path}/{split} has {len(info['shards'])} shard files < num_shards={num_shards}")
        files = [os.path.join(config.path, s["file"]) for s in shards]
        examples = [(os.path.join(info["source"], name), y) for s in shards for name, y in s["examples"]]
        records = pipeline_tf.tfrecord_records(files, training, seed)
        skipped = [tuple(s) for s in info.get("skipped", [])]
    else:
        from crack_tf.data.tfds_bridge_crack import tfds_records

        records, all_labels, examples, skipped = tfds_records(config, split, training, seed, num_shards, shard_index)
    check_two_classes(class_counts(all_labels), f"{config.source} {config.path} split {split!r}")
    n_train = len(epoch_indices(all_labels, config.balance, seed))
    steps = steps_for(n_train, global_batch, True) if training else steps_for(len(examples), batch, False)
    ds = pipeline_tf.record_dataset(
        records, config, training, batch, seed, num_shards, shard_index, skip,
        policy.OFF if num_shards > 1 else policy.FILE,
    )  # fmt: skip
    return _split(ds, all_labels, examples, skipped, steps, config)
