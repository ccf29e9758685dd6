"""The photos source: crop labels, crack share, source weights, determinism, folds, bad input."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
from PIL import Image

from crack_tf.data import DataConfig, make_input
from crack_tf.data.crops import CropOptions, CropSampler, grid_tiles
from crack_tf.data.photos import (
    SourceSpec,
    in_val_fold,
    list_photos,
    load_photo_set,
    load_sources,
    parse_sources,
)
from tests.photo_data import draw_photo, write_source


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_source(tmp_path_factory.mktemp("photos") / "site_a", {"train": 4, "val": 2})


def _set(path, split="train"):
    return load_photo_set(SourceSpec(os.path.basename(path), str(path)), split)


def _brute_label(mask: np.ndarray, y: int, x: int, side: int, need: int) -> int | None:
    n = sum(1 for r in range(y, y + side) for c in range(x, x + side) if mask[r, c] == 255)
    return 0 if n == 0 else (1 if n >= need else None)


def test_crop_labels_equal_a_brute_force_count_and_the_joint_is_background(src):
    photos = _set(src)
    opts = CropOptions(image_size=32, crop_side=(16, 40), min_crack_pixels=40, reference=32, max_padding=1.0)
    sampler = CropSampler([photos], [1.0], opts, seed=1, crops_per_epoch=64)
    masks = [np.asarray(Image.open(src / "train" / "masks" / f"p{i:02d}.png"))[..., 0] for i in range(4)]
    joint_only = 0
    for index in range(300):
        label, _, (i, y, x, side), _ = sampler.draw(0, index)
        region = masks[i][y : y + side, x : x + side]
        assert _brute_label(masks[i], y, x, side, opts.min_pixels(side)) == label
        if (region == 204).any() and not (region == 255).any():
            joint_only += 1
            assert label == 0  # a planking joint (204) never makes a crop "crack"
    assert joint_only > 5  # the joint was really inside some crops
    rng = np.random.default_rng(0)  # arbitrary crops: crop_label itself equals the brute force
    from crack_tf.data.crops import crop_label

    for _ in range(200):
        side = int(rng.integers(8, 60))
        y, x = (int(v) for v in rng.integers(0, 96 - side + 1, 2))
        need = int(rng.integers(1, 30))
        assert crop_label(photos.photos[0], y, x, side, need, 1.0) == _brute_label(masks[0], y, x, side, need)


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_crack_share_over_an_epoch_matches_crack_fraction(src, fraction):
    opts = CropOptions(image_size=32, crop_side=(16, 40), min_crack_pixels=20, reference=32, crack_fraction=fraction)
    sampler = CropSampler([_set(src)], [1.0], opts, seed=0, crops_per_epoch=2000)
    labels = np.array([sampler.draw(0, i)[0] for i in range(2000)])
    tolerance = 4 * np.sqrt(fraction * (1 - fraction) / 2000)  # 4 binomial standard errors
    assert abs(labels.mean() - fraction) < tolerance


def test_sources_are_drawn_at_their_weights(tmp_path):
    for name, seed in (("a", 1), ("b", 2)):
        write_source(tmp_path / name, {"train": 2, "val": 1}, seed=seed)
    specs = parse_sources("a:3,b:1", str(tmp_path))
    assert [s.weight for s in specs] == [0.75, 0.25]
    sets = load_sources(specs, "train")
    opts = CropOptions(image_size=32, crop_side=(16, 40), min_crack_pixels=20, reference=32)
    sampler = CropSampler(sets, [s.weight for s in specs], opts, seed=0, crops_per_epoch=3000)
    counts = collections.Counter(sampler.draw(0, i)[1] for i in range(3000))
    assert abs(counts[0] / 3000 - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 3000)
    # Drawn by label too: each label's crops come from both sources at the same weights.
    by_label = collections.Counter((sampler.draw(0, i)[0], sampler.draw(0, i)[1]) for i in range(1000))
    for label in (0, 1):
        share = by_label[(label, 0)] / (by_label[(label, 0)] + by_label[(label, 1)])
        assert 0.65 < share < 0.85


@pytest.mark.parametrize("hard_negatives", [0.0, 0.5])
def test_same_seed_same_crops_other_seed_other_crops_and_both_loaders_agree(src, hard_negatives):
    cfg = DataConfig(source="photos", path=str(src), image_size=32, crops_per_epoch=16, crop_side=(16, 40),
                     min_crack_pixels=20, val_tile=32, workers=2, hard_negatives=hard_negatives)
    fresh = make_input(cfg, "train", True, 4, seed=3, backend="numpy")
    assert fresh.steps_per_epoch == 4 and fresh.dataset.num_batches is None
    a = [fresh.dataset[i] for i in range(6)]  # into the second epoch
    again = make_input(cfg, "train", True, 4, seed=3, backend="numpy")
    for (xa, ya), (xb, yb) in zip(a, [again.dataset[i] for i in range(6)]):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    resumed = make_input(cfg, "train", True, 4, seed=3, backend="numpy", skip_batches=5)
    np.testing.assert_array_equal(resumed.dataset[0][0], a[5][0])
    other = make_input(cfg, "train", True, 4, seed=4, backend="numpy")
    assert not np.array_equal(other.dataset[0][0], a[0][0])
    tf_split = make_input(cfg, "train", True, 4, seed=3, backend="tf", skip_batches=2)
    xt, yt = next(iter(tf_split.dataset))
    np.testing.assert_array_equal(xt.numpy(), a[2][0])  # tf.data renders the very same batches
    np.testing.assert_array_equal(yt.numpy(), a[2][1])
    if hard_negatives:  # the option reaches the loaders' crops: same seed, other background crops
        plain = make_input(cfg.replace(hard_negatives=0.0), "train", True, 4, seed=3, backend="numpy")
        assert any(not np.array_equal(plain.dataset[i][0], a[i][0]) for i in range(6))


def test_two_shards_split_one_global_batch(src):
    opts = CropOptions(image_size=32, crop_side=(16, 40), min_crack_pixels=20, reference=32)
    sampler = CropSampler([_set(src)], [1.0], opts, seed=0, crops_per_epoch=16)
    whole_x, whole_y = sampler.batch(1, 4)
    parts = [sampler.batch(1, 2, num_shards=2, shard_index=k) for k in range(2)]
    # Global element (step * B_local + j) * 2 + k: shard k holds every other element.
    np.testing.assert_array_equal(np.stack([parts[j % 2][0][j // 2] for j in range(4)]), whole_x)
    np.testing.assert_array_equal(np.array([parts[j % 2][1][j // 2] for j in range(4)]), whole_y)


def test_lookup_table_shortcut_equals_pillow_point():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    lut = np.random.default_rng(1).integers(0, 256, 768).astype(np.uint8).tolist()
    np.testing.assert_array_equal(np.asarray(img._new(img.im.point(lut, None))), np.asarray(img.point(lut)))


def test_augmentations_are_deterministic_and_change_pixels(src):
    base = dict(image_size=32, crop_side=(16, 40), min_crack_pixels=20, reference=32)
    plain = CropSampler([_set(src)], [1.0], CropOptions(**base, brightness=0, contrast=0), 0, 16)
    heavy_opts = CropOptions(**base, saturation=0.3, blur=1.0, noise=10, jpeg=1.0)
    heavy = CropSampler([_set(src)], [1.0], heavy_opts, 0, 16)
    x1, y1 = heavy.batch(0, 8)
    x2, _ = CropSampler([_set(src)], [1.0], heavy_opts, 0, 16).batch(0, 8)
    np.testing.assert_array_equal(x1, x2)
    xp, yp = plain.batch(0, 8)
    np.testing.assert_array_equal(y1, yp)  # same crops and labels, only the pixels differ
    assert np.abs(x1.astype(int) - xp.astype(int)).mean() > 2


def test_val_fold_by_source_image_is_stable_and_disjoint(tmp_path):
    root = write_source(tmp_path / "deep", {"train": 12})
    images = tmp_path / "deep" / "train" / "images"
    with open(tmp_path / "MANIFEST.csv", "w") as f:  # beside the source, like ../shared/data
        f.write("path,label,split,source_image,sha256\n")
        for p in sorted(images.iterdir()):
            f.write(f"deep/train/images/{p.name},photo,train,g{int(p.stem[1:]) // 3},x\n")
    spec = SourceSpec("deep", str(root))
    val, train = list_photos(spec, "val", 0.5), list_photos(spec, "train", 0.5)
    assert val.fold == "val fold of train/" and train.fold == "train minus val fold"
    assert set(val.groups).isdisjoint(train.groups)
    assert len(val.pairs) + len(train.pairs) == 12 and val.pairs and train.pairs
    assert all(len([g for g in val.groups if g == name]) in (0, 3) for name in set(val.groups))  # whole groups
    assert {g for g in val.groups} == {f"g{k}" for k in range(4) if in_val_fold(f"g{k}", 0.5)}
    assert list_photos(spec, "val", 0.5).pairs == val.pairs  # stable


@pytest.mark.parametrize("layout", ["train_and_val_folders", "train_folder_only"])
def test_cross_validation_folds_cover_every_photo_once_grouped_and_balanced(tmp_path, layout):
    splits = {"train": 9, "val": 4} if layout == "train_and_val_folders" else {"train": 13}
    root = write_source(tmp_path / "src", splits)
    if layout == "train_and_val_folders":  # the val photos must not share stems with train ones
        for f in (root / "val" / "images").iterdir():
            f.rename(f.with_name("v" + f.name))
        for f in (root / "val" / "masks").iterdir():
            f.rename(f.with_name("v" + f.name))
    spec = SourceSpec("src", str(root))
    every = {pair for split in ("train", "val") for pair in list_photos(spec, split).pairs}
    assert len(every) == 13
    seen, sizes = set(), []
    for i in range(4):
        val, train = list_photos(spec, f"cv4_{i}_val"), list_photos(spec, f"cv4_{i}_train")
        assert set(val.pairs) | set(train.pairs) == every and not set(val.pairs) & set(train.pairs)
        assert not set(val.groups) & set(train.groups) and val.fold == f"fold {i} of 4"
        assert not seen & set(val.pairs)  # each photo is val in exactly one fold
        seen |= set(val.pairs)
        sizes.append(len(val.pairs))
        assert list_photos(spec, f"cv4_{i}_val").pairs == val.pairs  # stable
    assert seen == every and max(sizes) - min(sizes) <= 1  # one photo per group here: balanced folds
    for bad in ("cv1_0_val", "cv4_4_train"):
        with pytest.raises(ValueError, match="cross-validation needs K >= 2"):
            list_photos(spec, bad)
    with pytest.raises(ValueError, match="cannot make 20 folds"):
        list_photos(spec, "cv20_0_val")


def test_bad_photos_are_skipped_by_name_and_empty_data_fails_fast(tmp_path):
    root = write_source(tmp_path / "bad", {"train": 3, "val": 1})
    images, masks = root / "train" / "images", root / "train" / "masks"
    Image.fromarray(draw_photo(9)[0]).save(images / "no_mask.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(draw_photo(8)[1]).save(masks / "broken.png")
    Image.fromarray(draw_photo(7)[0]).save(images / "wrong_size.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "wrong_size.png")
    (images / "notes.txt").write_text("not a photo")
    photos = _set(root)
    assert len(photos.photos) == 3
    reasons = {os.path.basename(p): r for p, r in photos.skipped}
    assert set(reasons) == {"no_mask.png", "broken.png", "wrong_size.png", "notes.txt"}
    assert "no mask" in reasons["no_mask.png"] and "10x10" in reasons["wrong_size.png"]
    empty = tmp_path / "empty" / "train"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(ValueError, match="no usable photo"):
        _set(tmp_path / "empty")
    clean = write_source(tmp_path / "clean", {"train": 2, "val": 1}, crack=False)
    with pytest.raises(ValueError, match="no crack pixel"):
        load_sources([SourceSpec("clean", str(clean))], "train")
    with pytest.raises(ValueError, match="not found"):
        _set(tmp_path / "bad", "test")


def test_parse_sources_resolves_names_roots_and_rejects_bad_specs(tmp_path):
    one = parse_sources(str(tmp_path / "uav75"))
    assert one == [SourceSpec("uav75", str(tmp_path / "uav75"), 1.0)]
    mix = parse_sources("uav75:0.6, uavcrack:0.3,deepcrack:0.1", "/data")
    assert [(s.name, s.path) for s in mix] == [("uav75", "/data/uav75"), ("uavcrack", "/data/uavcrack"),
                                              ("deepcrack", "/data/deepcrack")]
    assert sum(s.weight for s in mix) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="twice"):
        parse_sources("a/x:1,b/x:1")
    with pytest.raises(ValueError, match="weight"):
        parse_sources("a:0")


def test_eval_tiles_per_source_and_pooled(tmp_path):
    a = write_source(tmp_path / "a", {"train": 1, "val": 2}, seed=1)
    write_source(tmp_path / "b", {"train": 1, "val": 1}, seed=2)
    cfg = DataConfig(source="photos", path="a,b", data_root=str(tmp_path), image_size=40, val_tile=32)
    split = make_input(cfg, "val", False, 4, backend="numpy")
    assert set(split.by_source) == {"a", "b"}
    tiles = grid_tiles(_set(a, "val"), tile=32, min_crack_pixels=40)
    assert split.by_source["a"].num_examples == len(tiles.labels)
    assert split.num_examples == sum(p.num_examples for p in split.by_source.values())
    x, y = split.by_source["a"].dataset[0]
    assert x.shape[1:] == (40, 40, 3) and x.dtype == np.uint8  # tiles resized to the model input


@pytest.mark.shared_data
def test_uav75_val_grid_tiles_are_exactly_the_shared_val_tiles(shared_data):
    tiles = grid_tiles(_set(shared_data / "uav75", "val"), tile=128, min_crack_pixels=40)
    assert len(tiles.labels) == 151 and tiles.counts == {0: 99, 1: 52}
    for image, label, name in zip(tiles.images, tiles.labels, tiles.names):
        cls = ("background", "crack")[label]
        path = shared_data / "uav75_tiles" / "val" / cls / (name.split("/", 1)[1] + ".png")
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), image, err_msg=name)
