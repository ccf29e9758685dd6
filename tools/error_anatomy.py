"""Where a model's errors are: misses by the crack's size in the tile, false alarms by the background
tile's distance to the nearest crack; on a left-out source (``--split=eval``) or the trained sources' val.

  python tools/error_anatomy.py --runs='docs/results/h100_2026-12-06[fh]/ablation_loso/synthpre_robustaug_epochs48_no_*' \\
      --data_root=../shared/data --split=eval,val --out=docs/results/h100_2026-12-07e/error_anatomy_recommended.md

Each run folder holds ``margins.npz`` + ``run.json`` (``config.json``) of a photos run, e.g. a
leave-one-source-out grid's (``<row>_no_<source>_s<seed>``). The tiles of a split are cut again as the
trainer cut them (``tools/tile_groups.py``: ``eval``, the ``--eval_sources`` tiles; ``val``, the
``--data_dir`` sources' val tiles; checked against the margins' labels) and measured on their photo's
mask: a crack tile's crack pixels (the fixed tiles' rule: >= 40 of them, a background tile none,
anything between dropped) and a background tile's gap, the distance in pixels from the tile's edge to
the nearest crack pixel of its photo (none: a photo without any). Each run is scored at its stored
operating point (``p > float32(threshold)``, as ``tools/compare_loso.py``); per row, split and source
the table gives each bin's tiles, its error rate (mean ± std over the runs) and its share of that
source's errors. Nothing is re-run.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tile_groups import check_labels, left_out_tile_sets, left_out_tiles  # noqa: E402  (tools/ is not a package)

from crack_tf.data.photos import list_photos, load_sources, parse_sources  # noqa: E402
from crack_tf.data.prep import JOINT_VALUE, read_mask  # noqa: E402  (JOINT_VALUE: UAV75 masks' planking joints)
from crack_tf.evaluation import plots, run_margins  # noqa: E402
from crack_tf.evaluation import site_calibration as sc  # noqa: E402

CRACK_BINS = (40, 100, 300, 1000)  # crack pixels in the tile: [40, 100), [100, 300), [300, 1000), >= 1000
GAP_BINS = (0, 16, 64, 256)  # px from the tile's edge to the nearest crack: [0, 16), ..., >= 256, none
SPLITS = {"eval": "eval_sources", "val": "data_dir"}  # margins' split -> the config key naming its sources
NAME = re.compile(r"^(?P<source>[^/]+)/(?P<stem>.+)_y(?P<y>\d+)_x(?P<x>\d+)$")
SEED = re.compile(r"_s(?P<seed>\d+)$")


def bin_labels(edges: tuple[int, ...], unit: str) -> list[str]:
    """``(40, 100, 300)`` -> ["40-99 px", "100-299 px", ">= 300 px"] (``unit`` after each)."""
    return [f"{lo}-{hi - 1} {unit}" for lo, hi in zip(edges, edges[1:])] + [f">= {edges[-1]} {unit}"]


def crack_gap(points: np.ndarray, y: int, x: int, side: int) -> float:
    """Euclidean distance from the square tile at (``y``, ``x``) to the nearest of ``points`` [K, 2]
    (row, col); 0 inside it, inf without points."""
    if len(points) == 0:
        return float("inf")
    dy = np.maximum(np.maximum(y - points[:, 0], points[:, 0] - (y + side - 1)), 0)
    dx = np.maximum(np.maximum(x - points[:, 1], points[:, 1] - (x + side - 1)), 0)
    return float(np.sqrt(np.min(dy.astype(np.float64) ** 2 + dx.astype(np.float64) ** 2)))


def split_as_eval(config: dict, split: str) -> dict:
    """The run's config with ``eval_sources`` naming ``split``'s sources (val tiles are cut by the same
    rule as the left-out ones), for :mod:`tile_groups`' cutting."""
    sources = config.get(SPLITS[split])
    if not sources:
        raise ValueError(f"the run has no --{SPLITS[split]} (split {split!r} has no tiles to cut)")
    return {**config, "eval_sources": sources}


def groups_of(parts: list[dict]):
    """((row, split, source), that key's parts: one per run), in sorted order."""
    for key in sorted({(p["row"], p["split"], p["source"]) for p in parts}):
        yield key, [p for p in parts if (p["row"], p["split"], p["source"]) == key]


def tile_facts(config: dict, split: str = "eval", data_root: str | None = None) -> dict[str, np.ndarray]:
    """``labels``, ``crack_pixels``, ``gap`` and ``joint_pixels`` (mask value 204) [N] of a run's
    ``split`` tiles (``eval``: the ``--eval_sources``' tiles; ``val``: the ``--data_dir`` sources'), in
    margins order."""
    as_eval = split_as_eval(config, split)
    labels, _, names = left_out_tiles(as_eval, data_root)
    specs = parse_sources(as_eval["eval_sources"], data_root or config.get("data_root", ""))
    split_name, fraction = config.get("val_split") or "val", config.get("val_fraction", 0.2)
    sets = load_sources(specs, split_name, fraction, need_cracks=False)
    masks = {image: mask for spec in specs for image, mask in list_photos(spec, split_name, fraction).pairs}
    photos = {(s.name, os.path.splitext(os.path.basename(p.path))[0]): p for s in sets for p in s.photos}
    side = int(config.get("val_tile", 128))
    pixels, gaps, joints = np.zeros(len(names), np.int64), np.zeros(len(names)), np.zeros(len(names), np.int64)
    mask_of: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        m = NAME.match(name)
        photo = photos[(m["source"], m["stem"])]
        y, x = int(m["y"]), int(m["x"])
        pixels[i] = np.count_nonzero(photo.crack[y : y + side, x : x + side])
        gaps[i] = crack_gap(photo.crack_points, y, x, side)
        if photo.path not in mask_of:
            mask_of[photo.path] = read_mask(masks[photo.path])
        joints[i] = np.count_nonzero(mask_of[photo.path][y : y + side, x : x + side] == JOINT_VALUE)
    return {"labels": labels, "crack_pixels": pixels, "gap": gaps, "joint_pixels": joints}


def run_errors(folder: str, splits: tuple[str, ...] = ("eval",), data_root: str | None = None) -> list[dict]:
    """One run's tiles per (split, source): its row (the folder name less ``_no_<source>`` and
    ``_s<seed>``), seed, each tile's facts and whether the run is wrong on it."""
    run = run_margins.read_run(folder)
    a, point, name = run["arrays"], run["point"], run["name"]
    seed = SEED.search(name)
    row = re.sub(r"(_no_[a-z0-9+]+)?_s\d+$", "", name)
    out = []
    for split in splits:
        keep = a["split"] == split
        if not keep.any():
            raise ValueError(f"{folder}: margins.npz has no split == {split!r} tiles")
        facts = tile_facts(run["config"], split, data_root)
        check_labels(folder, facts["labels"], a["labels"][keep])
        p = sc.predictions(a["margins"][:, keep], point)
        wrong = sc.says_crack(p, point) != (facts["labels"] == 1)
        sources = a["sources"][keep]
        for source in sorted(set(sources.tolist())):
            sel = sources == source
            out.append({"row": row, "split": split, "source": source, "seed": int(seed["seed"]) if seed else 0,
                        "config": run["config"], "p": p[sel], "wrong": wrong[sel],
                        **{k: v[sel] for k, v in facts.items()}})
    return out


def bins_of(tiles: dict) -> list[tuple[str, str, np.ndarray]]:
    """(kind, bin label, tile mask) of the misses' and the false alarms' bins of one run's tiles."""
    crack, pixels, gap = tiles["labels"] == 1, tiles["crack_pixels"], tiles["gap"]
    out = []
    for label, lo, hi in zip(bin_labels(CRACK_BINS, "crack px"), CRACK_BINS, (*CRACK_BINS[1:], np.inf)):
        out.append(("missed crack", label, crack & (pixels >= lo) & (pixels < hi)))
    for label, lo, hi in zip(bin_labels(GAP_BINS, "px away"), GAP_BINS, (*GAP_BINS[1:], np.inf)):
        out.append(("false alarm", label, ~crack & (gap >= lo) & (gap < hi)))
    out.append(("false alarm", "no crack in the photo", ~crack & np.isinf(gap)))
    joint = tiles["joint_pixels"] > 0
    if joint.any():  # sources that mark joints (UAV75): the background tiles with one, and without
        out += [("false alarm", "a joint in the tile", ~crack & joint), ("false alarm", "no joint in the tile", ~crack & ~joint)]
    return out


def anatomy(parts: list[dict]) -> list[dict]:
    """Per (row, split, source, bin): tiles, error rate and share of the source's errors, mean ± std
    over the runs."""
    table = []
    for key, group in groups_of(parts):
        per_run = [bins_of(p) for p in group]
        for b, (kind, label, _) in enumerate(per_run[0]):
            masks = [bins[b][2] for bins in per_run]
            tiles = sorted({int(m.sum()) for m in masks})
            rates = [float(p["wrong"][m].mean()) for p, m in zip(group, masks) if m.any()]
            shares = [float(p["wrong"][m].sum() / max(1, p["wrong"].sum())) for p, m in zip(group, masks)]
            table.append({"row": key[0], "split": key[1], "source": key[2], "runs": len(group),
                          "seeds": sorted(p["seed"] for p in group), "kind": kind, "bin": label,
                          "tiles": tiles[0] if len(tiles) == 1 else tiles,
                          "error_rate": _mean_std(rates), "error_share": _mean_std(shares)})
    return table


def worst_tiles(group: list[dict], k: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({"false alarms": the ``k`` background tiles of highest mean p(crack) over the runs, "misses": the
    ``k`` crack tiles of lowest}, the mean p [N]) of one (row, split, source)'s runs, which share tiles."""
    if len({g["p"].size for g in group}) != 1:
        raise ValueError(f"{group[0]['row']} {group[0]['split']} {group[0]['source']}: the runs scored different tiles")
    p = np.mean([g["p"] for g in group], axis=0)
    labels = group[0]["labels"]
    background, crack = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    return {"false alarms": background[np.argsort(-p[background], kind="stable")][:k],
            "misses": crack[np.argsort(p[crack], kind="stable")][:k]}, p


def gallery_blocks(group: list[dict], tiles, k: int) -> list[tuple[str, list[tuple[np.ndarray, str]]]]:
    """The worst false alarms and misses of one (row, split, source)'s runs as
    :func:`crack_tf.evaluation.plots.error_grid_png` blocks; ``tiles``: their ``Tiles``, cut again."""
    worst, p = worst_tiles(group, k)
    first, wrong = group[0], np.sum([g["wrong"] for g in group], axis=0)
    if tiles.labels.tolist() != first["labels"].tolist():
        raise ValueError(f"{first['row']} {first['split']} {first['source']}: the tiles cut again are not the runs'")
    where = {"false alarms": [f"{first['gap'][i]:.0f} px from a crack" + (", a joint" if first["joint_pixels"][i] else "")
                              for i in worst["false alarms"]],
             "misses": [f"{first['crack_pixels'][i]} crack px" for i in worst["misses"]]}
    of = "left out" if first["split"] == "eval" else first["split"]
    return [(f"{first['source']} ({of}), {name}: {'highest' if name == 'false alarms' else 'lowest'} mean p(crack) "
             f"over {len(group)} runs",
             [(tiles.images[i], f"{_short(tiles.names[i].split('/', 1)[1])}\np={p[i]:.2f}, wrong {wrong[i]}/{len(group)}\n{w}")
              for i, w in zip(idx, where[name])])
            for name, idx in worst.items()]


def _short(name: str, width: int = 26) -> str:
    """A tile's name cut to ``width`` characters from its end (the position and photo suffix stay)."""
    return name if len(name) <= width else "..." + name[3 - width:]


def write_galleries(parts: list[dict], out_dir: str, data_root: str | None = None, k: int = 16) -> list[str]:
    """One PNG per (row, split, source): its worst false alarms and misses, averaged over the runs,
    each tile cut again from its photo; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key, group in groups_of(parts):
        cut = left_out_tile_sets(split_as_eval(group[0]["config"], key[1]), data_root)
        paths.append(os.path.join(out_dir, f"{key[0]}_{key[1]}_{key[2]}.png"))
        plots.error_grid_png(gallery_blocks(group, next(t for t in cut if t.name == key[2]), k), paths[-1])
    return paths


def _mean_std(values: list[float]) -> tuple[float, float | None] | None:
    """(mean, sample std; None for one value), None for no value."""
    if not values:
        return None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _pct(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value[0]:.1f}" + ("" if value[1] is None else f" ± {100 * value[1]:.1f}")


def markdown(table: list[dict]) -> str:
    lines = ["| row | tiles of | source | runs | error | bin | tiles | error rate % | share of the source's errors % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        of = "left out" if t["split"] == "eval" else t["split"]
        lines.append(f"| {t['row']} | {of} | {t['source']} | {t['runs']} | {t['kind']} | {t['bin']} | {t['tiles']} | "
                     f"{_pct(t['error_rate'])} | {_pct(t['error_share'])} |")
    return ("\n".join(lines) + "\n\nMean ± sample std over the runs (seeds); each run at its stored operating point. "
            "`left out`: the source the run never trained on (`--eval_sources`); `val`: a trained source's val tiles.\n")


def main_args(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="Glob of leave-one-source-out run folders (quote it).")
    parser.add_argument("--data_root", default=None, help="Replaces the runs' --data_root (e.g. ../shared/data).")
    parser.add_argument("--split", default="eval", help="eval (the left-out tiles), val (the trained sources'), "
                        "or both: eval,val.")
    parser.add_argument("--out", default=None, help="Write the Markdown table here (and <out>.json).")
    parser.add_argument("--gallery", default=None, help="Write here one PNG per row, split and source: its worst "
                        "false alarms and misses (mean p(crack) over the runs), the tiles cut again.")
    parser.add_argument("--gallery_tiles", type=int, default=16, help="Tiles of each kind in a gallery.")
    args = parser.parse_args(argv)
    splits = tuple(s for s in args.split.split(",") if s)
    if not splits or set(splits) - set(SPLITS):
        raise ValueError(f"--split={args.split!r}: choose from {sorted(SPLITS)} (comma-separated)")
    folders = sorted(d for d in glob.glob(args.runs) if os.path.isfile(os.path.join(d, "margins.npz")))
    if not folders:
        raise ValueError(f"--runs={args.runs!r} matches no run folder with a margins.npz")
    parts = []
    for folder in folders:
        found = run_errors(folder, splits, args.data_root)
        parts += found
        print(f"{folder}: " + ", ".join(f"{p['split']} {p['source']} {int(p['wrong'].sum())} of {p['wrong'].size} wrong"
                                        for p in found), flush=True)
    table = anatomy(parts)
    text = markdown(table)
    print(text)
    if args.out:
        run_margins.write_table(args.out, text, table)
    if args.gallery:
        for path in write_galleries(parts, args.gallery, args.data_root, args.gallery_tiles):
            print(f"gallery: {path}")
    return table


if __name__ == "__main__":
    from crack_tf.cli import run_tool

    sys.exit(run_tool(main_args, lambda table: f"error_anatomy: {len(table)} rows"))
