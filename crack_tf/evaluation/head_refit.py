"""``calibrate --fit=last_layer``: the final Dense layer re-fitted on a site sample, held near the old one.

The model's output layer must be a ``Dense`` of 2 logits (or 1 crack logit) on penultimate
features ``f`` (the input of that layer). Only the logit margin ``f . w + b`` matters for p(crack),
so the re-fit moves the margin weights by ``(dw, db)`` (for 2 logits: ``+-(dw, db) / 2`` on the
crack / background columns, leaving their sum unchanged) minimising, with L-BFGS,

    mean NLL of the sample  +  l2 / 2 * mean ||f||^2 * ||dw||^2

(the probability of a tile with V test-time views is the mean over them, as in prediction). The
penalty bounds how far the sample's margins can move (``(f . dw)^2 <= ||f||^2 ||dw||^2``) whatever
the feature scale: ``l2`` large keeps the old layer, ``l2`` -> 0 is a plain logistic regression.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import optimize, special

DEFAULT_L2 = 1.0


def head_layer(model: Any) -> Any:
    """The model's output layer; ValueError unless it is a Dense layer (with bias) of 1 or 2 units."""
    import keras

    layer = model.layers[-1]
    if not isinstance(layer, keras.layers.Dense) or layer.units not in (1, 2) or not layer.use_bias:
        raise ValueError(f"--fit=last_layer needs a model ending in a Dense layer of 2 logits (or 1); "
                         f"{model.name} ends in {type(layer).__name__} {getattr(layer, 'name', '')!r}")
    return layer


def margin_weights(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, float]:
    """(w [D], b) of the logit margin ``l_crack - l_background`` (or the single crack logit)."""
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    if kernel.shape[1] == 2:
        return kernel[:, 1] - kernel[:, 0], float(bias[1] - bias[0])
    return kernel[:, 0], float(bias[0])


def head_margins(features: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Logit margins [V, N] of features [V, N, D] under a Dense head (kernel [D, C], bias [C])."""
    w, b = margin_weights(kernel, bias)
    return np.asarray(features, np.float64) @ w + b


def sample_features(model: Any, split_input: Any, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features [V, N, D] (V test-time views) and labels [N] of an eval input split."""
    import keras

    from crack_tf.data.input import padded_batches
    from crack_tf.predictor import tta_views

    head = head_layer(model)
    features_of = keras.Model(model.inputs, head.input)
    features, labels = [], []
    for images, y, rows in padded_batches(split_input.dataset):  # one batch shape: one compile
        features.append(np.stack([np.asarray(keras.ops.convert_to_numpy(features_of.predict_on_batch(
            np.asarray(v, np.float32))), np.float32)[:rows].reshape(rows, -1) for v in tta_views(images, tta)]))
        labels.append(np.asarray(y).reshape(-1))
    return np.concatenate(features, axis=1), np.concatenate(labels)


def refit_head(features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray,
               l2: float = DEFAULT_L2) -> tuple[np.ndarray, np.ndarray]:
    """New (kernel, bias) of the Dense head fitted on features [V, N, D] and labels [N] (see module doc)."""
    if l2 < 0:
        raise ValueError(f"--l2={l2} must be >= 0")
    f = np.asarray(features, np.float64)
    f = f[None] if f.ndim == 2 else f
    y = np.asarray(labels, np.float64).reshape(-1)
    if f.shape[1] != y.size:
        raise ValueError(f"features {f.shape} and labels {y.shape} differ in length")
    w0, b0 = margin_weights(kernel, bias)
    scale = l2 * float(np.mean(np.sum(f**2, axis=-1)))
    v, n = f.shape[0], y.size

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        dw, db = theta[:-1], theta[-1]
        s = special.expit(f @ (w0 + dw) + b0 + db)  # [V, N]
        p = np.clip(s.mean(axis=0), 1e-12, 1 - 1e-12)
        nll = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
        g = ((1 - y) / (1 - p) - y / p)[None] * s * (1 - s) / (v * n)  # dNLL / dmargin [V, N]
        grad_w = np.einsum("vn,vnd->d", g, f) + scale * dw
        return float(nll + 0.5 * scale * dw @ dw), np.r_[grad_w, g.sum()]

    theta = optimize.minimize(loss, np.zeros(f.shape[-1] + 1), jac=True, method="L-BFGS-B").x
    dw, db = theta[:-1], theta[-1]
    kernel, bias = np.array(kernel, np.float64), np.array(bias, np.float64)
    if kernel.shape[1] == 2:
        kernel += np.stack([-dw / 2, dw / 2], axis=1)
        bias += np.array([-db / 2, db / 2])
    else:
        kernel[:, 0] += dw
        bias[0] += db
    return kernel.astype(np.float32), bias.astype(np.float32)


def save_with_head(source: str, target: str, kernel: np.ndarray, bias: np.ndarray) -> None:
    """Loads ``source`` (its saved dtype policy), sets the head's weights and saves it as ``target``."""
    import keras

    import crack_tf.models  # noqa: F401  (registers the custom layers)

    model = keras.saving.load_model(source, compile=False)
    head_layer(model).set_weights([kernel, bias])
    model.save(target)
