"""TFDS ``bridge_crack`` builder (manual download).

``manual_dir`` is either an image folder ``<split>/{crack,background}/*`` (every split present
is kept: train / val / test) or the paper's original layout, one folder per class and no split
(``crack`` or ``Positive``; ``background`` or ``Negative``), which is split deterministically
80 / 20 into train / test by a hash of the relative path. Images are stored as the original file
bytes when TF decodes that format (so pixels are identical to the folder source), else as PNG.
Bad files are skipped and listed in ``info.metadata["skipped"]``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import tensorflow_datasets as tfds

from crack_tf.choices import CLASS_NAMES
from crack_tf.data.config import DataConfig
from crack_tf.data.listing import Listing, candidate_files, check_files, list_folder, report_skipped
from crack_tf.data.tfrecord import tf_bytes

SPLITS = ("train", "val", "test")
ALIASES = {1: ("crack", "Positive", "positive", "cracked"), 0: ("background", "Negative", "negative", "uncracked")}
TEST_FRACTION = 0.2


def _flat_listing(root: pathlib.Path) -> dict[str, Listing]:
    """The paper's layout: class folders without splits -> hash-split train / test."""
    out = {s: Listing([], [], [], []) for s in ("train", "test")}
    for label in (0, 1):
        d = next((root / a for a in ALIASES[label] if (root / a).is_dir()), None)
        if d is None:
            raise ValueError(f"{root}: no class folder among {ALIASES[label]} (label {CLASS_NAMES[label]})")
        files, skipped = candidate_files(d)
        out["train"].skipped += skipped
        for path, chk in zip(files, check_files(files, DataConfig())):
            if chk.reason:
                out["train"].skipped.append((path, chk.reason))
                continue
            rel = os.path.relpath(path, root).encode()
            h = int.from_bytes(hashlib.sha256(rel).digest()[:8], "big") / 2**64
            dst = out["test" if h < TEST_FRACTION else "train"]
            dst.paths.append(path)
            dst.labels.append(label)
            dst.needs_pil.append(chk.needs_pil)
    report_skipped(out["train"].skipped, str(root))
    return out


def listings(manual_dir: str | os.PathLike) -> dict[str, Listing]:
    root = pathlib.Path(manual_dir)
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if splits:
        return {s: list_folder(root, s) for s in splits}
    return _flat_listing(root)


class Builder(tfds.core.GeneratorBasedBuilder):
    """Concrete crack / background image patches (label 1 = crack)."""

    name = "bridge_crack"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the images in manual_dir as <split>/{crack,background}/* (e.g. the output of "
        "tools/prepare_tiles.py) or as {crack,background}/* (split 80/20 by path hash)."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    "filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        lists = listings(root)
        self.info.metadata["skipped"] = {s: [list(x) for x in lst.skipped] for s, lst in lists.items()}
        return {s: self._generate_examples(lst, os.fspath(root)) for s, lst in lists.items()}

    def _generate_examples(self, listing: Listing, root: str):
        for path, label, pil in zip(listing.paths, listing.labels, listing.needs_pil):
            rel = os.path.relpath(path, root)
            yield rel, {"image": tf_bytes(path, pil)[0], "label": label, "filename": rel}


def tfds_records(config: DataConfig, split: str, training: bool, seed: int, num_shards: int, shard_index: int):
    """(records of (bytes, int32 label), labels of the whole split, this shard's examples, skipped)."""
    import tensorflow as tf

    builder = Builder(data_dir=config.path or None)
    if config.manual_dir:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=config.manual_dir))
    if split not in builder.info.splits:
        raise ValueError(f"bridge_crack in {config.path!r} has no split {split!r} (has {list(builder.info.splits)})")
    ctx = tf.distribute.InputContext(num_shards, shard_index) if num_shards > 1 else None

    def read(shuffle: bool, context):
        rc = tfds.ReadConfig(shuffle_seed=seed, input_context=context, interleave_cycle_length=1 if not shuffle else 16)
        return builder.as_dataset(
            split=split, shuffle_files=shuffle, read_config=rc, decoders={"image": tfds.decode.SkipDecoding()}
        )

    def meta(ds):
        return [(f.decode(), int(y)) for f, y in ds.map(lambda x: (x["filename"], x["label"])).as_numpy_iterator()]

    all_labels = [y for _, y in meta(read(False, None))]
    examples = meta(read(False, ctx))
    root = config.manual_dir or ""
    examples = [(os.path.join(root, f), y) for f, y in examples]
    records = read(training, ctx).map(lambda x: (x["image"], tf.cast(x["label"], tf.int32)))
    skipped = [tuple(x) for x in builder.info.metadata.get("skipped", {}).get(split, [])]
    return records, all_labels, examples, skipped
