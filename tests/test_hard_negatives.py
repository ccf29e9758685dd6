"""--hard_negatives: background crops drawn at marked joints (UAV75's mask 204) or beside a crack, where
a model's false alarms are; left off, the crops are those of before the option."""

from __future__ import annotations

import numpy as np
import pytest

from crack_tf.data.crops import CropOptions, CropSampler
from crack_tf.data.photos import Photo, PhotoSet, SourceSpec, load_photo_set
from crack_tf.training import config as train_config
from tests.photo_data import crops_module_at, draw_photo, write_source

BEFORE = "265926c"  # the last commit before --hard_negatives
BASE = dict(image_size=40, crop_side=(16, 40), min_crack_pixels=20, reference=32)


def _photo_set(joint: bool, n: int = 3) -> PhotoSet:
    """Photos of 160 px: a diagonal crack in the upper left, a joint row near the bottom (``joint``)."""
    photos = []
    for i in range(n):
        image, mask = draw_photo(i, size=160, joint=joint)
        crack = mask == 255
        photos.append(Photo(f"p{i}", f"p{i}", image, crack, None, np.argwhere(crack).astype(np.int32),
                            np.argwhere(mask == 204).astype(np.int32)))
    return PhotoSet("site", photos, [], "val")


def _backgrounds(photos: PhotoSet, hard: float, n: int = 600) -> list[tuple[int, int, int, int]]:
    sampler = CropSampler([photos], [1.0], CropOptions(**BASE, hard_negatives=hard), 3, n)
    drawn = [sampler.draw(0, i) for i in range(n)]
    return [crop for label, _, crop, _ in drawn if label == 0]


def _gap(photo: Photo, crop: tuple[int, int, int, int]) -> float:
    """Chebyshev distance from the crop to its photo's nearest crack pixel."""
    _, y, x, side = crop
    py, px = photo.crack_points[:, 0], photo.crack_points[:, 1]
    dy = np.maximum(np.maximum(y - py, py - (y + side - 1)), 0)
    dx = np.maximum(np.maximum(x - px, px - (x + side - 1)), 0)
    return float(np.max([dy, dx], axis=0).min())


@pytest.mark.parametrize("settings", [{}, dict(gamma=0.3, grayscale=0.1, hue=0.03, blur=0.25, jpeg=0.3, noise=6)])
def test_left_off_it_renders_the_crops_of_before(tmp_path, settings):
    src = load_photo_set(SourceSpec("site", str(write_source(tmp_path / "site", {"train": 3}))), "train")
    old = crops_module_at(BEFORE, tmp_path)
    before = old.CropSampler([src], [1.0], old.CropOptions(**BASE, **settings), 7, 64).batch(3, 16)
    now = CropSampler([src], [1.0], CropOptions(**BASE, **settings), 7, 64).batch(3, 16)
    np.testing.assert_array_equal(now[1], before[1])
    np.testing.assert_array_equal(now[0], before[0])  # bit-identical pixels


def test_the_photo_keeps_its_joint_pixels(tmp_path):
    src = load_photo_set(SourceSpec("site", str(write_source(tmp_path / "site", {"train": 2, "val": 1}))), "train")
    for photo in src.photos:  # draw_photo's joint: rows 84-85 of a 96-px photo, mask 204 (RGBA masks)
        assert sorted(set(photo.joint_points[:, 0].tolist())) == [84, 85] and len(photo.joint_points) == 2 * 96
        assert not photo.crack[tuple(photo.joint_points.T)].any() and len(photo.crack_points)


def test_hard_background_crops_sit_at_joints_and_beside_cracks_and_hold_no_crack():
    photos = _photo_set(joint=True)
    plain, hard = _backgrounds(photos, 0.0), _backgrounds(photos, 1.0)
    assert len(plain) > 200 and len(hard) > 200
    for crop in hard:  # still background: not one crack pixel inside
        _, y, x, side = crop
        assert not photos.photos[crop[0]].crack[y : y + side, x : x + side].any()

    def holds_joint(crops):
        return np.mean([bool(((p.joint_points[:, 0] >= y) & (p.joint_points[:, 0] < y + s) & (p.joint_points[:, 1] >= x)
                              & (p.joint_points[:, 1] < x + s)).any())
                        for i, y, x, s in crops for p in [photos.photos[i]]])

    # half the tries are at a joint, and those hold no crack more often: most hard crops (0.81 here, 0.10
    # of the plain ones); the rest beside a crack (below)
    assert holds_joint(hard) > holds_joint(plain) + 0.25


def test_without_joints_every_hard_crop_is_beside_a_crack():
    photos = _photo_set(joint=False)
    plain, hard = _backgrounds(photos, 0.0), _backgrounds(photos, 1.0)
    gaps, gaps_plain = (np.array([_gap(photos.photos[c[0]], c) for c in crops]) for crops in (hard, plain))
    sides = np.array([c[3] for c in hard])
    # the crop's edge 1 px to half a side from a crack pixel (a crop clipped at the photo's edge may move)
    assert np.mean(gaps <= sides / 2 + 1) > 0.9 and gaps.min() >= 1
    assert np.mean(gaps_plain <= 20) < 0.5 < 0.9 < np.mean(gaps <= 20)


def test_a_hard_share_between_is_drawn_at_its_rate():
    photos = _photo_set(joint=False)
    gaps = {h: np.array([_gap(photos.photos[c[0]], c) for c in _backgrounds(photos, h, 1200)]) for h in (0, 0.5, 1)}
    near = {h: np.mean(g <= 20) for h, g in gaps.items()}
    assert near[0] < near[0.5] < near[1]
    assert abs(near[0.5] - (near[0] + near[1]) / 2) < 0.08  # a mixture at the rate asked


@pytest.mark.parametrize("bad, message", [
    (["--data_source=photos", "--data_dir=x", "--hard_negatives=1.5"], "--hard_negatives=1.5: a probability"),
    (["--data_source=folder", "--data_dir=x", "--hard_negatives=0.5"], "photos source only"),
])
def test_bad_flags_are_rejected_before_training(bad, message):
    with pytest.raises(ValueError, match=message):
        train_config.parse_args(bad)
    with pytest.raises(ValueError, match="hard_negatives"):
        CropOptions(hard_negatives=-0.1)


def test_the_flag_reaches_the_crop_options():
    from crack_tf.data.photo_input import crop_options
    from crack_tf.training.build import data_config

    cfg = train_config.parse_args(["--data_source=photos", "--data_dir=x", "--hard_negatives=0.4"])
    assert crop_options(data_config(cfg)).hard_negatives == 0.4
