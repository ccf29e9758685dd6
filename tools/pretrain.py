"""Pretrains the ResNet50 backbone offline: an ImageNet-weights substitute for `--weights`.

  KERAS_BACKEND=jax python tools/pretrain.py --mode=crack --data_dir=uavcrack,deepcrack \\
      --data_root=../shared/data --image_size=224 --steps=2000 --batch_size=128 --precision=bf16 \\
      --output=runs/pretrain/crack.weights.h5
  KERAS_BACKEND=jax python tools/pretrain.py --mode=synthetic --steps=3000 --batch_size=128 \\
      --image_size=128 --tile_size=128 --num_tiles=16384 --output=runs/pretrain/synthetic.weights.h5
  KERAS_BACKEND=jax python tools/pretrain.py --mode=simclr --steps=3000 --batch_size=128 \\
      --image_size=128 --crop=160 --output=runs/pretrain/simclr.weights.h5

Modes:
- ``crack``: supervised crack / background on random labelled crops of real photo + mask
  sources (the trainer's photos source: ``--data_dir=uavcrack,deepcrack --data_root=...``, their
  train splits only, so never a val tile), with the trainer's crop rule and augmentation. This
  is the crack-domain stand-in for ImageNet pretraining.
- ``synthetic``: supervised crack / background on tiles of crack_tf.data.synthetic (a pool of
  --num_tiles generated once, split id "pretrain", so never the trainer's synthetic train/val
  tiles), random flips / 90-degree rotations / crops.
- ``rotation``: self-supervised: predict which of 0/90/180/270 degrees a random crop of the
  unlabelled photos (--photos) was rotated by.
- ``simclr``: self-supervised contrastive (NT-Xent, --temperature) between two augmented views
  (random resized crop, flips, rotations, brightness / contrast) of random photo crops.
The photos are only read as images: no masks, no tile labels.

The backbone is ``keras.applications.ResNet50(include_top=False)`` behind the same caffe
preprocessing as crack_tf.models, saved with ``save_weights`` to --output (``*.weights.h5``),
which ``python -m crack_tf.train --weights=<output>`` and ``build_model(weights=...)`` load.
A ``<output>.json`` sidecar records the settings and the loss curve. NumPy data path only: runs
on the JAX or PyTorch backend without TensorFlow.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import keras  # noqa: E402
from keras import ops  # noqa: E402

from crack_tf.data.image_np import decode_image_np, resize_bilinear_np  # noqa: E402
from crack_tf.data.pipeline_photos import CropPyDataset  # noqa: E402
from crack_tf.data.synthetic import make_tile  # noqa: E402
from crack_tf.models.resnet_aspp import CaffePreprocess  # noqa: E402

_SHARED = os.path.join(REPO, "..", "shared", "data", "uav75")
MODES = ("crack", "synthetic", "rotation", "simclr")
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("mode", "crack", list(MODES), "Pretraining task.")
    flags.DEFINE_string("output", "runs/pretrain/backbone.weights.h5", "Backbone weights file (*.weights.h5).")
    flags.DEFINE_string("save_model", None, "Also save the whole pretraining model (.keras) here.")
    flags.DEFINE_integer("image_size", 128, "Network input size.")
    flags.DEFINE_integer("steps", 2000, "Training steps.")
    flags.DEFINE_integer("batch_size", 128, "Batch size (simclr: pairs per batch; the model sees 2x).")
    flags.DEFINE_float("lr", 1e-3, "Peak AdamW learning rate (cosine decay, 5% warm-up).")
    flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay.")
    flags.DEFINE_float("bn_momentum", 0.9, "BatchNorm momentum.")
    flags.DEFINE_integer("seed", 0, "Seed of the weights, tiles, crops and augmentation.")
    flags.DEFINE_integer("log_every", 50, "Steps per progress line.")
    flags.DEFINE_integer("data_workers", 4, "Threads (or processes) building batches (crops are CPU-heavy).")
    flags.DEFINE_bool("data_processes", False, "Build batches in worker processes instead of threads.")
    # crack
    flags.DEFINE_string("data_dir", "uavcrack,deepcrack", "crack: photo + mask sources with weights "
                        "(the trainer's --data_dir syntax).")
    flags.DEFINE_string("data_root", os.path.join(REPO, "..", "shared", "data"), "crack: folder of the sources.")
    flags.DEFINE_list("crop_side", ["96", "192"], "crack: crop side range in photo pixels (min,max).")
    flags.DEFINE_integer("min_crack_pixels", 40, "crack: crack pixels per 128^2 for a crack crop.")
    flags.DEFINE_enum("precision", "float32", ["float32", "bf16"], "Compute precision (bf16 on GPUs).")
    # synthetic
    flags.DEFINE_integer("tile_size", 0, "Synthetic tile size (0 = image_size); larger tiles are randomly cropped.")
    flags.DEFINE_integer("num_tiles", 8192, "Synthetic tiles generated once (half crack).")
    flags.DEFINE_integer("workers", 0, "Processes generating tiles (0 = all cores).")
    # rotation / simclr
    flags.DEFINE_list("photos", [os.path.join(_SHARED, "train", "images"), os.path.join(_SHARED, "val", "images")],
                      "Folders of unlabelled photos (rotation / simclr).")
    flags.DEFINE_integer("crop", 128, "Photo crop side before resizing to image_size.")
    flags.DEFINE_float("temperature", 0.2, "NT-Xent temperature (simclr).")


# ---------------------------------------------------------------------------------------------- data
def _tile(args: tuple[int, int, int, int]) -> np.ndarray:
    seed, label, index, size = args
    return make_tile(seed, "pretrain", label, index, size)


def synthetic_pool(num_tiles: int, size: int, seed: int, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``num_tiles`` synthetic tiles (uint8 [N,S,S,3]) and labels (alternating 0/1)."""
    labels = np.arange(num_tiles) % 2
    jobs = [(seed, int(lab), i // 2, size) for i, lab in enumerate(labels)]
    workers = workers or os.cpu_count() or 1
    if workers > 1 and num_tiles >= 256:
        with ProcessPoolExecutor(workers) as pool:
            tiles = list(pool.map(_tile, jobs, chunksize=64))
    else:
        tiles = [_tile(j) for j in jobs]
    return np.stack(tiles), labels.astype(np.int32)


def load_photos(folders: list[str]) -> list[np.ndarray]:
    paths = sorted(p for d in folders for p in glob.glob(os.path.join(d, "*"))
                   if p.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")))
    if not paths:
        raise ValueError(f"--photos={','.join(folders)}: no images found; pass folders of photos")
    return [decode_image_np(p) for p in paths]


def _flip_rot(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.rot90(img, int(rng.integers(4)))


def _crop(img: np.ndarray, side: int, rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    side = min(side, h, w)
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    out = img[y : y + side, x : x + side]
    return out if side == size else resize_bilinear_np(np.ascontiguousarray(out), size, size)


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    x = (x - x.mean()) * rng.uniform(0.7, 1.3) + x.mean() + rng.uniform(-30, 30)
    if rng.random() < 0.2:
        x = np.repeat(x.mean(-1, keepdims=True), 3, -1)
    return np.clip(x, 0, 255).astype(np.uint8)


def crack_sampler(data_dir: str, data_root: str, image_size: int, crop_side: tuple[int, int],
                  min_crack_pixels: int, seed: int, crops: int):
    """The trainer's crop sampler over the train splits of photo + mask sources."""
    from crack_tf.data.crops import CropOptions, CropSampler
    from crack_tf.data.photos import load_sources, parse_sources

    specs = parse_sources(data_dir, data_root)
    sets = load_sources(specs, "train")
    options = CropOptions(image_size=image_size, crop_side=tuple(crop_side), min_crack_pixels=min_crack_pixels)
    for s in sets:
        print(f"crack: source {s.name}: {len(s.photos)} train photos ({s.fold}), {len(s.skipped)} skipped", flush=True)
    return CropSampler(sets, [s.weight for s in specs], options, seed, crops)


def make_batch(mode: str, step: int, batch: int, size: int, seed: int, tiles=None, labels=None,
               photos=None, crop: int = 128, sampler=None) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` (a pure function of ``seed`` and ``step``)."""
    if mode == "crack":
        return sampler.batch(step, batch)
    rng = np.random.default_rng([seed, step])
    if mode == "synthetic":
        idx = rng.integers(len(tiles), size=batch)
        x = np.stack([np.ascontiguousarray(_flip_rot(_crop(tiles[i], size, rng, size), rng)) for i in idx])
        return x, labels[idx]
    pick = rng.integers(len(photos), size=batch)
    if mode == "rotation":
        ks = rng.integers(4, size=batch)
        x = np.stack([np.ascontiguousarray(np.rot90(_crop(photos[p], crop, rng, size), k)) for p, k in zip(pick, ks)])
        return x, ks.astype(np.int32)
    anchors, views = [], []  # simclr: a region per pair; view 1 of every pair, then view 2
    for p in pick:
        h, w = photos[p].shape[:2]
        side = min(int(crop * 1.5), h, w)
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        anchors.append(photos[p][y : y + side, x : x + side])
    for _ in range(2):
        for region in anchors:
            side = int(rng.uniform(0.4, 1.0) * region.shape[0])
            views.append(_jitter(np.ascontiguousarray(_flip_rot(_crop(region, side, rng, size), rng)), rng))
    return np.stack(views), np.zeros(2 * batch, np.int32)


class Batches(keras.utils.PyDataset):
    """``steps`` batches per Keras epoch; the global index continues across epochs."""

    def __init__(self, make, steps: int, **kwargs):
        super().__init__(**kwargs)
        self.make, self.steps, self.epoch = make, steps, 0

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int):
        return self.make(self.epoch * self.steps + i)

    def on_epoch_end(self) -> None:
        self.epoch += 1


# --------------------------------------------------------------------------------------------- model
def nt_xent(temperature: float):
    """SimCLR loss over a batch ``[view1 (B); view2 (B)]`` of projections."""

    def loss(y_true, z):
        z = ops.cast(z, "float32")
        z = z / ops.sqrt(ops.sum(z * z, axis=-1, keepdims=True) + 1e-12)
        n = ops.shape(z)[0]
        b = n // 2
        sim = ops.matmul(z, ops.transpose(z)) / temperature - 1e9 * ops.eye(n)
        targets = ops.concatenate([ops.arange(b) + b, ops.arange(b)])
        return ops.mean(ops.sparse_categorical_crossentropy(targets, sim, from_logits=True))

    return loss


def build_pretrainer(mode: str, image_size: int, bn_momentum: float = 0.9) -> tuple[keras.Model, keras.Model]:
    """(whole model, its ResNet50 no-top backbone)."""
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(image_size, image_size, 3))
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone(CaffePreprocess(name="caffe_preprocess")(inputs)))
    if mode == "simclr":
        x = keras.layers.Dense(512, activation="relu", name="proj1")(x)
        out = keras.layers.Dense(128, dtype="float32", name="proj2")(x)
    else:
        out = keras.layers.Dense(4 if mode == "rotation" else 2, dtype="float32", name="logits")(x)
    return keras.Model(inputs, out, name=f"pretrain_{mode}"), backbone


def pretrain(mode: str, output: str, image_size: int = 128, steps: int = 100, batch_size: int = 64,
             lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0, log_every: int = 50,
             tile_size: int = 0, num_tiles: int = 8192, workers: int = 0, photos: list[str] | None = None,
             crop: int = 128, temperature: float = 0.2, bn_momentum: float = 0.9, precision: str = "float32",
             save_model: str | None = None, data_workers: int = 1, data_dir: str = "", data_root: str = "",
             crop_side: tuple[int, int] = (96, 192), min_crack_pixels: int = 40, data_processes: bool = False) -> dict:
    """Runs the pretraining and saves the backbone; returns the sidecar record."""
    if not output.endswith(".weights.h5"):
        raise ValueError(f"--output={output} must end in .weights.h5 (Keras' weights format)")
    if mode not in MODES:
        raise ValueError(f"--mode={mode}: choose one of {MODES}")
    started = time.time()
    keras.utils.set_random_seed(seed)
    if precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    data: dict = {}
    if mode == "crack":
        data["sampler"] = crack_sampler(data_dir, data_root, image_size, crop_side, min_crack_pixels, seed,
                                        steps * batch_size)
    elif mode == "synthetic":
        data["tiles"], data["labels"] = synthetic_pool(num_tiles, tile_size or image_size, seed, workers)
        print(f"synthetic: {num_tiles} tiles of {tile_size or image_size} px in {time.time() - started:.0f}s", flush=True)
    else:
        data["photos"] = load_photos(photos or [])
        data["crop"] = crop
        print(f"{mode}: {len(data['photos'])} unlabelled photos", flush=True)
    model, backbone = build_pretrainer(mode, image_size, bn_momentum)
    log_every = max(1, min(log_every, steps))
    epochs = max(1, steps // log_every)
    schedule = keras.optimizers.schedules.CosineDecay(lr * 0.01, epochs * log_every, alpha=0.01,
                                                      warmup_target=lr, warmup_steps=max(1, epochs * log_every // 20))
    supervised = mode != "simclr"  # crack / synthetic: 2 classes, rotation: 4
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True) if supervised
                  else nt_xent(temperature),
                  metrics=["sparse_categorical_accuracy"] if supervised else None)
    queue = {"workers": max(1, data_workers), "max_queue_size": max(10, 2 * data_workers)}
    if mode == "crack":  # the trainer's crop stream: batch i = sampler.batch(i), shared-memory batches
        batches = CropPyDataset(data["sampler"], batch_size, steps_per_epoch=log_every, processes=data_processes,
                                **queue)
    else:
        batches = Batches(lambda i: make_batch(mode, i, batch_size, image_size, seed, **data), log_every,
                          use_multiprocessing=data_processes, **queue)
    print(f"pretrain {mode}: {epochs * log_every} steps x {batch_size} at {image_size} px, "
          f"backend {keras.backend.backend()}, params {backbone.count_params():,}", flush=True)
    history = model.fit(batches, epochs=epochs, steps_per_epoch=log_every, verbose=1 if sys.stdout.isatty() else 2)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    backbone.save_weights(output)
    if save_model:
        model.save(save_model)
    record = {"mode": mode, "output": output, "image_size": image_size, "steps": epochs * log_every,
              "batch_size": batch_size, "lr": lr, "seed": seed, "backend": keras.backend.backend(),
              "tile_size": tile_size or image_size, "num_tiles": num_tiles if mode == "synthetic" else None,
              "crop": crop if mode in ("rotation", "simclr") else None, "seconds": time.time() - started,
              "data_dir": data_dir if mode == "crack" else None, "crop_side": list(crop_side) if mode == "crack" else None,
              "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    with open(output + ".json", "w") as f:
        json.dump(record, f, indent=2)
    final = {k: round(v[-1], 4) for k, v in record["history"].items()}
    print(f"summary: {mode} pretraining, {record['steps']} steps in {record['seconds']:.0f}s, final {final}; "
          f"backbone weights -> {output} (use --weights={output})", flush=True)
    return record


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        pretrain(FLAGS.mode, FLAGS.output, FLAGS.image_size, FLAGS.steps, FLAGS.batch_size, FLAGS.lr,
                 FLAGS.weight_decay, FLAGS.seed, FLAGS.log_every, FLAGS.tile_size, FLAGS.num_tiles, FLAGS.workers,
                 FLAGS.photos, FLAGS.crop, FLAGS.temperature, FLAGS.bn_momentum, FLAGS.precision, FLAGS.save_model,
                 FLAGS.data_workers, FLAGS.data_dir, FLAGS.data_root, tuple(int(v) for v in FLAGS.crop_side),
                 FLAGS.min_crack_pixels, FLAGS.data_processes)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from e
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
