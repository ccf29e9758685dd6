"""The NumPy loader's in-process cache of decoded, upscaled images."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from crack_tf.data.image_np import decode_image_np, fit_small_np
from crack_tf.data.pipeline_np import fitted_image


def _write(path, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_cached_image_equals_a_fresh_decode_and_a_changed_file_is_reread(tmp_path):
    path = str(tmp_path / "tile.png")
    _write(path, 0)
    first = fitted_image(path, 48, "resize", cache_mb=64)
    np.testing.assert_array_equal(first, fit_small_np(decode_image_np(path), 48, "resize"))
    assert first.shape[:2] == (48, 72) and not first.flags.writeable  # shared: read-only
    assert fitted_image(path, 48, "resize", cache_mb=64) is first  # served from the cache
    assert fitted_image(path, 48, "pad", cache_mb=64) is not first  # policy is part of the key

    new_pixels = _write(path, 1)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed
    again = fitted_image(path, 48, "resize", cache_mb=64)
    np.testing.assert_array_equal(again, fit_small_np(new_pixels, 48, "resize"))


def test_cache_limit_is_respected(tmp_path):
    path = str(tmp_path / "big.png")
    _write(path, 2)
    a = fitted_image(path, 64, "resize", cache_mb=0)  # nothing may be kept
    b = fitted_image(path, 64, "resize", cache_mb=0)
    assert a is not b
    np.testing.assert_array_equal(a, b)


def test_relisting_reads_only_changed_files_and_sees_a_newly_broken_one(tmp_path, monkeypatch):
    from crack_tf.data import listing
    from tests.test_data_common import make_folder

    root = make_folder(tmp_path / "data", splits=("train",), n=4)
    first = listing.list_folder(root, "train")
    assert len(first.paths) == 8 and not first.skipped

    reads = []
    real_check = listing.check_file
    monkeypatch.setattr(listing, "check_file", lambda p, c=None: reads.append(p) or real_check(p, c))
    again = listing.list_folder(root, "train")
    assert again.paths == first.paths and reads == []  # unchanged: no header re-read

    broken = first.paths[0]
    data = open(broken, "rb").read()
    with open(broken, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated: size (and mtime) change
    third = listing.list_folder(root, "train")
    assert reads == [broken]
    assert broken not in third.paths and [p for p, _ in third.skipped] == [broken]
    # a different validation setting is a different check: every file is read again
    listing.list_folder(root, "train", listing.DataConfig(validate="full"))
    assert len(reads) == 1 + 8


def test_check_cache_overflow_keeps_results_correct(tmp_path, monkeypatch):
    from crack_tf.data import listing
    from tests.test_data_common import make_folder

    root = make_folder(tmp_path / "data", splits=("train",), n=3)
    first = listing.list_folder(root, "train")
    monkeypatch.setattr(listing, "_CHECKED_MAX", 4)  # 6 files > 4: the cache is cleared on the next call
    again = listing.list_folder(root, "train")
    assert again.paths == first.paths and again.needs_pil == first.needs_pil
    assert len(listing._CHECKED) <= 6
