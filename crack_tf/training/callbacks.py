"""Trainer callbacks: progress lines, TensorBoard scalars, checkpoints, best model."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time

import keras
import numpy as np

from crack_tf.training import checkpoints, rundir


def _scalar(value) -> float:
    return float(np.asarray(keras.ops.convert_to_numpy(value)).reshape(-1)[0])


def global_step(model: keras.Model) -> int:
    return int(_scalar(model.optimizer.iterations))


class ScalarWriter:
    """TensorBoard writer: ``tf.summary`` on the TF backend, PyTorch's writer elsewhere.

    Never imports TensorFlow on the JAX / torch backends; without any writer it only
    keeps ``history.jsonl`` (always written by :class:`ProgressLogger`).
    """

    def __init__(self, logdir: str | None):
        self._tf_writer = None
        self._torch_writer = None
        self.kind = "none"
        if logdir is None:
            return
        try:
            import tensorboard  # noqa: F401  (tf.summary and torch need it to write events)
        except ImportError:
            print("tensorboard is not installed: logging to history.jsonl only", flush=True)
            return
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            self._tf_writer = tf.summary.create_file_writer(logdir)
            self.kind = "tf.summary"
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._torch_writer = SummaryWriter(logdir)
            self.kind = "torch.utils.tensorboard"
        except Exception:  # no tensorboard package: history.jsonl only
            pass

    def scalars(self, values: dict, step: int) -> None:
        if self._tf_writer is not None:
            import tensorflow as tf

            with self._tf_writer.as_default():
                for name, value in values.items():
                    tf.summary.scalar(name, value, step=step)
        elif self._torch_writer is not None:
            for name, value in values.items():
                self._torch_writer.add_scalar(name, value, step)

    def images(self, name: str, images: np.ndarray, step: int) -> None:
        """Writes a batch of uint8 HxWx3 images as one grid."""
        grid = image_grid(images)
        if self._tf_writer is not None:
            import tensorflow as tf

            with self._tf_writer.as_default():
                tf.summary.image(name, grid[None], step=step)
        elif self._torch_writer is not None:
            self._torch_writer.add_image(name, grid, step, dataformats="HWC")

    def flush(self) -> None:
        if self._tf_writer is not None:
            self._tf_writer.flush()
        elif self._torch_writer is not None:
            self._torch_writer.flush()


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tiles a batch ``[N, H, W, 3]`` into one ``[rows*H, columns*W, 3]`` uint8 image."""
    images = np.asarray(images)[: columns * 4]
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = np.clip(img, 0, 255).astype(np.uint8)
    return grid


@contextlib.contextmanager
def ema_weights(swapper):
    """The optimizer's averaged weights in the model inside the block (no-op without EMA)."""
    if swapper is None:
        yield
        return
    swapper.on_test_begin()
    try:
        yield
    finally:
        swapper.on_test_end()


class Health:
    """Stops a run at its first non-finite loss / metric / weight and remembers why."""

    def __init__(self):
        self.failure: str | None = None
        self.step: int | None = None
        self.last_finite: tuple[int, float] | None = None

    def fail(self, step: int, what: str) -> None:
        if self.failure is None:
            self.failure, self.step = what, step

    def observe(self, step: int, logs: dict) -> bool:
        """Records ``logs`` of ``step``; False (and the failure) at the first non-finite value."""
        values = {k: float(v) for k, v in logs.items() if np.ndim(v) == 0}
        bad = sorted(k for k, v in values.items() if not np.isfinite(v))
        if bad:
            self.fail(step, ", ".join(f"{k}={values[k]}" for k in bad))
            return False
        if "loss" in values:
            self.last_finite = (step, values["loss"])
        return True

    def message(self, cfg) -> str:
        last = (f"last finite loss {self.last_finite[1]:.4g} at step {self.last_finite[0]}" if self.last_finite
                else "no finite loss was seen")
        return (f"training stopped at step {self.step}: {self.failure} ({last}). Try a lower --lr (now {cfg.lr:g}) "
                f"or --mixed_precision=float32; the last good checkpoint in {cfg.model_dir}/ckpt is kept and no "
                f"best.keras / final.keras was written from the broken state.")


class StepClock:
    """The global optimizer step, counted on the host: reading ``optimizer.iterations`` after
    every step would wait for the device each time (no overlap of data and compute)."""

    def __init__(self):
        self.fit_start = self.initial_epoch = 0
        self.fit_steps = 1

    def begin_fit(self, start_step: int, initial_epoch: int, steps_per_epoch: int) -> None:
        """Before each ``model.fit``: its first step, first epoch and steps per epoch."""
        self.fit_start, self.initial_epoch, self.fit_steps = start_step, initial_epoch, steps_per_epoch

    def epoch_start(self, epoch: int) -> int:
        """Steps done before ``epoch`` of the current fit began."""
        return self.fit_start + (epoch - self.initial_epoch) * self.fit_steps


class ProgressLogger(keras.callbacks.Callback):
    """Progress lines (non-TTY), per-epoch summaries, TensorBoard and history.jsonl.

    ``async_safe``: Keras may then run ``on_train_batch_end`` in a worker thread (JAX), so training
    never waits for the device to log; it only reads ``logs``, never the model. Not in
    multi-process runs: reading a global array there is a collective, and collectives issued
    from another thread can interleave differently in each process.
    """

    def __init__(self, model_dir: str, clock: StepClock, steps_per_epoch: int, epochs: int, global_batch: int,
                 log_every: int, writer: ScalarWriter, print_lines: bool, lr_at, is_chief: bool = True,
                 sources: tuple[str, ...] = (), async_logs: bool = True, health: Health | None = None):
        super().__init__()
        self.history_path = os.path.join(model_dir, "history.jsonl")
        self.clock = clock
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.global_batch = global_batch
        self.log_every = max(1, log_every)
        self.writer = writer
        self.print_lines = print_lines
        self.lr_at = lr_at  # step -> learning rate (host-side schedule)
        self.is_chief = is_chief
        self.async_safe = async_logs
        self.health = health or Health()
        self.sources = sources  # per-source val metrics val_<source>_<metric> shown after the pooled ones
        self._lock = threading.Lock()
        self._epoch = 0
        self._epoch_start = self._train_end = 0.0
        self._epoch_start_step = 0
        self._window_start = 0.0
        self._window_step = 0
        self.last_throughput = 0.0
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = self._window_start = time.perf_counter()
        self._train_end = 0.0
        self._epoch_start_step = self._window_step = self.clock.epoch_start(epoch)

    def mark_train_end(self) -> None:
        """The epoch's training steps are done (validation starts): throughput stops here."""
        if not self._train_end:
            self._train_end = time.perf_counter()

    def on_test_begin(self, logs=None):
        self.mark_train_end()

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch_start_step + batch + 1
        if not self.health.observe(step, logs or {}):
            self._model.stop_training = True  # the attribute only: reading self.model would sync state
            return
        if step % self.log_every:
            return
        with self._lock:
            now = time.perf_counter()
            rate = (step - self._window_step) * self.global_batch / max(now - self._window_start, 1e-9)
            self._window_start, self._window_step = now, step
        logs = logs or {}
        values = {f"train/{k}": float(v) for k, v in logs.items() if np.ndim(v) == 0}
        values["train/learning_rate"] = self.lr_at(step)
        values["train/images_per_second"] = rate
        if self.is_chief:
            self.writer.scalars(values, step)
        if self.print_lines and self.is_chief:
            in_epoch = step - self._epoch * self.steps_per_epoch
            shown = " ".join(f"{k}={float(v):.4f}" for k, v in logs.items() if k in ("loss", "accuracy"))
            print(
                f"epoch {self._epoch + 1}/{self.epochs} step {in_epoch}/{self.steps_per_epoch} "
                f"{shown} lr={values['train/learning_rate']:.5f} img/s={rate:.1f}",
                flush=True,
            )

    def on_epoch_end(self, epoch, logs=None):
        self.mark_train_end()
        logs = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        step = self._epoch_start_step + self.clock.fit_steps
        seconds = time.perf_counter() - self._epoch_start
        train_seconds = self._train_end - self._epoch_start
        self.last_throughput = (step - self._epoch_start_step) * self.global_batch / max(train_seconds, 1e-9)
        self.epoch_seconds.append(seconds)
        record = {"epoch": epoch + 1, "step": step, "seconds": seconds, "train_seconds": train_seconds,
                  "images_per_second": self.last_throughput, "learning_rate": self.lr_at(step), **logs}
        if not self.is_chief:
            return
        with open(self.history_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {("val/" + k[4:] if k.startswith("val_") else "epoch/" + k): v for k, v in logs.items()}
        scalars["epoch/images_per_second"] = self.last_throughput
        self.writer.scalars(scalars, step)
        self.writer.flush()
        keys = ("loss", "accuracy", "precision", "recall", "val_loss", "val_accuracy", "val_precision",
                "val_recall")
        shown = " ".join(f"{k}={logs[k]:.4f}" for k in keys if k in logs)
        for name in self.sources:
            p = f"val_{name}_"
            if p + "accuracy" in logs:
                shown += (f" | {name} acc={logs[p + 'accuracy']:.4f} P={logs.get(p + 'precision', 0):.4f} "
                          f"R={logs.get(p + 'recall', 0):.4f}")
        print(f"epoch {epoch + 1}/{self.epochs} done in {seconds:.1f}s (train {train_seconds:.1f}s, "
              f"{self.last_throughput:.1f} img/s): {shown}", file=sys.stdout, flush=True)


class CheckpointAndBest(keras.callbacks.Callback):
    """Resumable checkpoints every N steps and each epoch; keeps ``best.keras``.

    ``state`` (``{"global_step", "best"}``) is shared with the trainer so a resumed run
    continues with the best value seen before the interruption. Every process saves
    (a collective in multi-process runs); non-chief processes write to scratch. Step
    checkpoints are taken in ``on_train_batch_begin`` on the main thread, so no per-step hook
    forces Keras to wait for the device after every step.
    """

    def __init__(self, model_dir: str, clock: StepClock, every: int, monitor: str, mode: str, state: dict,
                 is_chief: bool = True, ema=None, health: Health | None = None, save_weights=None):
        super().__init__()
        self.health = health or Health()
        self.save_weights = save_weights  # tests inject a failing writer
        self.ema = ema  # SwapEMAWeights: best.keras holds the averaged weights
        self.model_dir = rundir.output_dir(model_dir, is_chief)
        self.clock = clock
        self.every = every
        self.monitor = monitor
        self.better = np.greater if mode == "max" else np.less
        self.state = state
        self.is_chief = is_chief
        self._epoch_first = 0
        self._last_saved = state.get("global_step", 0)

    def _save(self):
        step = global_step(self.model)
        if self.health.failure is not None:
            return  # never overwrite the last good checkpoint with a broken state
        if not checkpoints.weights_finite(self.model):
            self.health.fail(step, "non-finite weights")
            self.model.stop_training = True
            return
        self.state["global_step"] = step
        try:
            checkpoints.save_checkpoint(self.model, self.model_dir, self.state, self.save_weights)
        except OSError as e:  # a full disk, a lost mount: keep training, the previous one stays
            print(f"warning: checkpoint at step {step} not written ({type(e).__name__}: {e}); the previous "
                  f"checkpoint is kept", file=sys.stderr, flush=True)
            return
        self._last_saved = step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_first = self.clock.epoch_start(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        done = self._epoch_first + batch
        if self.every and done % self.every == 0 and done != self._last_saved:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        usable = value is not None and np.isfinite(value) and self.health.failure is None
        if usable and (self.state.get("best") is None or self.better(value, self.state["best"])):
            self.state["best"] = float(value)
            self.state["best_epoch"] = epoch + 1
            with ema_weights(self.ema):
                self.model.save(os.path.join(self.model_dir, "best.keras"))
        self._save()
