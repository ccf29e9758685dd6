"""tools/error_anatomy.py: each tile's crack pixels, gap to the nearest crack and joint pixels, measured
again here from the mask files (scipy's distance transform), and the bins' error rates of planted errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from crack_tf.data.crops import grid_tiles
from crack_tf.data.photos import load_sources, parse_sources
from tests.photo_data import write_source
from tests.tool_loader import load_tool

TILE = 32


def _reference(root, split="val"):
    """Per tile of the source's grid (labels, crack px, gap, joint px), from the mask PNGs alone."""
    tiles = grid_tiles(load_sources(parse_sources("site", str(root)), split, need_cracks=False)[0], TILE, 40, 0.1)
    pixels, gaps, joints = [], [], []
    for name in tiles.names:
        stem, rest = name.split("/")[1].split("_y")
        y, x = int(rest.split("_x")[0]), int(rest.split("_x")[1])
        mask = np.asarray(Image.open(root / "site" / split / "masks" / f"{stem}.png"))[..., 0]
        distance = ndimage.distance_transform_edt(mask != 255)  # to the nearest crack pixel
        pixels.append(int((mask[y : y + TILE, x : x + TILE] == 255).sum()))
        gaps.append(float(distance[y : y + TILE, x : x + TILE].min()))
        joints.append(int((mask[y : y + TILE, x : x + TILE] == 204).sum()))
    return tiles.labels, np.array(pixels), np.array(gaps), np.array(joints)


def _run(folder, root, labels, wrong, seed):
    """A left-out run on "site" whose stored point (threshold 0.5) is wrong exactly on ``wrong``."""
    folder.mkdir(parents=True)
    config = {"eval_sources": "site", "data_dir": "other", "data_root": str(root), "val_split": "val",
              "val_tile": TILE, "max_padding": 0.1, "eval_max_tiles": None, "val_fraction": 0.2, "seed": seed}
    point = {"threshold": 0.5, "temperature": 1.0, "rule": "f1", "tta": "none"}
    (folder / "run.json").write_text(json.dumps({"config": config, "operating_point": point}))
    says_crack = (labels == 1) != wrong
    np.savez(folder / "margins.npz", margins=np.where(says_crack, 3.0, -3.0)[None].astype(np.float32),
             labels=labels.astype(np.int8), sources=np.array(["site"] * labels.size),
             split=np.array(["eval"] * labels.size))


def test_bins_count_the_tiles_and_errors_the_masks_say(tmp_path):
    root = tmp_path / "data"
    write_source(root / "site", {"train": 1, "val": 3}, size=128, seed=3)
    labels, pixels, gaps, joints = _reference(root)
    assert 0 < labels.sum() < labels.size and (joints[labels == 0] > 0).any() and len(set(gaps[labels == 0])) > 2
    tool = load_tool("error_anatomy")
    facts = tool.tile_facts({"eval_sources": "site", "data_root": str(root), "val_tile": TILE, "max_padding": 0.1},
                            "eval")
    assert facts["labels"].tolist() == labels.tolist() and facts["crack_pixels"].tolist() == pixels.tolist()
    np.testing.assert_allclose(facts["gap"], gaps, atol=1e-9)
    assert facts["joint_pixels"].tolist() == joints.tolist()

    rng = np.random.default_rng(0)
    planted = [rng.random(labels.size) < 0.4 for _ in range(2)]
    for seed, wrong in enumerate(planted):
        _run(tmp_path / "runs" / f"r_no_site_s{seed}", root, labels, wrong, seed)
    table = tool.main_args([f"--runs={tmp_path / 'runs' / 'r_no_site_s*'}", f"--out={tmp_path / 'out.md'}"])
    rows = {(t["kind"], t["bin"]): t for t in table}
    assert {t["row"] for t in table} == {"r"} and {t["source"] for t in table} == {"site"}
    background = labels == 0
    expected = {("missed crack", "40-99 crack px"): (labels == 1) & (pixels < 100),
                ("missed crack", "100-299 crack px"): (labels == 1) & (pixels >= 100) & (pixels < 300),
                ("false alarm", "0-15 px away"): background & (gaps < 16),
                ("false alarm", "16-63 px away"): background & (gaps >= 16) & (gaps < 64),
                ("false alarm", "64-255 px away"): background & (gaps >= 64) & (gaps < 256),
                ("false alarm", "a joint in the tile"): background & (joints > 0),
                ("false alarm", "no joint in the tile"): background & (joints == 0)}
    for key, mask in expected.items():
        assert rows[key]["tiles"] == int(mask.sum()), key
        rates = [w[mask].mean() for w in planted]
        shares = [w[mask].sum() / w.sum() for w in planted]
        if mask.any():
            assert rows[key]["error_rate"] == pytest.approx((np.mean(rates), np.std(rates, ddof=1))), key
        assert rows[key]["error_share"] == pytest.approx((np.mean(shares), np.std(shares, ddof=1))), key
    # the misses' and the false alarms' bins split the errors: their shares add up to 1 (joint rows aside)
    split_rows = [t for t in table if "joint" not in t["bin"]]
    assert sum(t["error_share"][0] for t in split_rows) == pytest.approx(1.0)
    assert "| r | left out | site | 2 |" in (tmp_path / "out.md").read_text()
    assert json.loads((tmp_path / "out.md.json").read_text())[0]["runs"] == 2


def test_gallery_shows_the_tiles_of_highest_and_lowest_mean_probability(tmp_path):
    root = tmp_path / "data"
    write_source(root / "site", {"train": 1, "val": 3}, size=128, seed=3)
    labels = _reference(root)[0]
    rng = np.random.default_rng(1)
    for seed in range(2):
        _run(tmp_path / "runs" / f"r_no_site_s{seed}", root, labels, rng.random(labels.size) < 0.3, seed)
    tool = load_tool("error_anatomy")
    parts = [part for seed in range(2) for part in tool.run_errors(str(tmp_path / "runs" / f"r_no_site_s{seed}"))]
    worst, p = tool.worst_tiles(parts, 3)
    expected_p = np.mean([part["p"] for part in parts], axis=0)  # each run's p(crack): sigmoid(+-3)
    np.testing.assert_allclose(p, expected_p)
    background, crack = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    assert p[worst["false alarms"]].min() >= np.sort(p[background])[-3] and labels[worst["false alarms"]].max() == 0
    assert p[worst["misses"]].max() <= np.sort(p[crack])[2] and labels[worst["misses"]].min() == 1
    tool.main_args([f"--runs={tmp_path / 'runs' / 'r_no_site_s*'}", f"--gallery={tmp_path / 'gallery'}",
                    "--gallery_tiles=3"])
    image = Image.open(tmp_path / "gallery" / "r_eval_site.png")
    assert image.size[0] > 300 and image.size[1] > 200  # two blocks of three tiles with their captions
    parts[1]["p"] = parts[1]["p"][:-1]  # runs that scored other tiles cannot be averaged
    with pytest.raises(ValueError, match="different tiles"):
        tool.worst_tiles(parts, 3)


def test_refusals_name_what_is_wrong(tmp_path):
    root = tmp_path / "data"
    write_source(root / "site", {"train": 1, "val": 2}, size=96, seed=4)
    labels = _reference(root)[0]
    tool = load_tool("error_anatomy")
    with pytest.raises(ValueError, match="matches no run folder"):
        tool.main_args([f"--runs={tmp_path / 'none_*'}"])
    _run(tmp_path / "runs" / "r_no_site_s0", root, 1 - labels, np.zeros(labels.size, bool), 0)  # other labels
    with pytest.raises(ValueError, match="do not match"):
        tool.main_args([f"--runs={tmp_path / 'runs' / '*'}"])
    with pytest.raises(ValueError, match="--split="):
        tool.main_args([f"--runs={tmp_path / 'runs' / '*'}", "--split=test"])
    with pytest.raises(ValueError, match="no split == 'val' tiles"):
        tool.main_args([f"--runs={tmp_path / 'runs' / '*'}", "--split=val"])
