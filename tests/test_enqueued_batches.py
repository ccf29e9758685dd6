"""Training batches are step ``k``'s whatever the loader's workers, on the JAX backend too: its ``fit``
reads one batch first to build the loss, and Keras' plain one-worker generator then started again at
0 while its enqueuer went on (1 loader thread and 3 trained on batches one step apart). Every infinite
training PyDataset goes through the enqueuer (``pipeline_np.enqueued_workers``): the photo crops, the
folder loader and the pretraining's synthetic batches."""

import ast
import os
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import sys
import numpy as np
from crack_tf.data.config import DataConfig
from crack_tf.data.pipeline_np import FolderPyDataset
from crack_tf.data.pipeline_photos import CropPyDataset
from tests.fit_steps import digest, steps_fit_sees
from tests.tool_loader import load_tool

class Sampler:  # CropSampler's batch(): every image filled with its step
    class options:
        image_size = 2
    def batch(self, step, batch_size, num_shards=1, shard_index=0, out=None):
        return np.full((batch_size, 2, 2, 3), step, np.uint8), np.zeros(batch_size, np.int32)

pretrain = load_tool("pretrain")
make = lambda i: (np.full((2, 2, 2, 3), i, np.float32), np.zeros(2, np.int32))
paths = sys.argv[1:]
for workers, processes in ((1, False), (3, False), (2, True)):
    crops = CropPyDataset(Sampler(), 2, skip_batches=5, steps_per_epoch=4, workers=workers, processes=processes,
                          shared_memory=False)
    synthetic = pretrain.Batches(make, 4, skip=5, workers=workers, use_multiprocessing=processes)
    folder = FolderPyDataset(paths, [0, 1] * (len(paths) // 2), DataConfig(image_size=8), training=True,
                             batch_size=2, skip_batches=5, steps_per_epoch=4, workers=workers,
                             use_multiprocessing=processes)
    print("crops", workers, processes, steps_fit_sees(crops, (2, 2, 3), epochs=3))
    print("synthetic", workers, processes, steps_fit_sees(synthetic, (2, 2, 3), epochs=3))
    print("folder", workers, processes, steps_fit_sees(folder, (8, 8, 3), epochs=3, key=digest))
"""


def test_jax_fit_trains_on_the_same_batches_for_one_thread_three_threads_and_two_processes(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"t{i}.png"))
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(paths[-1])
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", PROBE, *paths], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [line.split(" ", 3) for line in done.stdout.splitlines() if line.startswith(("crops", "synthetic", "folder"))]
    assert len(rows) == 9, done.stdout
    for kind in ("crops", "synthetic"):
        sequences = {row[3] for row in rows if row[0] == kind}
        # one sequence for the three loader settings: a run resumed at step 5 goes on with batch 6
        # (batch 5 read to build the loss), in order across Keras' epochs
        assert sequences == {str(list(range(6, 18)))}, (kind, sequences)
    folder = {row[3] for row in rows if row[0] == "folder"}
    assert len(folder) == 1 and len(ast.literal_eval(folder.pop())) == 12, rows  # one sequence of 12 batches
