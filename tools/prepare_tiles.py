"""Photos -> classification tiles, as the paper did (1024x1024 photos -> 512x512 tiles).

  python tools/prepare_tiles.py --input_dir=../shared/data/uav75/train,../shared/data/uav75/val \\
      --out_dir=tiles --tile_size=256 --stride=256 --split=train:0.8,val:0.2 --seed=0

* Tiles on a ``--stride`` grid; blurred tiles (variance of the Laplacian < ``--blur_threshold``)
  are rejected and counted.
* Labels from masks (same stem in ``--mask_dir`` or uav75-style ``../masks/``; channel 0,
  255 = crack, 204 = planking joint = background): crack if >= ``--min_crack_pct`` % crack pixels
  (and >= ``--min_crack_pixels``), background if none, ambiguous tiles dropped. Without masks
  (``--no_masks``) tiles go to ``<split>/unlabeled/`` for manual sorting.
* Split by source photo (seeded; no photo in two splits). Output: ``<out>/<split>/<class>/
  <photo>_y<row>_x<col>.png`` plus ``manifest.csv`` (path, label, split, source_photo, y, x,
  laplacian_var, crack_pixels, sha256).
"""

from __future__ import annotations

import collections
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from crack_tf import CLASS_NAMES  # noqa: E402
from crack_tf.data import prep  # noqa: E402
from crack_tf.data.config import DataConfig  # noqa: E402
from crack_tf.data.image_np import decode_image_np  # noqa: E402
from crack_tf.data.listing import check_file  # noqa: E402
from crack_tf.data.progress import Progress  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("input_dir", None, "Folder(s) of photos (searched recursively; masks/ folders ignored).", required=True)
flags.DEFINE_list("mask_dir", [], "Extra folder(s) holding masks with the photo's file stem.")
flags.DEFINE_string("out_dir", None, "Output folder (image-folder layout + manifest.csv).", required=True)
flags.DEFINE_integer("tile_size", 512, "Tile side in pixels (the paper: 512 from 1024x1024 photos).")
flags.DEFINE_integer("stride", 512, "Grid step in pixels (< tile_size = overlapping tiles).")
flags.DEFINE_float("blur_threshold", 50.0, "Reject tiles whose Laplacian variance is below this (0 = keep all).")
flags.DEFINE_float("min_crack_pct", 0.1, "Crack tile: at least this percentage of crack pixels.")
flags.DEFINE_integer("min_crack_pixels", 1, "Crack tile: at least this many crack pixels.")
flags.DEFINE_bool("no_masks", False, "Do not look for masks; write tiles to <split>/unlabeled/.")
flags.DEFINE_list("split", ["train:0.8", "val:0.1", "test:0.1"], "split:fraction pairs, split by source photo.")
flags.DEFINE_integer("seed", 0, "Seed of the photo split.")
flags.DEFINE_enum("format", "png", ["png", "jpg"], "Tile file format (png is lossless).")
flags.DEFINE_bool("keep_splits", False, "Each --input_dir is a photos source (<split>/images + <split>/masks): keep "
                  "its own splits (and the val fold of a source without val/), cut --tile_size tiles on the grid "
                  "with the photos source's rule (crack >= --min_crack_pixels, background none, padded tiles "
                  "dropped) as <split>/<class>/<stem>_y###_x###.png: the uav75_tiles layout.")


def _fractions(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, frac = item.partition(":")
        try:
            out[name] = float(frac)
        except ValueError:
            raise app.UsageError(f"--split item {item!r} is not split:fraction") from None
    return out


def export_grid_tiles() -> int:
    """``--keep_splits``: fixed grid tiles of photo sources, split by the sources' own folders."""
    from crack_tf.data.crops import grid_tiles
    from crack_tf.data.photos import SourceSpec, load_photo_set

    counts = collections.Counter()
    for root in FLAGS.input_dir:
        spec = SourceSpec(os.path.basename(os.path.normpath(root)), root)
        splits = sorted({p.name for p in os.scandir(root) if os.path.isdir(os.path.join(p.path, "images"))} | {"val"})
        for split in splits:
            photos = load_photo_set(spec, split)
            tiles = grid_tiles(photos, FLAGS.tile_size, FLAGS.min_crack_pixels)
            with Progress(len(tiles.labels), f"{spec.name}/{split}") as bar:
                for image, label, name in zip(tiles.images, tiles.labels, tiles.names):
                    cls = CLASS_NAMES[label]
                    out = os.path.join(FLAGS.out_dir, split, cls, name.split("/", 1)[1] + "." + FLAGS.format)
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    Image.fromarray(image).save(out, **({"quality": 95} if FLAGS.format == "jpg" else {}))
                    counts[(split, cls)] += 1
                    bar.update(1)
            if photos.skipped:
                counts[("skipped photos", "")] += len(photos.skipped)
    for (split, cls), n in sorted(counts.items()):
        print(f"{split:>6} {cls:<10} {n}")
    print(f"SUMMARY: {sum(n for (s, _), n in counts.items() if s != 'skipped photos')} tiles of {FLAGS.tile_size} px "
          f"from {len(FLAGS.input_dir)} source(s) -> {FLAGS.out_dir}")
    return 0


def main(argv: list[str]) -> int:
    del argv
    if FLAGS.keep_splits:
        return export_grid_tiles()
    photos = prep.find_photos(FLAGS.input_dir)
    if not photos:
        raise app.UsageError(f"no images under {FLAGS.input_dir}")
    if len({p.stem for p in photos}) != len(photos):
        raise app.UsageError("two photos share a file stem; tile names and the photo split need unique stems")
    splits = prep.split_by_photo([p.stem for p in photos], _fractions(FLAGS.split), FLAGS.seed)
    stats = collections.Counter()
    counts = collections.Counter()
    rows = []
    cfg = DataConfig(min_side=1)
    with Progress(len(photos), "photos") as bar:
        for photo in photos:
            bar.update(0)
            chk = check_file(photo, cfg)
            mask_path = None if FLAGS.no_masks else prep.find_mask(photo, FLAGS.mask_dir)
            reason = chk.reason or (None if FLAGS.no_masks or mask_path else "no mask found (use --no_masks)")
            image = decode_image_np(photo) if not reason else None
            mask = prep.read_mask(mask_path) if mask_path and not reason else None
            if mask is not None and mask.shape != image.shape[:2]:
                reason = f"mask {mask_path} is {mask.shape}, photo is {image.shape[:2]}"
            if not reason and min(image.shape[:2]) < FLAGS.tile_size:
                reason = f"photo {image.shape[1]}x{image.shape[0]} is smaller than --tile_size={FLAGS.tile_size}"
            if reason:
                stats["bad_photos"] += 1
                print(f"\nWARNING: skipped photo {photo}: {reason}", file=sys.stderr)
                bar.update(1)
                continue
            split = splits[photo.stem]
            for y, x in prep.tile_origins(*image.shape[:2], FLAGS.tile_size, FLAGS.stride):
                tile = image[y : y + FLAGS.tile_size, x : x + FLAGS.tile_size]
                stats["tiles"] += 1
                lap = prep.laplacian_variance(tile)
                if lap < FLAGS.blur_threshold:
                    stats["blurred"] += 1
                    continue
                crack_px, cls = "", "unlabeled"
                if mask is not None:
                    m = mask[y : y + FLAGS.tile_size, x : x + FLAGS.tile_size]
                    crack_px = int((m == prep.CRACK_VALUE).sum())
                    label = prep.mask_label(m, FLAGS.min_crack_pct, FLAGS.min_crack_pixels)
                    if label is None:
                        stats["ambiguous"] += 1
                        continue
                    cls = CLASS_NAMES[label]
                rel = os.path.join(split, cls, f"{photo.stem}_y{y:04d}_x{x:04d}.{FLAGS.format}")
                out = os.path.join(FLAGS.out_dir, rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                Image.fromarray(tile).save(out, **({"quality": 95} if FLAGS.format == "jpg" else {}))
                counts[(split, cls)] += 1
                rows.append([rel, cls, split, photo.stem, y, x, f"{lap:.1f}", crack_px, prep.sha256_file(out)])
            bar.update(1)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "manifest.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "source_photo", "y", "x", "laplacian_var", "crack_pixels", "sha256"])
        w.writerows(rows)
    for (split, cls), n in sorted(counts.items()):
        print(f"{split:>6} {cls:<10} {n}")
    print(
        f"SUMMARY: {len(photos)} photos ({stats['bad_photos']} skipped), {stats['tiles']} tiles, "
        f"{len(rows)} written, {stats['blurred']} rejected as blurred (< {FLAGS.blur_threshold}), "
        f"{stats['ambiguous']} ambiguous dropped -> {FLAGS.out_dir}"
    )
    return 0


if __name__ == "__main__":
    app.run(main)
