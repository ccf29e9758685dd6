"""``calibrate --fit=finetune``: the top of the network fine-tuned on a site's labelled sample.

A threshold or a re-fitted last layer cannot lift a new site above what the model's features rank
(docs/RESULTS.md 00000: 86-89 at a left-out source's own best threshold). This fit changes the
features: every layer from the first one named ``start*`` on (default :data:`DEFAULT_START`, the
last ResNet stage; ``logits`` = the head only), searched through nested models in order, is trained
on the sample, the layers before it stay as they are, and every BatchNormalization layer stays
frozen (its statistics and scale kept: a few dozen tiles cannot re-estimate them). Training:
``steps`` Adam steps of class-balanced batches drawn with replacement from the sample, each tile
under a random D4 transform (the trainer's flips and rotations), cross-entropy on the logits.

:class:`SiteFinetuner` compiles once and resets weights and optimizer state between fits, so the
cross-validation folds of ``calibrate`` and the draws of ``tools/few_shot_finetune.py`` reuse one
compiled train step (a compile is tens of seconds on a GPU).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_START = "conv5_"  # ResNet50's last stage (conv5_block1..3), then pooling and the head
DEFAULT_STEPS = 50
DEFAULT_LR = 1e-4
DEFAULT_BATCH = 32
FOLDS = 5  # cross-validation folds of calibrate (each one a fine-tuning)


def leaf_layers(model: Any) -> list[Any]:
    """Every layer of ``model`` in order, nested models (the ResNet backbone) opened up."""
    out = []
    for layer in model.layers:
        out += leaf_layers(layer) if hasattr(layer, "layers") and layer.layers else [layer]
    return out


def set_trainable_from(model: Any, start: str) -> int:
    """Layers from the first one named ``start*`` on become trainable (BatchNormalization excepted),
    the others frozen; returns the number of trainable weights' elements. ValueError naming the
    model's stages when no layer matches."""
    import keras

    leaves = leaf_layers(model)
    first = next((i for i, layer in enumerate(leaves) if layer.name.startswith(start)), None)
    if first is None:
        prefixes = sorted({layer.name.split("_")[0] for layer in leaves})
        raise ValueError(f"--finetune_from={start!r} names no layer of {model.name}; layer names start with "
                         f"{prefixes} (e.g. conv5_ for ResNet50's last stage, conv5_block3 for its last block, "
                         "logits for the head only)")
    model.trainable = True
    for layer in model.layers:  # containers trainable, so that their layers' own flags count
        layer.trainable = True
    for i, layer in enumerate(leaves):
        layer.trainable = i >= first
    # every BatchNormalization frozen, also those inside a leaf (the ASPP's branch norms), which
    # setting the leaf trainable above made trainable again
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def random_d4(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each square image [H, W, C] under one of the 8 rotations / flips (the D4 test-time views of
    ``crack_tf.predictor``), drawn at random."""
    from crack_tf.predictor import TTA_OPS, apply_view

    views = TTA_OPS["d4"]
    return np.stack([apply_view(image[None], views[int(rng.integers(len(views)))], np)[0] for image in images])


def balanced_batch(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices drawn with replacement, half of each class (one class: all of it)."""
    classes = [np.flatnonzero(labels == c) for c in (0, 1)]
    classes = [c for c in classes if c.size]
    per = np.array_split(np.arange(size), len(classes))
    return np.concatenate([rng.choice(c, len(p), replace=True) for c, p in zip(classes, per)])


class SiteFinetuner:
    """Fine-tunes ``model`` (in place) on labelled tiles; :meth:`fit` always starts from the weights
    the model had when this object was made, :meth:`restore` puts them back."""

    def __init__(self, model: Any, start: str = DEFAULT_START, lr: float = DEFAULT_LR,
                 steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH):
        import keras

        if steps < 1 or lr <= 0 or batch_size < 2:
            raise ValueError(f"fine-tuning needs steps >= 1, lr > 0 and batch_size >= 2 (got {steps}, {lr}, "
                             f"{batch_size})")
        head = model.layers[-1]
        units = getattr(head, "units", None)
        if units not in (1, 2) or getattr(head, "activation", None) is not keras.activations.linear:
            raise ValueError(f"--fit=finetune needs a model ending in a linear Dense layer of 2 logits (or 1); "
                             f"{model.name} ends in {type(head).__name__} {head.name!r}")
        self.model, self.steps, self.batch_size, self.units = model, int(steps), int(batch_size), units
        self.initial = model.get_weights()
        self.trainable = set_trainable_from(model, start)
        loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if units == 2
                else keras.losses.BinaryCrossentropy(from_logits=True))
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
        model.optimizer.build(model.trainable_variables)
        self._fresh_optimizer = [np.asarray(v.numpy()) for v in model.optimizer.variables]

    def restore(self) -> None:
        """The weights the model came with, and a fresh optimizer state."""
        self.model.set_weights(self.initial)
        for var, value in zip(self.model.optimizer.variables, self._fresh_optimizer):
            var.assign(value)

    def fit(self, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> list[float]:
        """Fine-tunes from the initial weights on ``images`` [N, H, W, C] (the model's input scale)
        and ``labels`` [N]; returns the loss of each step."""
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(images) != labels.size or labels.size < 2 or np.unique(labels).size < 2:
            raise ValueError(f"fine-tuning needs images and labels of equal length with both classes "
                             f"(got {len(images)} images, labels {np.bincount(labels, minlength=2).tolist()})")
        self.restore()
        rng = np.random.default_rng(seed)
        losses = []
        for _ in range(self.steps):
            idx = balanced_batch(labels, self.batch_size, rng)
            x = random_d4(np.asarray(images[idx], np.float32), rng)
            y = labels[idx] if self.units == 2 else labels[idx, None].astype(np.float32)
            loss = self.model.train_on_batch(x, y)
            losses.append(float(np.asarray(loss[0] if isinstance(loss, list) else loss)))
        return losses


class SampleTooSmall(ValueError):
    """A sample whose cross-validation folds cannot each train on both classes."""


def cross_fitted_margins(tuner: SiteFinetuner, images: np.ndarray, labels: np.ndarray, views: str = "none",
                         folds: int = FOLDS, seed: int = 0, fit_seed: int = 0) -> np.ndarray:
    """The sample's out-of-fold margins [V, N]: each fold of ``site_calibration.stratified_folds(labels,
    folds, seed)`` scored by a fine-tuning on the other folds (``fit_seed``: its batches' seed). The
    operating point of a fine-tuned model is fitted on these: a network fine-tuned on the sample nearly
    separates the sample itself. :class:`SampleTooSmall` when a fold's training part lacks a class."""
    from crack_tf.evaluation.site_calibration import stratified_folds

    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    fold = stratified_folds(labels, folds, seed)
    trains = [np.flatnonzero(fold != k) for k in np.unique(fold)]
    if any(np.unique(labels[train]).size < 2 for train in trains):  # before any fine-tuning
        raise SampleTooSmall(f"a sample of {labels.size} tiles ({np.bincount(labels, minlength=2).tolist()} "
                             f"background / crack) is too small for {folds} cross-validation folds that each "
                             "train on both classes; label more tiles of each class")
    out_of_fold = None
    for k, train in zip(np.unique(fold), trains):
        tuner.fit(images[train], labels[train], seed=fit_seed)
        fitted = array_margins(tuner.model, images, views)  # the whole sample: one batch shape for every fold
        if out_of_fold is None:
            out_of_fold = np.empty_like(fitted)
        out_of_fold[:, fold == k] = fitted[:, fold == k]
    return out_of_fold


def array_margins(model: Any, images: np.ndarray, tta: str = "none", batch_size: int = 64) -> np.ndarray:
    """Logit margins [V, N] (V test-time views) of ``images`` [N, H, W, C], scored as the trainer
    scores val (``finish.val_margins``: one batch shape, so one compile)."""
    import types

    from crack_tf.training.finish import val_margins

    batches = [(images[i:i + batch_size], np.zeros(len(images[i:i + batch_size]), np.int64))
               for i in range(0, len(images), batch_size)]
    return val_margins(model, types.SimpleNamespace(by_source=None, dataset=batches), tta)[0]


def save_with_weights(source: str, target: str, weights: list[np.ndarray]) -> None:
    """Loads ``source`` (its saved dtype policy), gives it ``weights`` and saves it as ``target``."""
    import keras

    import crack_tf.models  # noqa: F401  (registers the custom layers)

    model = keras.saving.load_model(source, compile=False)
    model.set_weights(weights)
    model.save(target)
