"""TFRecord and TFDS sources give byte-identical images and the same labels as the folder source."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from crack_tf.data import DataConfig, make_input
from tests.test_data_common import make_folder, plant_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("f") / "d", n=5)
    plant_files(root / "train" / "background")  # odd formats (TIFF via PIL) plus bad files
    return root


def _eval_arrays(split):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in split.dataset])
    return np.concatenate(xs), np.concatenate(ys)


def _folder_eval(folder, split="train"):
    return make_input(DataConfig(path=str(folder), image_size=36), split, False, 4, backend="tf")


@pytest.mark.slow
def test_tfrecord_round_trip(folder, tmp_path):
    out = tmp_path / "rec"
    env = dict(os.environ, PYTHONPATH=REPO)
    cmd = [sys.executable, "tools/make_tfrecords.py", f"--data_dir={folder}", f"--out_dir={out}", "--num_shards=3"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "SUMMARY" in res.stdout and "skipped 7 bad" in res.stdout, res.stdout  # 8 bad minus huge (no limit)
    ref = _folder_eval(folder)
    rec = make_input(DataConfig(source="tfrecord", path=str(out), image_size=36), "train", False, 4)
    assert rec.class_counts == ref.class_counts and rec.num_examples == ref.num_examples
    assert [y for _, y in rec.examples] == [y for _, y in ref.examples]
    assert rec.examples == ref.examples  # paths point at the source files
    (xr, yr), (xf, yf) = _eval_arrays(rec), _eval_arrays(ref)
    np.testing.assert_array_equal(yr, yf)
    np.testing.assert_array_equal(xr, xf)  # byte-identical pixels
    # Raw (uncropped) decode of every record equals the folder file decode.
    import tensorflow as tf

    from crack_tf.data import decode_image_np, decode_image_tf
    from crack_tf.data.pipeline_tf import tfrecord_records

    files = sorted(str(p) for p in out.glob("train-*.tfrecord"))
    assert len(files) == 3
    for (data, label), (path, y) in zip(tfrecord_records(files, False, 0).as_numpy_iterator(), rec.examples):
        assert label == y
        raw = decode_image_np(path) if path.endswith("TIF") else decode_image_tf(tf.io.read_file(path)).numpy()
        np.testing.assert_array_equal(decode_image_tf(data).numpy(), raw, err_msg=path)
    # Training from records: shards split between two workers, labels only 0/1.
    tr = make_input(DataConfig(source="tfrecord", path=str(out), image_size=36), "train", True, 4,
                    num_shards=2, shard_index=1)
    x, y = next(iter(tr.dataset))
    assert x.shape == (2, 36, 36, 3) and set(y.numpy()) <= {0, 1}


def test_tfds_builder_matches_folder(folder, tmp_path):
    import tensorflow_datasets as tfds

    import crack_tf.data.tfds_bridge_crack  # noqa: F401  (registers "bridge_crack")

    cfg = DataConfig(source="tfds", path=str(tmp_path / "tfds"), manual_dir=str(folder), image_size=36)
    got = make_input(cfg, "train", False, 4)
    ref = _folder_eval(folder)
    assert got.class_counts == ref.class_counts
    assert len(got.skipped) == 7 and all(os.path.exists(p) for p, _ in got.examples)
    assert sorted(os.path.relpath(p, folder) for p, _ in got.examples) == sorted(
        os.path.relpath(p, folder) for p, _ in ref.examples
    )
    by_name = {os.path.relpath(p, folder): i for i, (p, _) in enumerate(ref.examples)}
    (xg, yg), (xf, yf) = _eval_arrays(got), _eval_arrays(ref)
    order = [by_name[os.path.relpath(p, folder)] for p, _ in got.examples]
    np.testing.assert_array_equal(yg, yf[order])
    np.testing.assert_array_equal(xg, xf[order])
    ds = tfds.load("bridge_crack", split="val", data_dir=str(tmp_path / "tfds"), as_supervised=True)
    labels = sorted(int(y) for _, y in ds.as_numpy_iterator())
    assert labels == [0] * 5 + [1] * 5


def test_tfds_manual_dir_in_the_papers_layout(tmp_path):
    """Class folders without splits (Positive = crack, Negative = background): 80/20 hash split."""
    from PIL import Image

    from crack_tf.data.tfds_bridge_crack.bridge_crack_dataset_builder import listings
    from tests.test_data_common import rgb

    for name in ("Positive", "Negative"):
        (tmp_path / name).mkdir()
        for i in range(30):
            Image.fromarray(rgb(i, 20, 20)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "Negative" / "bad.png").write_bytes(b"")
    lists = listings(tmp_path)
    assert sorted(lists) == ["test", "train"]
    paths = [p for lst in lists.values() for p in lst.paths]
    assert len(paths) == len(set(paths)) == 60
    for lst in lists.values():
        assert all((y == 1) == ("Positive" in p) for p, y in zip(lst.paths, lst.labels))
    assert 6 <= len(lists["test"].paths) <= 20
    assert [p for p, _ in lists["train"].skipped] == [str(tmp_path / "Negative" / "bad.png")]
    assert listings(tmp_path)["test"].paths == lists["test"].paths  # deterministic
