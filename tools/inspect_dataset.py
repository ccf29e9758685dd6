"""Inspects an image folder ``<data_dir>/<split>/{crack,background}/*``.

  python tools/inspect_dataset.py --data_dir=../shared/data/uav75_tiles --sheet=sheet.png

Prints counts per split and class (usable / skipped, with reasons), a histogram of image sizes,
duplicate files by sha256 (flagging duplicates that cross splits: leakage), and writes a
contact sheet PNG of seeded random samples, one row per split and class.
"""

from __future__ import annotations

import collections
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from crack_tf import CLASS_NAMES  # noqa: E402
from crack_tf.data.config import DataConfig  # noqa: E402
from crack_tf.data.image_np import decode_image_np, eval_transform_np  # noqa: E402
from crack_tf.data.listing import candidate_files, check_file  # noqa: E402
from crack_tf.data.prep import sha256_file  # noqa: E402
from crack_tf.data.progress import Progress  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Image folder to inspect.", required=True)
flags.DEFINE_string("sheet", "", "Write a contact sheet PNG here (empty = no sheet).")
flags.DEFINE_integer("samples", 8, "Samples per split and class on the contact sheet.")
flags.DEFINE_integer("thumb", 96, "Thumbnail side in pixels.")
flags.DEFINE_integer("seed", 0, "Seed for picking the samples.")


def scan(data_dir: str) -> tuple[dict, list, dict]:
    """(usable[(split, class)] -> [(path, (w, h))], skipped [(path, reason)], sha -> [paths])."""
    splits = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)))
    todo = []
    for split in splits:
        for name in CLASS_NAMES:
            d = os.path.join(data_dir, split, name)
            if not os.path.isdir(d):
                print(f"WARNING: missing class folder {d}")
                continue
            files, skipped = candidate_files(pathlib.Path(d))
            todo += [(split, name, f) for f in files]
            todo += [(split, name, (p, r)) for p, r in skipped]
    usable, bad, hashes = collections.defaultdict(list), [], collections.defaultdict(list)
    cfg = DataConfig()
    with Progress(len(todo), "files") as bar:
        for split, name, item in todo:
            bar.update(1)
            if isinstance(item, tuple):
                bad.append(item)
                continue
            chk = check_file(item, cfg)
            if chk.reason:
                bad.append((item, chk.reason))
                continue
            usable[(split, name)].append((item, chk.size))
            hashes[sha256_file(item)].append(item)
    return usable, bad, hashes


def contact_sheet(usable: dict, path: str, samples: int, thumb: int, seed: int) -> None:
    keys = sorted(usable)
    label_w = 150
    sheet = Image.new("RGB", (label_w + samples * (thumb + 4), len(keys) * (thumb + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, key in enumerate(keys):
        items = usable[key]
        rng = np.random.default_rng([seed, r])
        pick = rng.choice(len(items), min(samples, len(items)), replace=False)
        draw.text((4, r * (thumb + 4) + thumb // 2), f"{key[0]}/{key[1]}\n{len(items)} files", fill=(0, 0, 0))
        for c, i in enumerate(sorted(pick)):
            img = decode_image_np(items[i][0])
            s = min(img.shape[:2])
            small = Image.fromarray(eval_transform_np(img, s)).resize((thumb, thumb), Image.BILINEAR)
            sheet.paste(small, (label_w + c * (thumb + 4), r * (thumb + 4)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)


def main(argv: list[str]) -> int:
    del argv
    if not os.path.isdir(FLAGS.data_dir):
        raise app.UsageError(f"--data_dir {FLAGS.data_dir} is not a directory")
    usable, bad, hashes = scan(FLAGS.data_dir)
    print("split      class       usable")
    for (split, name), items in sorted(usable.items()):
        print(f"{split:<10} {name:<11} {len(items)}")
    sizes = collections.Counter(f"{w}x{h}" for items in usable.values() for _, (w, h) in items)
    print("sizes (WxH: count):", ", ".join(f"{k}: {v}" for k, v in sizes.most_common(10)))
    for path, reason in bad:
        print(f"SKIPPED {path}: {reason}")
    dups = [paths for paths in hashes.values() if len(paths) > 1]
    split_of = {p: os.path.relpath(p, FLAGS.data_dir).split(os.sep)[0] for ps in dups for p in ps}
    leaks = [ps for ps in dups if len({split_of[p] for p in ps}) > 1]
    for ps in dups[:20]:
        print("DUPLICATE" + (" ACROSS SPLITS" if ps in leaks else ""), " = ".join(ps))
    if FLAGS.sheet and usable:
        contact_sheet(usable, FLAGS.sheet, FLAGS.samples, FLAGS.thumb, FLAGS.seed)
        print(f"contact sheet: {FLAGS.sheet}")
    total = sum(len(v) for v in usable.values())
    print(
        f"SUMMARY: {total} usable images in {len({k[0] for k in usable})} split(s), {len(bad)} skipped, "
        f"{sum(len(p) - 1 for p in dups)} duplicate file(s) ({len(leaks)} group(s) across splits)"
    )
    return 0


if __name__ == "__main__":
    app.run(main)
