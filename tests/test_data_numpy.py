"""The TF-free loader: imports without TensorFlow and matches the tf.data pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from crack_tf.data import DataConfig, eval_transform_np, eval_transform_tf, make_input

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent(
    """
    import sys

    import importlib.abc
    import importlib.machinery

    class BlockTF(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return importlib.machinery.ModuleSpec(name, self)
            return None

        def create_module(self, spec):
            raise ImportError(f"{spec.name} is blocked for this test")

        def exec_module(self, module):
            raise ImportError("blocked")

    sys.meta_path.insert(0, BlockTF())  # importing tensorflow raises ImportError
    import numpy as np
    from PIL import Image
    from crack_tf.data import DataConfig, make_input

    root = sys.argv[1]
    for label, name in enumerate(["background", "crack"]):
        import pathlib
        d = pathlib.Path(root, "train", name)
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((20, 30, 3), 60 * label + i, np.uint8)).save(d / f"{i}.png")
    split = make_input(DataConfig(path=root, image_size=24), "train", True, 4, backend="auto")
    x, y = split.dataset[0]
    assert type(split.dataset).__name__ == "FolderPyDataset"
    assert x.shape == (4, 24, 24, 3) and x.dtype == np.uint8 and y.dtype == np.int32, (x.shape, y)
    assert "tensorflow" not in sys.modules
    print("OK", sorted(y.tolist()))
    """
)


@pytest.mark.slow
def test_loader_imports_and_runs_without_tensorflow(tmp_path):
    """On the torch backend with ``import tensorflow`` raising ImportError, backend "auto" picks
    the PyDataset loader, builds a batch, and tensorflow never lands in sys.modules."""
    env = dict(os.environ, PYTHONPATH=REPO, KERAS_BACKEND="torch")
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "d")], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout


@pytest.mark.parametrize("shape", [(128, 128), (50, 70), (300, 100), (224, 224), (223, 500), (17, 33)])
@pytest.mark.parametrize("policy", ["resize", "pad"])
def test_eval_transform_twins_agree(shape, policy):
    """Tolerance: max abs diff <= 1 on uint8 (float rounding of the bilinear weights)."""
    import tensorflow as tf

    img = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for size in (224, 64, 99):
        a = eval_transform_np(img, size, policy)
        b = eval_transform_tf(tf.constant(img), size, policy).numpy()
        assert a.shape == b.shape == (size, size, 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.shared_data
def test_numpy_loader_matches_tf_on_uav75_tiles(shared_data):
    cfg = DataConfig(path=str(shared_data / "uav75_tiles"))
    expected = {"train": {0: 471, 1: 289}, "val": {0: 99, 1: 52}}
    for split in ("train", "val"):
        got = make_input(cfg, split, False, 32, backend="numpy")
        assert got.class_counts == expected[split] and got.skipped == []
    tf_val = make_input(cfg, "val", False, 32, backend="tf")
    np_val = make_input(cfg, "val", False, 32, backend="numpy")
    assert tf_val.examples == np_val.examples
    assert len(np_val.dataset) == tf_val.steps_per_epoch == 5
    for i, (x, y) in enumerate(tf_val.dataset):
        xn, yn = np_val.dataset[i]
        np.testing.assert_array_equal(y.numpy(), yn)
        assert xn.shape == tuple(x.shape) and xn.dtype == np.uint8
        assert np.abs(x.numpy().astype(int) - xn.astype(int)).max() <= 1
    tr_tf = make_input(cfg, "train", True, 32, backend="tf")
    tr_np = make_input(cfg, "train", True, 32, backend="numpy")
    x, y = next(iter(tr_tf.dataset))
    xn, yn = tr_np.dataset[0]
    assert xn.shape == tuple(x.shape) == (32, 224, 224, 3) and yn.shape == tuple(y.shape) == (32,)
    assert tr_tf.steps_per_epoch == len(tr_np.dataset) == 760 // 32
