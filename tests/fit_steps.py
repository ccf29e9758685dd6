"""What each of ``fit``'s steps trains on: the tests of the loaders' step-indexed batches."""

import hashlib

import keras
import numpy as np


def first_value(x: np.ndarray) -> int:
    """A batch filled with its step: that step."""
    return int(x.ravel()[0])


def digest(x: np.ndarray) -> str:
    """Any batch: a short hash of its bytes."""
    return hashlib.md5(np.ascontiguousarray(x).tobytes()).hexdigest()[:12]


def steps_fit_sees(dataset, shape: tuple[int, ...], epochs: int, key=first_value) -> list:
    """``key`` of the images of the batch each of ``fit``'s steps trains on (``len(dataset)`` steps an
    epoch; a tiny dense model on ``shape`` inputs, run eagerly so the step sees the batch)."""
    seen: list = []
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    step = model.train_step

    def recording_step(*args):  # (data) on TensorFlow / torch, (state, data) on JAX
        seen.append(key(np.asarray(args[-1][0])))
        return step(*args)

    model.train_step = recording_step
    model.fit(dataset, epochs=epochs, steps_per_epoch=len(dataset), shuffle=False, verbose=0)
    return seen
