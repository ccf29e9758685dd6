"""Seeded, resumable training streams: same seed -> same batches; skip_batches=k -> batch k."""

from __future__ import annotations

import numpy as np
import pytest

from crack_tf.data import DataConfig, make_input, train_transform_np
from tests.test_data_common import make_folder, rgb


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("det") / "d", splits=("train",), n=6, size=40)


def _tf_batches(split, n):
    it = iter(split.dataset)
    return [tuple(t.numpy() for t in next(it)) for _ in range(n)]


def _np_batches(split, n):
    assert split.dataset.num_batches is None  # infinite, like the repeated tf.data stream
    return [split.dataset[i] for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tf", "numpy"])
def test_same_seed_same_batches_and_skip_resumes(folder, backend):
    cfg = DataConfig(path=str(folder), image_size=32)
    take = _tf_batches if backend == "tf" else _np_batches

    def build(seed=3, skip=0):
        return make_input(cfg, "train", True, 4, seed=seed, backend=backend, skip_batches=skip)

    first = build()
    assert first.steps_per_epoch == 3
    a, b = take(first, 6), take(build(), 6)  # 6 batches = 2 epochs
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(a[:3], a[3:]))  # new epoch, new order
    for k in (1, 4):  # inside the first epoch and inside the second one
        xk, yk = take(build(skip=k), 1)[0]
        np.testing.assert_array_equal(xk, a[k][0])
        np.testing.assert_array_equal(yk, a[k][1])
    other = take(build(seed=4), 1)[0]
    assert not np.array_equal(other[0], a[0][0])
    epoch = np.concatenate([y for _, y in a[:3]])
    assert sorted(epoch.tolist()) == [0] * 6 + [1] * 6  # each epoch is a permutation of the split


def test_tfrecord_skip_resumes(folder, tmp_path):
    from crack_tf.data.listing import list_folder
    from crack_tf.data.tfrecord import write_sidecar, write_split

    info = write_split(list_folder(folder, "train"), str(folder), str(tmp_path), "train", 2)
    write_sidecar(str(tmp_path), {"train": info}, str(folder))
    cfg = DataConfig(source="tfrecord", path=str(tmp_path), image_size=32, shuffle_buffer=8)
    a = _tf_batches(make_input(cfg, "train", True, 4, seed=5), 5)
    b = _tf_batches(make_input(cfg, "train", True, 4, seed=5, skip_batches=3), 1)
    np.testing.assert_array_equal(a[3][0], b[0][0])
    np.testing.assert_array_equal(a[3][1], b[0][1])


def test_augmentation_is_a_pure_function_of_seed_and_index():
    import tensorflow as tf

    from crack_tf.data import train_transform_tf

    img = rgb(0, 50, 60)
    kw = dict(image_size=32, brightness=0.2, contrast=0.2)
    one, two = train_transform_np(img, 1, 7, **kw), train_transform_np(img, 1, 7, **kw)
    np.testing.assert_array_equal(one, two)
    assert one.shape == (32, 32, 3) and one.dtype == np.uint8
    assert not np.array_equal(one, train_transform_np(img, 1, 8, **kw))
    t1 = train_transform_tf(tf.constant(img), tf.constant([1, 7], tf.int64), **kw).numpy()
    t2 = train_transform_tf(tf.constant(img), tf.constant([1, 7], tf.int64), **kw).numpy()
    np.testing.assert_array_equal(t1, t2)
    # With augmentation off except the crop, the crop is a window of the source image.
    plain = train_transform_np(img, 2, 3, 32, flips=False, rot90=False)
    hits = [(y, x) for y in range(19) for x in range(29) if np.array_equal(img[y : y + 32, x : x + 32], plain)]
    assert len(hits) == 1


@pytest.mark.parametrize("backend", ["tf", "numpy"])
def test_worker_shards_are_disjoint_and_complete(folder, backend):
    cfg = DataConfig(path=str(folder), image_size=32)
    full = make_input(cfg, "train", False, 4, backend=backend)
    parts = [make_input(cfg, "train", False, 4, backend=backend, num_shards=2, shard_index=i) for i in (0, 1)]
    a, b = (set(p.examples) for p in parts)
    assert not a & b and a | b == set(full.examples)
    assert all(p.num_examples == full.num_examples for p in parts)  # whole-split statistics
    train = [make_input(cfg, "train", True, 4, seed=1, backend=backend, num_shards=2, shard_index=i) for i in (0, 1)]
    take = _tf_batches if backend == "tf" else _np_batches
    (x0, _), (x1, _) = take(train[0], 1)[0], take(train[1], 1)[0]
    assert x0.shape == x1.shape == (2, 32, 32, 3)  # per-worker batch = global // num_shards
    assert train[0].steps_per_epoch == full.num_examples // 4
