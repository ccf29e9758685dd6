"""Writes each leave-one-source-out run's ``groups.npz``: the photo (source image) of every left-out tile.

  python tools/tile_groups.py --runs='docs/results/h200_2026-12-04/ablation_loso/*_no_*'

A run's ``margins.npz`` lists the left-out tiles (``split == "eval"``) by label and source only;
``tools/few_shot_curve.py`` needs each tile's photo to draw a few-shot sample from whole photos and
score the other photos (``crack_tf.evaluation.few_shot.draw_grouped``). The tiles are cut again,
without any model, by the trainer's own code (run.json's ``eval_sources``, ``data_root``,
``val_split``, ``val_tile``, ``max_padding``, ``eval_max_tiles``, ``val_fraction``), and their labels
must equal the margins' (else the data changed since the run: nothing is written for it). Runs
trained with ``--save_eval_features`` already have the groups in ``features.npz``.
``--data_root`` replaces the run's (e.g. ``../shared/data`` when the run's was another machine's).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def left_out_tile_sets(config: dict, data_root: str | None = None, image_size: int | None = None) -> list:
    """The trainer's own ``eval_tiles`` of a run's left-out sources (one ``Tiles`` per source, in
    margins order): at the tile size (nothing resized), or at ``image_size`` as the trainer scored them."""
    from crack_tf.data.config import DataConfig
    from crack_tf.data.photo_input import eval_tiles

    tile = config.get("val_tile", 128)
    data = DataConfig(source="photos", path=config["eval_sources"], data_root=data_root or config.get("data_root", ""),
                      image_size=image_size or tile, val_tile=tile, small_policy=config.get("small_policy", "resize"),
                      max_padding=config.get("max_padding", 0.1), eval_max_tiles=config.get("eval_max_tiles") or 0,
                      val_fraction=config.get("val_fraction", 0.2))
    return eval_tiles(data, config.get("val_split") or "val")[1]


def tile_photos(tiles: list) -> np.ndarray:
    """Each tile's group "<source>/<source image>" [N] of :func:`left_out_tile_sets`' tiles."""
    return np.asarray([f"{t.name}/{g}" for t in tiles for g in t.groups])


def check_labels(folder: str, labels: np.ndarray, expected: np.ndarray) -> None:
    """ValueError unless the tiles cut again have the labels of the run's left-out margins."""
    if not np.array_equal(np.asarray(labels, np.int64), np.asarray(expected, np.int64)):
        raise ValueError(f"{folder}: the {np.size(labels)} tiles cut again do not match the {np.size(expected)} "
                         "left-out tiles of margins.npz (the data or the tiling changed since the run)")


def left_out_tiles(config: dict, data_root: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels [N], groups [N] "<source>/<source image>", tile names) of a run's eval tiles, in margins
    order, kept at the tile size (nothing is resized)."""
    tiles = left_out_tile_sets(config, data_root)
    return np.concatenate([t.labels for t in tiles]), tile_photos(tiles), [n for t in tiles for n in t.names]


def write_groups(folder: str, data_root: str | None = None) -> str:
    """``<folder>/groups.npz`` (``groups``, ``labels``, ``names`` of the left-out tiles); a line saying so."""
    with open(os.path.join(folder, "run.json"), encoding="utf-8") as f:
        config = json.load(f)["config"]
    if not config.get("eval_sources"):
        return f"{folder}: no --eval_sources (not a left-out run), skipped"
    with np.load(os.path.join(folder, "margins.npz")) as arrays:
        expected = arrays["labels"][arrays["split"] == "eval"]
    labels, groups, names = left_out_tiles(config, data_root)
    check_labels(folder, labels, expected)
    np.savez_compressed(os.path.join(folder, "groups.npz"), groups=groups, labels=labels.astype(np.int8),
                        names=np.asarray(names))
    return f"{folder}: {labels.size} tiles of {len(set(groups.tolist()))} photos"


def main_args(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="Glob of run folders (quote it).")
    parser.add_argument("--data_root", default=None, help="Replaces the runs' --data_root.")
    args = parser.parse_args(argv)
    folders = sorted(d for d in glob.glob(args.runs) if os.path.isfile(os.path.join(d, "margins.npz")))
    if not folders:
        raise ValueError(f"--runs={args.runs!r} matches no run folder with a margins.npz")
    lines = []
    for folder in folders:
        lines.append(write_groups(folder, args.data_root))
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    from crack_tf.cli import run_tool

    sys.exit(run_tool(main_args, lambda lines: f"tile_groups: {len(lines)} runs"))
