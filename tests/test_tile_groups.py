"""tools/tile_groups.py: each left-out tile's photo, cut again as the trainer cut it, checked by label."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crack_tf.data.crops import grid_tiles
from crack_tf.data.photos import load_sources, parse_sources
from tests.photo_data import write_source
from tests.tool_loader import load_tool


def _run(folder, root, labels, eval_sources="site"):
    folder.mkdir(parents=True)
    config = {"eval_sources": eval_sources, "data_root": str(root), "val_split": "val", "val_tile": 32,
              "max_padding": 0.1, "eval_max_tiles": None, "val_fraction": 0.2}
    point = {"threshold": 0.5, "temperature": 1.0, "rule": "f1", "tta": "none"}
    (folder / "run.json").write_text(json.dumps({"config": config, "operating_point": point}))
    val = np.zeros(5, np.int8)
    np.savez(folder / "margins.npz", margins=np.zeros((1, 5 + labels.size), np.float32),
             labels=np.r_[val, labels], sources=np.array(["other"] * 5 + ["site"] * labels.size),
             split=np.array(["val"] * 5 + ["eval"] * labels.size))


def test_groups_are_the_tiles_photos_in_margins_order(tmp_path):
    root = tmp_path / "data"
    write_source(root / "site", {"train": 1, "val": 3}, seed=4)
    tiles = grid_tiles(load_sources(parse_sources("site", str(root)), "val", need_cracks=False)[0], 32, 40, 0.1)
    assert len(set(tiles.groups)) == 3 and 0 < tiles.labels.sum() < tiles.labels.size
    tool = load_tool("tile_groups")
    _run(tmp_path / "runs" / "r_no_site_s0", root, tiles.labels)
    _run(tmp_path / "runs" / "r_no_site_s1", root, 1 - tiles.labels)  # another data version: refused
    _run(tmp_path / "runs" / "r_all_s0", root, tiles.labels, eval_sources="")
    lines = tool.main_args([f"--runs={tmp_path / 'runs' / 'r_*_s0'}"])
    assert lines[0].endswith("skipped") and lines[1].endswith(f"{tiles.labels.size} tiles of 3 photos")
    out = np.load(tmp_path / "runs" / "r_no_site_s0" / "groups.npz")
    assert out["groups"].tolist() == [f"site/{g}" for g in tiles.groups] and out["labels"].tolist() == tiles.labels.tolist()
    assert [n.split("/")[1].split("_y")[0] for n in out["names"]] == tiles.groups  # the tile's own photo
    with pytest.raises(ValueError, match="do not match"):
        tool.main_args([f"--runs={tmp_path / 'runs' / 'r_no_site_s1'}"])
    # The curve reads them: every fit draws whole photos, so fewer tiles than N - n are scored.
    curve = load_tool("few_shot_curve").main_args([f"--runs={tmp_path / 'runs' / 'r_no_site_s0'}",
                                                   f"--out={tmp_path / 'curve'}", "--ns=0,3", "--draws=4",
                                                   "--prior_tiles=0"])
    assert [r["n"] for r in curve] == [0, 3] and curve[1]["rest"] < tiles.labels.size - 3
