"""Learning-rate schedules, optimizers and the loss (backend-agnostic Keras 3).

Learning-rate rule: the base ``--lr`` is meant for a global batch of
``--lr_reference_batch`` (the paper's 32). With ``--lr_scaling=linear`` (default) the
effective peak rate is ``lr * global_batch / lr_reference_batch`` (Goyal et al., 2017),
so adding replicas with the same per-replica batch keeps the per-example step size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crack_tf.training.config import OptimOptions
import math

import keras
import numpy as np
from keras import ops


def effective_lr(cfg: OptimOptions) -> float:
    """Peak learning rate after the documented batch-size scaling rule."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * cfg.batch_size / cfg.lr_reference_batch
    return cfg.lr


@keras.saving.register_keras_serializable(package="crack_tf")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak_lr`` over ``warmup_steps``, then a decay schedule.

    Hand-written, not ``keras.optimizers.schedules.CosineDecay(warmup_target=...)``: after the
    warm-up the cosine is the same numbers, but Keras' warm-up starts at 0 (a step without any
    update) and reaches the peak a step later (``tests/test_optim.py``); this one also has the
    step / exponential kinds and a host-side :meth:`value` for the logs.

    ``kind``: ``constant``; ``step`` (multiply by ``decay_rate`` every ``decay_steps``);
    ``exponential`` (smooth ``decay_rate ** (t / decay_steps)``); ``cosine`` (to 0 at
    ``total_steps``). Decay time ``t`` counts from the end of the warm-up.
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        kind: str = "cosine",
        warmup_steps: int = 0,
        decay_rate: float = 0.1,
        decay_steps: int = 1,
    ):
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.decay_rate = float(decay_rate)
        self.decay_steps = max(1, int(decay_steps))

    def _lr(self, step, xp):
        """The rate at ``step`` (float32) with ``xp`` = ``keras.ops`` (in the step) or NumPy."""
        t = xp.maximum(step - self.warmup_steps, 0.0)
        if self.kind == "constant":
            decayed = xp.full_like(step, self.peak_lr)
        elif self.kind == "step":
            decayed = self.peak_lr * xp.power(self.decay_rate, xp.floor(t / self.decay_steps))
        elif self.kind == "exponential":
            decayed = self.peak_lr * xp.power(self.decay_rate, t / self.decay_steps)
        elif self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = xp.minimum(t / span, 1.0)
            decayed = 0.5 * self.peak_lr * (1.0 + xp.cos(math.pi * progress))
        else:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        if self.warmup_steps <= 0:
            return decayed
        warm = self.peak_lr * (step + 1.0) / self.warmup_steps
        return xp.where(step < self.warmup_steps, warm, decayed)

    def __call__(self, step):
        return self._lr(ops.cast(step, "float32"), ops)

    def value(self, step: int) -> float:
        """The same rate computed on the host (for logs: no device round trip)."""
        return float(self._lr(np.float32(step), np))

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "kind": self.kind,
            "warmup_steps": self.warmup_steps,
            "decay_rate": self.decay_rate,
            "decay_steps": self.decay_steps,
        }


def make_schedule(cfg: OptimOptions, steps_per_epoch: int) -> WarmupDecay:
    """The learning-rate schedule of a run, in optimizer steps."""
    return WarmupDecay(
        peak_lr=effective_lr(cfg),
        total_steps=cfg.epochs * steps_per_epoch,
        kind=cfg.lr_schedule,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        decay_rate=cfg.lr_decay_rate,
        decay_steps=round(cfg.lr_decay_epochs * steps_per_epoch),
    )


def make_optimizer(cfg: OptimOptions, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with momentum (paper) or AdamW; decoupled weight decay, none on BN/bias; with
    ``ema_momentum`` > 0 the optimizer also keeps an exponential moving average of the weights
    (Keras ``use_ema``), which becomes the final model."""
    schedule = make_schedule(cfg, steps_per_epoch)
    ema = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if cfg.ema_momentum else {}
    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(
            learning_rate=schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay or None, **ema
        )
    else:
        opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay, **ema)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "moving_mean", "moving_variance"])
    return opt


@keras.saving.register_keras_serializable(package="crack_tf")
class SparseCrossEntropy(keras.losses.Loss):
    """Sparse categorical cross-entropy on logits with optional label smoothing."""

    def __init__(self, num_classes: int = 2, label_smoothing: float = 0.0, name="cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.num_classes)
        return keras.losses.categorical_crossentropy(
            labels, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "label_smoothing": self.label_smoothing})
        return config
