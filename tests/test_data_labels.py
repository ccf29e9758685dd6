"""Labels, counts, bad-file handling and fail-fast errors of the data package."""

from __future__ import annotations

import os

import numpy as np
import pytest

from crack_tf import CLASS_NAMES
from crack_tf.data import DataConfig, decode_image_np, list_folder, make_input
from tests.test_data_common import make_folder, plant_files

CFG = dict(image_size=32, max_pixels=100_000)


@pytest.fixture
def messy(tmp_path):
    root = make_folder(tmp_path / "d", splits=("train",), n=4)
    expected, bad = plant_files(root / "train" / "crack")
    return root, expected, bad


def test_crack_is_one_and_counts_match_files(messy):
    root, expected, bad = messy
    cfg = DataConfig(path=str(root), **CFG)
    lst = list_folder(root, "train", cfg)
    crack = [p for p, y in zip(lst.paths, lst.labels) if y == 1]
    assert all(os.sep + "crack" + os.sep in p for p in crack)
    assert all(os.sep + "background" + os.sep in p for p, y in zip(lst.paths, lst.labels) if y == 0)
    assert len(crack) == 4 + len(expected)  # every good file, none of the bad ones
    skipped = {os.path.basename(p): r for p, r in lst.skipped}
    assert set(skipped) == set(bad), skipped
    assert "0 bytes" in skipped["zero.png"] and "too small" in skipped["tiny.png"]
    assert "too large" in skipped["huge.png"] and "extension" in skipped["notes.txt"]


@pytest.mark.parametrize("backend", ["tf", "numpy"])
def test_bad_files_never_reach_the_pipeline(messy, backend):
    root, expected, bad = messy
    cfg = DataConfig(path=str(root), **CFG)
    split = make_input(cfg, "train", training=False, global_batch_size=5, backend=backend)
    assert split.class_counts == {0: 4, 1: 4 + len(expected)}
    assert len(split.skipped) == len(bad)
    if backend == "tf":
        batches = [(x.numpy(), y.numpy()) for x, y in split.dataset]
    else:
        batches = [split.dataset[i] for i in range(len(split.dataset))]
    labels = np.concatenate([y for _, y in batches])
    images = np.concatenate([x for x, _ in batches])
    assert images.shape == (split.num_examples, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [y for _, y in split.examples]
    assert labels.tolist() == [0] * 4 + [1] * (4 + len(expected))  # eval order: background, crack
    assert split.steps_per_epoch == len(batches)


def test_odd_formats_convert_correctly(messy):
    root, expected, _ = messy
    from crack_tf.data.pipeline_tf import folder_dataset

    cfg = DataConfig(path=str(root), image_size=8, small_policy="pad", max_pixels=100_000)
    lst = list_folder(root, "train", cfg)
    for name, exp in expected.items():
        path = str(root / "train" / "crack" / name)
        i = lst.paths.index(path)
        np_img = decode_image_np(path)
        assert np_img.dtype == np.uint8 and np_img.shape[2] == 3
        if exp is not None:
            np.testing.assert_array_equal(np_img, exp, err_msg=name)
        # The TF path (native decoder or PIL fallback) gives the same pixels (JPEG: +-4, decoders differ).
        ds = folder_dataset([path], [1], [lst.needs_pil[i]], cfg.replace(image_size=min(np_img.shape[:2])),
                            False, 1, 0, 1, 0, 0)
        tf_img = next(iter(ds))[0][0].numpy()
        tol = 4 if name.lower().endswith(("jpg", "jpeg")) else 0
        assert np.abs(tf_img.astype(int) - eval_crop(np_img, tf_img.shape[0])).max() <= tol, name


def eval_crop(img, s):
    h, w = img.shape[:2]
    return img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s].astype(int)


def test_one_class_empty_and_missing_folders_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="path is empty"):
        make_input(DataConfig(), "train", False, 4)
    with pytest.raises(ValueError, match="not a directory"):
        make_input(DataConfig(path=str(tmp_path / "nope")), "train", False, 4)
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="missing class folder"):
        make_input(DataConfig(path=str(tmp_path)), "train", False, 4)
    with pytest.raises(ValueError, match="split folder .* not found"):
        make_input(DataConfig(path=str(tmp_path)), "val", False, 4)
    for name in CLASS_NAMES:
        (tmp_path / "train" / name).mkdir()
    with pytest.raises(ValueError, match="no usable images"):
        make_input(DataConfig(path=str(tmp_path)), "train", False, 4)
    make_folder(tmp_path / "one", splits=("train",), n=2)
    for f in (tmp_path / "one" / "train" / "background").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="no usable 'background' images"):
        make_input(DataConfig(path=str(tmp_path / "one")), "train", True, 2, backend="numpy")


def test_batch_and_shard_arguments_are_checked(tmp_path):
    root = make_folder(tmp_path, splits=("train",), n=2)
    with pytest.raises(ValueError, match="multiple of num_shards"):
        make_input(DataConfig(path=str(root)), "train", True, 3, num_shards=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_input(DataConfig(path=str(root)), "train", True, 8, backend="numpy")
    with pytest.raises(ValueError, match="small_policy"):
        DataConfig(small_policy="stretch")


def test_class_weight_and_oversample(tmp_path):
    root = make_folder(tmp_path, splits=("train",), n=6)
    for f in sorted((root / "train" / "crack").iterdir())[:4]:
        f.unlink()  # 6 background, 2 crack
    cw = make_input(DataConfig(path=str(root), balance="class_weight", image_size=32), "train", True, 2)
    assert cw.class_counts == {0: 6, 1: 2}
    assert cw.class_weight == pytest.approx({0: 8 / 12, 1: 8 / 4})
    over = make_input(DataConfig(path=str(root), balance="oversample", image_size=32), "train", True, 4, backend="numpy")
    assert over.steps_per_epoch == 3  # 6 + 6 (oversampled) examples per epoch
    labels = np.concatenate([over.dataset[i][1] for i in range(3)])
    assert labels.sum() == 6


def test_file_broken_after_listing_does_not_crash_training(tmp_path):
    root = make_folder(tmp_path, splits=("train",), n=4)
    split = make_input(DataConfig(path=str(root), image_size=32), "train", True, 4, backend="tf")
    (root / "train" / "crack" / "crack_0.png").write_bytes(b"gone")  # after validation
    it = iter(split.dataset)
    for _ in range(4):  # two epochs: the broken file is dropped with a logged warning
        x, y = next(it)
        assert x.shape == (4, 32, 32, 3)
