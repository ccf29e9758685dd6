"""Image folder -> sharded TFRecords + JSON sidecar, readable with DataConfig(source="tfrecord").

  python tools/make_tfrecords.py --data_dir=tiles --out_dir=records --num_shards=8 [--splits=train,val]

Every file is validated first (bad ones are skipped, counted and listed in the sidecar); images
keep their original bytes when TensorFlow can decode the format, else they are stored as PNG.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from crack_tf.data.config import DataConfig  # noqa: E402
from crack_tf.data.listing import list_folder  # noqa: E402
from crack_tf.data.progress import Progress  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Image folder <data_dir>/<split>/{crack,background}/*.", required=True)
flags.DEFINE_string("out_dir", None, "Output folder for shards and crack_tf_tfrecords.json.", required=True)
flags.DEFINE_list("splits", [], "Splits to convert (default: every sub-folder of data_dir).")
flags.DEFINE_integer("num_shards", 4, "Shards per split (capped at the number of images).")
flags.DEFINE_enum("validate", "header", ["header", "full"], "File validation: cheap header checks or full decode.")


def main(argv: list[str]) -> int:
    del argv
    from crack_tf.data.tfrecord import write_sidecar, write_split

    splits = FLAGS.splits or sorted(
        d for d in os.listdir(FLAGS.data_dir) if os.path.isdir(os.path.join(FLAGS.data_dir, d))
    )
    cfg = DataConfig(path=FLAGS.data_dir, validate=FLAGS.validate)
    infos, total, skipped = {}, 0, 0
    for split in splits:
        listing = list_folder(FLAGS.data_dir, split, cfg)
        with Progress(len(listing.paths), f"{split:>6}") as bar:
            infos[split] = write_split(listing, FLAGS.data_dir, FLAGS.out_dir, split, FLAGS.num_shards, bar.update)
        info = infos[split]
        total += info["num_examples"]
        skipped += len(info["skipped"])
        print(f"{split}: {info['num_examples']} examples {info['class_counts']} in {len(info['shards'])} shards, "
              f"{len(info['skipped'])} skipped")  # fmt: skip
    sidecar = write_sidecar(FLAGS.out_dir, infos, os.path.abspath(FLAGS.data_dir))
    print(f"SUMMARY: wrote {total} examples in {len(splits)} split(s), skipped {skipped} bad file(s); {sidecar}")
    return 0


if __name__ == "__main__":
    app.run(main)
