"""Pretrains the ResNet50 backbone offline: an ImageNet-weights substitute for `--weights`.

  KERAS_BACKEND=jax python tools/pretrain.py --mode=crack --data_dir=uavcrack,deepcrack \\
      --data_root=../shared/data --image_size=224 --steps=2000 --batch_size=128 --precision=bf16 \\
      --output=runs/pretrain/crack.weights.h5
  KERAS_BACKEND=jax python tools/pretrain.py --mode=synthetic --steps=3000 --batch_size=128 \\
      --image_size=128 --tile_size=128 --num_tiles=16384 --output=runs/pretrain/synthetic.weights.h5
  KERAS_BACKEND=jax python tools/pretrain.py --mode=simclr --data_dir=uav75,uavcrack,deepcrack --steps=3000 \\
      --batch_size=128 --image_size=224 --precision=bf16 --data_workers=14 --data_processes \\
      --output=runs/pretrain/simclr.weights.h5
  KERAS_BACKEND=jax python tools/pretrain.py --mode=crack --init=runs/pretrain/simclr.weights.h5 ...  # then

``--deterministic`` (the GPU jobs pass it): XLA's deterministic kernels, so one seed gives one backbone
(the batches are a function of seed and step either way); the sidecar ``<output>.json`` records it
and the backbone's ``weights_sha256``, by which two backbones compare.

Modes:
- ``crack``: supervised crack / background on random labelled crops of real photo + mask
  sources (the trainer's photos source: ``--data_dir=uavcrack,deepcrack --data_root=...``, their
  train splits only, so never a val tile), with the trainer's crop rule and augmentation. This
  is the crack-domain stand-in for ImageNet pretraining.
- ``synthetic``: supervised crack / background on tiles of crack_tf.data.synthetic (a pool of
  --num_tiles generated once, split id "pretrain", so never the trainer's synthetic train/val
  tiles), random flips / 90-degree rotations / crops.
- ``rotation``: self-supervised: predict which of 0/90/180/270 degrees a random crop of the
  unlabelled photos was rotated by.
- ``simclr``: self-supervised contrastive (NT-Xent, --temperature) between two augmented views
  (random resized crop of a --crop * 1.5 region, flips, rotations, and the photos source's colour
  augmentations, stronger by default: ``SIMCLR_AUGMENT``) of random photo regions; views are
  rendered like the crack crops (Pillow, worker processes, shared-memory batches).
The self-supervised modes read the train photos of the --data_dir sources (a source without
``val/`` gives its train fold: never a val photo), or the folders of --photos instead, only as
images: no masks, no tile labels.

``--init=<weights.h5>`` starts the backbone from earlier pretraining (e.g. simclr, then crack).
The augmentation flags (``--gamma``, ``--grayscale``, ...) override the mode's defaults (crack:
the trainer's, brightness / contrast 0.1). ``--checkpoint_every=N`` keeps a resumable checkpoint
(model + optimizer) in ``<output>.ckpt/``: the same command continues from it (a long run over
several time-limited calls) and deletes it once the weights are written.

The backbone is ``keras.applications.ResNet50(include_top=False)`` behind the same caffe
preprocessing as crack_tf.models, saved with ``save_weights`` to --output (``*.weights.h5``),
which ``python -m crack_tf.train --weights=<output>`` and ``build_model(weights=...)`` load.
A ``<output>.json`` sidecar records the settings and the loss curve. NumPy data path only: runs
on the JAX or PyTorch backend without TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
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

from crack_tf.data.crops import CropOptions  # noqa: E402
from crack_tf.data.image_np import resize_bilinear_np  # noqa: E402
from crack_tf.data.pipeline_np import enqueued_workers  # noqa: E402
from crack_tf.data.pipeline_photos import CropPyDataset  # noqa: E402
from crack_tf.data.synthetic import make_tile  # noqa: E402
from crack_tf.data.unlabelled import SIMCLR_AUGMENT, ViewSampler, from_sources, read_folders  # noqa: E402
from crack_tf.models.resnet_aspp import CaffePreprocess  # noqa: E402
from crack_tf.training.rundir import weights_digest  # noqa: E402
from crack_tf.training.runtime import deterministic_ops  # noqa: E402

MODES = ("crack", "synthetic", "rotation", "simclr")
AUGMENT = ("brightness", "contrast", "saturation", "hue", "grayscale", "gamma", "blur", "jpeg", "noise")
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("mode", "crack", list(MODES), "Pretraining task.")
    flags.DEFINE_string("output", "runs/pretrain/backbone.weights.h5", "Backbone weights file (*.weights.h5).")
    flags.DEFINE_string("save_model", None, "Also save the whole pretraining model (.keras) here.")
    flags.DEFINE_string("init", "", "Start the backbone from these weights (a *.weights.h5 of this tool).")
    flags.DEFINE_integer("checkpoint_every", 0, "Keep a resumable checkpoint in <output>.ckpt/ every N steps "
                         "(rounded up to --log_every; 0 = none).")
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
    flags.DEFINE_string("data_dir", "uavcrack,deepcrack", "crack, rotation, simclr: photo + mask sources with "
                        "weights (the trainer's --data_dir syntax); their train splits only.")
    flags.DEFINE_string("data_root", os.path.join(REPO, "..", "shared", "data"), "Folder of the sources.")
    flags.DEFINE_list("crop_side", ["96", "192"], "crack: crop side range in photo pixels (min,max).")
    flags.DEFINE_integer("min_crack_pixels", 40, "crack: crack pixels per 128^2 for a crack crop.")
    flags.DEFINE_enum("precision", "float32", ["float32", "bf16"], "Compute precision (bf16 on GPUs).")
    flags.DEFINE_bool("deterministic", False, "Deterministic kernels (the trainer's --deterministic: XLA's on "
                      "a GPU, TF's op determinism), so a seed gives one backbone; the batches are a function "
                      "of seed and step either way.")
    for name in AUGMENT:  # the photos source's augmentation flags (crack_tf.data.crops.CropOptions)
        flags.DEFINE_float(name, None, f"crack / simclr: --{name} of the photos source (default: the mode's).")
    # synthetic
    flags.DEFINE_integer("tile_size", 0, "Synthetic tile size (0 = image_size); larger tiles are randomly cropped.")
    flags.DEFINE_integer("num_tiles", 8192, "Synthetic tiles generated once (half crack).")
    flags.DEFINE_integer("workers", 0, "Processes generating tiles (0 = all cores).")
    # rotation / simclr
    flags.DEFINE_list("photos", [], "rotation / simclr: folders of unlabelled photos instead of the --data_dir "
                      "sources' train photos.")
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


def augmentation(mode: str, overrides: dict | None = None) -> dict:
    """The mode's augmentation settings (CropOptions fields), ``overrides`` (not None) applied."""
    base = dict(SIMCLR_AUGMENT) if mode == "simclr" else {}
    return {**base, **{k: float(v) for k, v in (overrides or {}).items() if v is not None}}


def crack_sampler(data_dir: str, data_root: str, image_size: int, crop_side: tuple[int, int],
                  min_crack_pixels: int, seed: int, crops: int, augment: dict | None = None):
    """The trainer's crop sampler over the train splits of photo + mask sources."""
    from crack_tf.data.crops import CropSampler
    from crack_tf.data.photos import load_sources, parse_sources

    specs = parse_sources(data_dir, data_root)
    sets = load_sources(specs, "train")
    options = CropOptions(image_size=image_size, crop_side=tuple(crop_side), min_crack_pixels=min_crack_pixels,
                          **(augment or {}))
    for s in sets:
        print(f"crack: source {s.name}: {len(s.photos)} train photos ({s.fold}), {len(s.skipped)} skipped", flush=True)
    return CropSampler(sets, [s.weight for s in specs], options, seed, crops)


def unlabelled_photos(photos: list[str], data_dir: str, data_root: str) -> list[np.ndarray]:
    """rotation / simclr: the --photos folders, else the --data_dir sources' train photos."""
    found = read_folders(photos) if photos else from_sources(data_dir, data_root, "train")
    print(f"unlabelled photos: {len(found.images)} from {','.join(photos) if photos else data_dir + ' (train)'}, "
          f"{len(found.skipped)} skipped", flush=True)
    return found.images


def make_batch(mode: str, step: int, batch: int, size: int, seed: int, tiles=None, labels=None,
               photos=None, crop: int = 128, sampler=None) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` (a pure function of ``seed`` and ``step``); simclr: ``batch`` pairs."""
    if mode in ("crack", "simclr"):
        return sampler.batch(step, 2 * batch if mode == "simclr" else batch)
    rng = np.random.default_rng([seed, step])
    if mode == "synthetic":
        idx = rng.integers(len(tiles), size=batch)
        x = np.stack([np.ascontiguousarray(_flip_rot(_crop(tiles[i], size, rng, size), rng)) for i in idx])
        return x, labels[idx]
    pick = rng.integers(len(photos), size=batch)  # rotation
    ks = rng.integers(4, size=batch)
    x = np.stack([np.ascontiguousarray(np.rot90(_crop(photos[p], crop, rng, size), k)) for p, k in zip(pick, ks)])
    return x, ks.astype(np.int32)


class Batches(keras.utils.PyDataset):
    """Batch ``skip + i`` at fit's i-th step: infinite (``num_batches`` None), so Keras keeps one
    iterator across its epochs and never shuffles or restarts the indices. A finite dataset with an
    epoch counter (this class until 2026-12-06) was not a function of the step: Keras shuffles a
    finite dataset's batches, calls ``on_epoch_end`` before the first epoch too, and the batches a
    stopped enqueuer had queued (``max_queue_size``, so the worker count) came first in the next
    epoch: 2 and 14 workers gave two backbones of one seed on the GPU. Always through Keras' enqueuer
    (``enqueued_workers``), so 1 worker and 14 give one backbone on JAX too."""

    def __init__(self, make, steps: int, skip: int = 0, workers: int = 1, **kwargs):
        super().__init__(workers=enqueued_workers(workers), **kwargs)
        self.make, self.steps, self.skip = make, steps, skip

    def __len__(self) -> int:
        return self.steps

    @property
    def num_batches(self) -> int | None:
        return None

    def __getitem__(self, i: int):
        return self.make(self.skip + i)


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


class Checkpoints(keras.callbacks.Callback):
    """A resumable checkpoint (model + optimizer, ``crack_tf.training.checkpoints``) every ``every``
    Keras epochs of ``log_every`` steps; ``state`` carries the settings and the loss curve so far."""

    def __init__(self, folder: str, every: int, log_every: int, state: dict):
        super().__init__()
        self.folder, self.every, self.log_every, self.state = folder, every, log_every, state

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        for k, v in (logs or {}).items():
            self.state["history"].setdefault(k, []).append(float(v))
        if self.every and (epoch + 1) % self.every == 0:
            from crack_tf.training.checkpoints import save_checkpoint

            save_checkpoint(self.model, self.folder, {**self.state, "global_step": (epoch + 1) * self.log_every})


def _check_resumable(folder: str, settings: dict) -> None:
    """Refuses a checkpoint in ``folder`` of other settings (before any data or model is made)."""
    from crack_tf.training.checkpoints import latest_state

    state = latest_state(folder)
    if state is not None and state.get("settings") != settings:
        differ = sorted(k for k in settings if state.get("settings", {}).get(k) != settings[k])
        raise ValueError(f"{folder} holds a checkpoint of other settings ({', '.join(differ)}): delete it, or "
                         f"use another --output")


def _resume(model: keras.Model, folder: str) -> tuple[int, dict]:
    """(steps done, loss curve so far) of the newest checkpoint in ``folder`` that loads (0, {} when none)."""
    from crack_tf.training.checkpoints import restore_latest

    ckpt = restore_latest(model, folder)
    if ckpt is None:
        return 0, {}
    print(f"resumed from {ckpt.folder} (step {ckpt.state['global_step']})", flush=True)
    return int(ckpt.state["global_step"]), ckpt.state.get("history", {})


def pretrain(mode: str, output: str, image_size: int = 128, steps: int = 100, batch_size: int = 64,
             lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0, log_every: int = 50,
             tile_size: int = 0, num_tiles: int = 8192, workers: int = 0, photos: list[str] | None = None,
             crop: int = 128, temperature: float = 0.2, bn_momentum: float = 0.9, precision: str = "float32",
             save_model: str | None = None, data_workers: int = 1, data_dir: str = "", data_root: str = "",
             crop_side: tuple[int, int] = (96, 192), min_crack_pixels: int = 40, data_processes: bool = False,
             init: str = "", checkpoint_every: int = 0, augment: dict | None = None,
             deterministic: bool = False) -> dict:
    """Runs the pretraining and saves the backbone; returns the sidecar record."""
    if not output.endswith(".weights.h5"):
        raise ValueError(f"--output={output} must end in .weights.h5 (Keras' weights format)")
    if mode not in MODES:
        raise ValueError(f"--mode={mode}: choose one of {MODES}")
    if init and not os.path.isfile(init):
        raise FileNotFoundError(f"--init={init}: no such file (a *.weights.h5 written by this tool)")
    started = time.time()
    xla_flags = deterministic_ops(deterministic)
    keras.utils.set_random_seed(seed)
    if precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    augment = augmentation(mode, augment) if mode in ("crack", "simclr") else {}
    log_every = max(1, min(log_every, steps))
    epochs = max(1, steps // log_every)
    record = {"mode": mode, "image_size": image_size, "steps": epochs * log_every, "batch_size": batch_size,
              "lr": lr, "weight_decay": weight_decay, "seed": seed, "log_every": log_every, "precision": precision,
              "bn_momentum": bn_momentum, "init": init or None,
              "tile_size": tile_size or image_size, "num_tiles": num_tiles if mode == "synthetic" else None,
              "crop": crop if mode in ("rotation", "simclr") else None,
              "temperature": temperature if mode == "simclr" else None,
              "data_dir": None if mode == "synthetic" or photos and mode != "crack" else data_dir,
              "photos": list(photos) if photos and mode in ("rotation", "simclr") else None,
              "crop_side": list(crop_side) if mode == "crack" else None,
              "min_crack_pixels": min_crack_pixels if mode == "crack" else None, "augment": augment or None}
    folder = output + ".ckpt"
    _check_resumable(folder, record)
    data: dict = {}
    if mode == "crack":
        data["sampler"] = crack_sampler(data_dir, data_root, image_size, crop_side, min_crack_pixels, seed,
                                        steps * batch_size, augment)
    elif mode == "synthetic":
        data["tiles"], data["labels"] = synthetic_pool(num_tiles, tile_size or image_size, seed, workers)
        print(f"synthetic: {num_tiles} tiles of {tile_size or image_size} px in {time.time() - started:.0f}s", flush=True)
    elif mode == "simclr":
        options = CropOptions(image_size=image_size, **augment)
        data["sampler"] = ViewSampler(unlabelled_photos(photos, data_dir, data_root), options, seed,
                                      region=int(crop * 1.5))
    else:
        data["photos"], data["crop"] = unlabelled_photos(photos, data_dir, data_root), crop
    model, backbone = build_pretrainer(mode, image_size, bn_momentum)
    if init:
        try:
            backbone.load_weights(init)
        except Exception as err:  # noqa: BLE001 - wrong architecture, truncated file
            raise ValueError(f"--init={init}: not ResNet50 no-top weights of this tool ({err})") from err
    schedule = keras.optimizers.schedules.CosineDecay(lr * 0.01, epochs * log_every, alpha=0.01,
                                                      warmup_target=lr, warmup_steps=max(1, epochs * log_every // 20))
    supervised = mode != "simclr"  # crack / synthetic: 2 classes, rotation: 4
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True) if supervised
                  else nt_xent(temperature),
                  metrics=["sparse_categorical_accuracy"] if supervised else None)
    done, history = _resume(model, folder)
    queue = {"workers": max(1, data_workers), "max_queue_size": max(10, 2 * data_workers)}
    if mode in ("crack", "simclr"):  # batch i = sampler.batch(i), rendered in workers, shared-memory batches
        batches = CropPyDataset(data["sampler"], 2 * batch_size if mode == "simclr" else batch_size,
                                skip_batches=done, steps_per_epoch=log_every, processes=data_processes, **queue)
    else:
        batches = Batches(lambda i: make_batch(mode, i, batch_size, image_size, seed, **data), log_every,
                          skip=done, use_multiprocessing=data_processes, **queue)
    print(f"pretrain {mode}: {epochs * log_every} steps x {batch_size} at {image_size} px, "
          f"backend {keras.backend.backend()}, params {backbone.count_params():,}", flush=True)
    every = -(-checkpoint_every // log_every) if checkpoint_every > 0 else 0
    saver = Checkpoints(folder, every, log_every, {"settings": record, "history": history})
    model.fit(batches, epochs=epochs, initial_epoch=done // log_every, steps_per_epoch=log_every, shuffle=False,
              verbose=1 if sys.stdout.isatty() else 2, callbacks=[saver])
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    backbone.save_weights(output)
    if save_model:
        model.save(save_model)
    shutil.rmtree(folder, ignore_errors=True)
    record.update(output=output, backend=keras.backend.backend(), deterministic=deterministic,
                  xla_flags=xla_flags or None, weights_sha256=weights_digest(backbone), seconds=time.time() - started,
                  resumed_at_step=done or None, history=saver.state["history"])
    with open(output + ".json", "w") as f:
        json.dump(record, f, indent=2)
    final = {k: round(v[-1], 4) for k, v in record["history"].items()}
    print(f"summary: {mode} pretraining, {record['steps']} steps ({record['steps'] - done} in this call) in "
          f"{record['seconds']:.0f}s, final {final}; backbone weights -> {output} (use --weights={output})", flush=True)
    return record


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    names = ("mode", "output", "image_size", "steps", "batch_size", "lr", "weight_decay", "seed", "log_every",
             "tile_size", "num_tiles", "workers", "photos", "crop", "temperature", "bn_momentum", "precision",
             "save_model", "data_workers", "data_dir", "data_root", "min_crack_pixels", "data_processes", "init",
             "checkpoint_every", "deterministic")
    try:
        pretrain(**{name: FLAGS[name].value for name in names}, crop_side=tuple(int(v) for v in FLAGS.crop_side),
                 augment={name: FLAGS[name].value for name in AUGMENT})
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from e
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
