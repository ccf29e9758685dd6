"""Worker batches through a shared-memory ring (crack_tf.data.shared_batches): same batches, no pickled pixels."""

from __future__ import annotations

import multiprocessing
import pickle

import keras
import numpy as np
import pytest

from crack_tf.data.crops import CropOptions, CropSampler
from crack_tf.data.photos import SourceSpec, load_photo_set
from crack_tf.data.pipeline_photos import CropPyDataset
from crack_tf.data.shared_batches import BatchRing, fork_workers, slots_for_queue
from tests.photo_data import write_source

pytestmark = pytest.mark.skipif(not fork_workers(), reason="the ring is only used when worker pools fork")


def _write(ring, index, value):
    images, labels = ring.views(index)
    images[...] = value
    labels[...] = np.arange(len(labels)) + value


def test_a_forked_worker_writes_a_slot_and_its_handle_unpickles_as_the_batch():
    ring = BatchRing([((3, 4, 4, 3), np.uint8), ((3,), np.int32)], slots=2)
    assert ring.slot_bytes == 3 * 4 * 4 * 3 + 3 * 4
    child = multiprocessing.get_context("fork").Process(target=_write, args=(ring, 5, 9))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    payload = pickle.dumps(ring.handle(5))
    assert len(payload) < 200  # a token and an index, not the pixels
    images, labels = pickle.loads(payload)
    np.testing.assert_array_equal(images, np.full((3, 4, 4, 3), 9, np.uint8))
    np.testing.assert_array_equal(labels, [9, 10, 11])
    _write(ring, 7, 1)  # slot 7 % 2 = 1: the copy above does not change with it
    assert images[0, 0, 0, 0] == 9 and ring.reads == 1


def test_ring_length_covers_the_enqueuer_queue():
    assert slots_for_queue(10) >= 10 + 2  # queued futures + the one being submitted + the one being read


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    root = write_source(tmp_path_factory.mktemp("photos") / "site", {"train": 3})
    opts = CropOptions(image_size=32, crop_side=(16, 40), min_crack_pixels=20, reference=32)
    return CropSampler([load_photo_set(SourceSpec("site", str(root)), "train")], [1.0], opts, seed=2,
                       crops_per_epoch=64)


def _train(dataset, steps: int) -> list[np.ndarray]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return model.get_weights()


@pytest.mark.timeout(300)  # forked workers: a hang must fail the test, not the CI job
def test_fit_on_ring_batches_equals_fit_on_the_sampler_batches(sampler):
    """Through Keras' own worker pool, 5x around a ring of 6 slots: a slot reused too early
    or read from the wrong batch changes the weights."""
    steps = 30
    ring_ds = CropPyDataset(sampler, 4, steps_per_epoch=steps, workers=2, max_queue_size=2, processes=True)
    assert ring_ds.ring is not None and ring_ds.ring.slots == 6
    via_ring = _train(ring_ds, steps)
    assert ring_ds.ring.reads >= steps  # every batch came through the ring
    in_process = _train(CropPyDataset(sampler, 4, steps_per_epoch=steps), steps)
    pickled = CropPyDataset(sampler, 4, steps_per_epoch=steps, workers=2, processes=True, shared_memory=False)
    assert pickled.ring is None
    for a, b, c in zip(via_ring, in_process, _train(pickled, steps)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
