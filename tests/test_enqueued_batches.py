"""Training batches are step ``k``'s whatever the loader's workers, on the JAX backend too: its ``fit``
reads one batch first to build the loss, and Keras' plain one-worker generator then started again at
0 while its enqueuer went on (1 loader thread and 3 trained on batches one step apart)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import sys
import keras
import numpy as np
from crack_tf.data.pipeline_photos import CropPyDataset
from tests.tool_loader import load_tool

class Sampler:  # CropSampler's batch(): every image filled with its step
    class options:
        image_size = 2
    def batch(self, step, batch_size, num_shards=1, shard_index=0, out=None):
        return np.full((batch_size, 2, 2, 3), step, np.uint8), np.zeros(batch_size, np.int32)

def steps_seen(dataset):
    inputs = keras.Input((2, 2, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    seen, step = [], model.train_step
    def recording_step(*args):  # (state, data) on JAX
        seen.append(int(np.asarray(args[-1][0])[0, 0, 0, 0]))
        return step(*args)
    model.train_step = recording_step
    model.fit(dataset, epochs=3, steps_per_epoch=4, shuffle=False, verbose=0)
    return seen

pretrain = load_tool("pretrain")
make = lambda i: (np.full((2, 2, 2, 3), i, np.float32), np.zeros(2, np.int32))
for workers, processes in ((1, False), (3, False), (2, True)):
    crops = CropPyDataset(Sampler(), 2, skip_batches=5, steps_per_epoch=4, workers=workers, processes=processes,
                          shared_memory=False)
    synthetic = pretrain.Batches(make, 4, skip=5, workers=workers, use_multiprocessing=processes)
    print("crops", workers, processes, steps_seen(crops))
    print("synthetic", workers, processes, steps_seen(synthetic))
"""


def test_jax_fit_trains_on_the_same_batches_for_one_thread_three_threads_and_two_processes():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [line.split(" ", 3) for line in done.stdout.splitlines() if line.startswith(("crops", "synthetic"))]
    assert len(rows) == 6, done.stdout
    for kind in ("crops", "synthetic"):
        sequences = {row[3] for row in rows if row[0] == kind}
        # one sequence for the three loader settings: a run resumed at step 5 goes on with batch 6
        # (batch 5 read to build the loss), in order across Keras' epochs
        assert sequences == {str(list(range(6, 18)))}, (kind, sequences)
