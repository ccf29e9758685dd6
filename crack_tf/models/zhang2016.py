"""The road-crack CNN of Zhang et al. (ICIP 2016), the paper's non-ResNet baseline.

99x99x3 input; conv 4x4x48 + maxpool; conv 5x5x48 + maxpool; conv 3x3x48 + maxpool;
conv 4x4x48 + maxpool; FC 200 + dropout 0.5; FC 2. Takes raw 0-255 RGB and scales it to [-1, 1]
inside the model: with [0, 1] inputs (mean ~0.7 on concrete) the ReLU stack sat on a plateau at
loss ln 2 and predicted one class on the UAV75 tiles (docs/RESULTS.md, Zhang baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

_CONV_KERNELS = (4, 5, 3, 4)


def build_zhang2016(
    input_shape: Sequence[int | None] = (99, 99, 3),
    num_classes: int = 2,
    dropout: float = 0.5,
    name: str = "zhang2016",
) -> keras.Model:
    """Builds the Zhang 2016 CNN with float32 logits."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    for i, k in enumerate(_CONV_KERNELS, start=1):
        x = keras.layers.Conv2D(48, k, activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(200, activation="relu", name="fc1")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
