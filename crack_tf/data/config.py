"""Input configuration (``DataConfig``), the result type (``InputSplit``) and shared batch math.

TF-free: importing this module never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from crack_tf.choices import BALANCE, SMALL_POLICIES, VALIDATE
from crack_tf.choices import INPUT_SOURCES as SOURCES


@dataclasses.dataclass
class DataConfig:
    """Where the data lives and how it is transformed.

    ``source``: "folder" (``<path>/<split>/{crack,background}/*``), "tfrecord" (a folder written by
    ``tools/make_tfrecords.py``) or "tfds" (``path`` = TFDS data_dir of ``bridge_crack``,
    ``manual_dir`` = its image folder). ``image_size`` is the model input and crop size S;
    ``small_policy`` says what happens to images whose shorter side is < S ("resize" = bilinear
    upscale keeping the aspect ratio, "pad" = zero-pad centred). Augmentation (training only):
    random SxS crop, left/right + up/down ``flips``, ``rot90``, brightness delta in
    ``[-brightness, brightness]`` (fraction of 255), contrast factor in ``[1-contrast, 1+contrast]``.
    ``balance``: "class_weight" fills ``InputSplit.class_weight``; "oversample" repeats the
    minority class in each training epoch. ``validate``: "header" = cheap PIL checks when listing,
    "full" = decode every file once. Files whose shorter side is < ``min_side`` or with more than
    ``max_pixels`` pixels are skipped.

    ``source="photos"``: ``path`` lists photo + mask folders with weights
    (``uav75:0.6,uavcrack:0.4``, relative to ``data_root``); training draws ``crops_per_epoch``
    random crops per epoch (see ``crack_tf.data.crops``: ``crop_side`` range in photo pixels,
    ``min_crack_pixels`` per ``val_tile``^2, ``crack_fraction``, ``max_padding`` and the extra
    augmentations ``saturation`` / ``blur`` / ``noise`` / ``jpeg`` / ``gamma`` / ``grayscale`` /
    ``hue``; ``hard_negatives``: the share of background crops drawn at joints or beside cracks);
    evaluation uses the fixed ``val_tile`` grid tiles of each source (``eval_max_tiles``
    per source, 0 = all), and a source without ``val/`` holds out ``val_fraction`` of its source
    images as its val fold.
    """

    source: str = "folder"
    path: str = ""
    image_size: int = 224
    small_policy: str = "resize"
    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    balance: str = "none"
    shuffle_buffer: int = 2048
    deterministic: bool = True
    # Extras beyond the shared interface.
    manual_dir: str = ""
    validate: str = "header"
    min_side: int = 8
    max_pixels: int = 64_000_000
    num_parallel_calls: int = -1  # tf.data map parallelism; -1 = AUTOTUNE
    workers: int = 1  # NumPy loader: keras PyDataset worker threads
    processes: bool = False  # NumPy loader: worker processes instead of threads
    shared_memory: bool = True  # with processes (photos source): batches back through shared memory
    cache_mb: int = 1024  # NumPy loader: decoded, upscaled images kept in memory per process
    # Photos source.
    data_root: str = ""
    crops_per_epoch: int = 4096
    crop_side: tuple[int, int] = (96, 192)
    min_crack_pixels: int = 40
    crack_fraction: float = 0.5
    max_padding: float = 0.1
    saturation: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    jpeg: float = 0.0
    gamma: float = 0.0
    grayscale: float = 0.0
    hue: float = 0.0
    hard_negatives: float = 0.0
    val_tile: int = 128
    val_fraction: float = 0.2
    eval_max_tiles: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (
            ("source", SOURCES),
            ("small_policy", SMALL_POLICIES),
            ("balance", BALANCE),
            ("validate", VALIDATE),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"DataConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.image_size < 1:
            raise ValueError(f"DataConfig.image_size must be positive, got {self.image_size}")

    def replace(self, **kwargs: Any) -> DataConfig:
        return dataclasses.replace(self, **kwargs)


@dataclasses.dataclass
class InputSplit:
    """One split ready for ``model.fit`` / ``evaluate``; see ``make_input``."""

    dataset: Any
    num_examples: int
    steps_per_epoch: int
    class_counts: dict[int, int]
    class_weight: dict[int, float] | None
    examples: list[tuple[str, int]]
    skipped: list[tuple[str, str]]
    by_source: dict[str, InputSplit] = dataclasses.field(default_factory=dict)  # photos source: each source's part
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the split is made of (for logs, run.json)
    groups: list[str] = dataclasses.field(default_factory=list)  # photos eval tiles: each one's source-image group
    sampler: Any = None  # photos training: the CropSampler behind the batches (any loader)


def class_counts(labels: np.ndarray | list[int]) -> dict[int, int]:
    labels = np.asarray(labels, dtype=np.int64)
    return {0: int((labels == 0).sum()), 1: int((labels == 1).sum())}


def class_weight(counts: dict[int, int]) -> dict[int, float]:
    """Inverse-frequency weights normalised so a balanced set gets 1.0 for both classes."""
    total = sum(counts.values())
    return {k: total / (len(counts) * v) for k, v in counts.items()}


def epoch_indices(labels: np.ndarray, balance: str, seed: int) -> np.ndarray:
    """Indices of one (unshuffled) training epoch; with "oversample" the minority class is
    repeated (whole copies plus a seeded random remainder) up to the majority count."""
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    if balance != "oversample":
        return idx
    groups = [idx[labels == c] for c in (0, 1)]
    target = max(len(g) for g in groups)
    rng = np.random.default_rng([seed, 7919])
    out = []
    for g in groups:
        reps, rest = divmod(target, len(g))
        out.append(np.concatenate([np.tile(g, reps), np.sort(rng.choice(g, rest, replace=False))]))
    return np.concatenate(out)


def local_batch_size(global_batch_size: int, num_shards: int) -> int:
    if global_batch_size < 1 or num_shards < 1 or global_batch_size % num_shards:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of num_shards={num_shards}"
        )
    return global_batch_size // num_shards


def steps_for(num: int, global_batch_size: int, training: bool) -> int:
    if training:
        steps = num // global_batch_size
        if steps == 0:
            raise ValueError(
                f"{num} training examples are fewer than one batch of {global_batch_size}; "
                "lower the batch size or add data"
            )
        return steps
    return math.ceil(num / global_batch_size)


def check_two_classes(counts: dict[int, int], where: str) -> None:
    from crack_tf.choices import CLASS_NAMES

    missing = [CLASS_NAMES[c] for c in (0, 1) if counts.get(c, 0) == 0]
    if missing:
        raise ValueError(
            f"{where}: no usable '{missing[0]}' images (counts {counts}); a crack classifier needs both "
            f"classes {list(CLASS_NAMES)}: add images of class {missing} or fix the path"
        )
