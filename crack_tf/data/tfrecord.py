"""Sharded TFRecords with a JSON sidecar (written by ``tools/make_tfrecords.py``).

Each record is a ``tf.train.Example`` with ``image/encoded`` (the original file bytes when TF
decodes that format, else a lossless PNG made with PIL), ``image/format``, ``image/filename``
(relative to the source root), ``image/height``, ``image/width`` and ``image/class/label``
(background = 0, crack = 1). Shards are ``<split>-00000-of-0000N.tfrecord``; the sidecar
``crack_tf_tfrecords.json`` holds class names and per-split/per-shard counts and files.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from crack_tf.choices import CLASS_NAMES
from crack_tf.data.config import class_counts
from crack_tf.data.image_np import decode_image_np
from crack_tf.data.listing import Listing

SIDECAR = "crack_tf_tfrecords.json"


def tf_bytes(path: str, needs_pil: bool) -> tuple[bytes, str]:
    """Bytes ``decode_image_tf`` reads exactly like the source file: the file itself, or a PNG."""
    if not needs_pil:
        data = pathlib.Path(path).read_bytes()
        return data, pathlib.Path(path).suffix.lower().lstrip(".")
    buf = io.BytesIO()
    Image.fromarray(decode_image_np(path)).save(buf, "PNG")
    return buf.getvalue(), "png"


def _example(data: bytes, fmt: str, name: str, label: int, hw: tuple[int, int]):
    import tensorflow as tf

    def b(v: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    feats = {
        "image/encoded": b(data),
        "image/format": b(fmt.encode()),
        "image/filename": b(name.encode()),
        "image/height": i(hw[0]),
        "image/width": i(hw[1]),
        "image/class/label": i(label),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats))


def write_split(
    listing: Listing,
    root: str,
    out_dir: str,
    split: str,
    num_shards: int,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Writes ``num_shards`` contiguous shards (record order = listing order); returns sidecar info."""
    import tensorflow as tf

    os.makedirs(out_dir, exist_ok=True)
    n = len(listing.paths)
    num_shards = max(1, min(num_shards, n))
    chunks = np.array_split(np.arange(n), num_shards)
    shards = []
    for s, chunk in enumerate(chunks):
        fname = f"{split}-{s:05d}-of-{num_shards:05d}.tfrecord"
        names = []
        with tf.io.TFRecordWriter(os.path.join(out_dir, fname)) as w:
            for k in chunk:
                path, label = listing.paths[k], listing.labels[k]
                data, fmt = tf_bytes(path, listing.needs_pil[k])
                with Image.open(io.BytesIO(data)) as im:
                    hw = (im.height, im.width)
                name = os.path.relpath(path, root)
                w.write(_example(data, fmt, name, label, hw).SerializeToString())
                names.append([name, label])
                if progress:
                    progress(1)
        shards.append({"file": fname, "num_examples": len(chunk), "examples": names})
    counts = class_counts(listing.labels)
    return {
        "num_examples": n,
        "class_counts": {str(k): v for k, v in counts.items()},
        "shards": shards,
        "skipped": [list(s) for s in listing.skipped],
    }


def write_sidecar(out_dir: str, splits: dict[str, dict], source: str) -> str:
    path = os.path.join(out_dir, SIDECAR)
    info = {"format": "crack_tf.tfrecord.v1", "class_names": list(CLASS_NAMES), "source": source, "splits": splits}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return path


def read_split_info(path: str, split: str) -> dict:
    """The sidecar's entry for ``split`` plus ``source`` (the image folder it was written from);
    ValueError if absent, written with other class names or missing shard files."""
    sidecar = os.path.join(path, SIDECAR)
    if not os.path.isfile(sidecar):
        raise ValueError(f"{sidecar} not found: write TFRecords with tools/make_tfrecords.py --out_dir={path}")
    with open(sidecar, encoding="utf-8") as f:
        info = json.load(f)
    if tuple(info.get("class_names", ())) != CLASS_NAMES:
        raise ValueError(f"{sidecar}: class_names {info.get('class_names')} != {list(CLASS_NAMES)}; rewrite it")
    if split not in info["splits"]:
        raise ValueError(f"{sidecar}: no split {split!r} (has {sorted(info['splits'])})")
    entry = info["splits"][split]
    missing = [s["file"] for s in entry["shards"] if not os.path.isfile(os.path.join(path, s["file"]))]
    if missing:
        raise ValueError(f"{sidecar}: shard files missing: {missing}")
    return dict(entry, source=info.get("source", path))


def parse_example_tf(serialized):
    """Serialized example -> (encoded image bytes, int32 label)."""
    import tensorflow as tf

    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    }
    ex = tf.io.parse_single_example(serialized, spec)
    return ex["image/encoded"], tf.cast(ex["image/class/label"], tf.int32)
