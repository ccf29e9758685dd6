"""``make_input`` for ``source="photos"``: crops for training, fixed tiles per source for eval."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np

from crack_tf.data.config import DataConfig, InputSplit, check_two_classes, class_counts, class_weight
from crack_tf.data.crops import CropOptions, CropSampler, Tiles, grid_tiles
from crack_tf.data.image_np import eval_transform_np
from crack_tf.data.photos import PhotoSet, load_sources, parse_sources

VAL_MIN_CRACK_PIXELS = 40  # the fixed tiles' rule (uav75_tiles): crack with >= 40 crack pixels per tile


def crop_options(config: DataConfig) -> CropOptions:
    """The crop sampler's options of a data config."""
    return CropOptions(
        image_size=config.image_size, crop_side=tuple(config.crop_side), min_crack_pixels=config.min_crack_pixels,
        reference=config.val_tile, crack_fraction=config.crack_fraction, max_padding=config.max_padding,
        flips=config.flips, rot90=config.rot90, brightness=config.brightness, contrast=config.contrast,
        saturation=config.saturation, blur=config.blur, noise=config.noise, jpeg=config.jpeg, gamma=config.gamma,
        grayscale=config.grayscale, hue=config.hue, hard_negatives=config.hard_negatives,
    )


def source_info(sets: list[PhotoSet], weights: list[float]) -> dict:
    return {s.name: {"photos": len(s.photos), "skipped": len(s.skipped), "fold": s.fold, "weight": round(w, 4),
                     "crack_pixels": s.crack_pixels, "decoded_mb": round(s.nbytes / 2**20, 1)}
            for s, w in zip(sets, weights)}


def _training(config, split, global_batch, batch, seed, backend, num_shards, shard_index, skip) -> InputSplit:
    specs = parse_sources(config.path, config.data_root)
    sets = load_sources(specs, split, config.val_fraction)
    weights = [s.weight for s in specs]
    steps = config.crops_per_epoch // global_batch
    if steps < 1:
        raise ValueError(f"--crops_per_epoch={config.crops_per_epoch} is less than one global batch of "
                         f"{global_batch}; raise it or lower the batch size")
    sampler = CropSampler(sets, weights, crop_options(config), seed, steps * global_batch)
    if backend == "numpy":
        from crack_tf.data.pipeline_photos import CropPyDataset

        ds = CropPyDataset(sampler, batch, num_shards, shard_index, skip, steps, workers=config.workers,
                           processes=config.processes, shared_memory=config.shared_memory)
    else:
        from crack_tf.data.pipeline_photos import crop_dataset_tf

        ds = crop_dataset_tf(sampler, batch, num_shards, shard_index, skip)
    n = steps * global_batch
    crack = round(n * config.crack_fraction)
    counts = {0: n - crack, 1: crack}  # expected: each crop is crack with probability crack_fraction
    skipped = [item for s in sets for item in s.skipped]
    info = {"sources": source_info(sets, weights), "crops_per_epoch": n, "crop_side": list(config.crop_side)}
    return InputSplit(ds, n, steps, counts, class_weight(counts) if config.balance == "class_weight" else None,
                      [], skipped, info=info, sampler=sampler)


_TILES: dict[tuple, tuple[tuple, list[Tiles]]] = {}
_TILES_LOCK = threading.Lock()


def eval_tiles(config: DataConfig, split: str) -> tuple[list[PhotoSet], list[Tiles]]:
    """Each source's fixed tiles of ``split``, already at the model input size (cached per process)."""
    specs = parse_sources(config.path, config.data_root)
    sets = load_sources(specs, split, config.val_fraction, need_cracks=False)
    key = (tuple(s.path for s in specs), split, config.val_tile, config.image_size, config.small_policy,
           config.eval_max_tiles, config.max_padding)
    with _TILES_LOCK:
        cached = _TILES.get(key)
    if cached is not None and all(a is b for a, b in zip(cached[0], sets)):
        return sets, cached[1]
    out = []
    for s in sets:
        tiles = grid_tiles(s, config.val_tile, VAL_MIN_CRACK_PIXELS, config.max_padding, config.eval_max_tiles)
        if tiles.images.shape[1] != config.image_size:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                fitted = list(pool.map(lambda im: eval_transform_np(im, config.image_size, config.small_policy),
                                       tiles.images))
            tiles = Tiles(tiles.name, np.stack(fitted), tiles.labels, tiles.names, tiles.groups)
        out.append(tiles)
    with _TILES_LOCK:
        if len(_TILES) > 8:
            _TILES.clear()
        _TILES[key] = (tuple(sets), out)
    return sets, out


def _array_split(images, labels, names, all_labels, batch, backend, skipped, info, groups=()) -> InputSplit:
    """This shard's ordered batches; ``num_examples`` / ``class_counts`` describe the whole split."""
    if backend == "numpy":
        from crack_tf.data.pipeline_photos import ArrayPyDataset

        ds = ArrayPyDataset(images, labels, batch)
    else:
        from crack_tf.data.pipeline_photos import array_dataset_tf

        ds = array_dataset_tf(images, labels, batch)
    return InputSplit(ds, len(all_labels), -(-len(labels) // batch), class_counts(all_labels), None,
                      list(zip(names, labels.tolist())), skipped, info=info, groups=list(groups))


def _evaluation(config, split, batch, backend, num_shards, shard_index) -> InputSplit:
    sets, tiles = eval_tiles(config, split)
    sl = slice(shard_index, None, num_shards)
    parts = {}
    for s, t in zip(sets, tiles):
        info = {"tiles": t.counts, "photos": len(s.photos), "fold": s.fold}
        parts[s.name] = _array_split(t.images[sl], t.labels[sl], t.names[sl], t.labels, batch, backend,
                                     s.skipped, info, t.groups[sl])
    images = np.concatenate([t.images[sl] for t in tiles])
    labels = np.concatenate([t.labels[sl] for t in tiles])
    names = [n for t in tiles for n in t.names[sl]]
    skipped = [item for s in sets for item in s.skipped]
    pooled = _array_split(images, labels, names, np.concatenate([t.labels for t in tiles]), batch, backend,
                          skipped, {"sources": {k: v.info for k, v in parts.items()}},
                          [g for t in tiles for g in t.groups[sl]])
    check_two_classes(pooled.class_counts, f"photos {config.path!r} split {split!r} tiles")
    pooled.by_source = parts
    return pooled


def photos_input(config: DataConfig, split: str, training: bool, batch: int, global_batch: int, seed: int,
                 backend: str, num_shards: int, shard_index: int, skip_batches: int) -> InputSplit:
    """Training: the crop stream of every source at its weight. Eval: each source's fixed tiles
    (``by_source``) and their concatenation (``dataset``)."""
    if training:
        return _training(config, split, global_batch, batch, seed, backend, num_shards, shard_index, skip_batches)
    return _evaluation(config, split, batch, backend, num_shards, shard_index)
