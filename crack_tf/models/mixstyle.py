"""MixStyle (Zhou et al., "Domain generalization with MixStyle", ICLR 2021).

A training-only layer for generalising to sources never trained on: with probability ``p`` per
batch it re-styles each sample's feature map with a random mix of its own channel statistics and
those of another sample of the batch,

    out = (x - mu) / sigma * (lambda * sigma + (1 - lambda) * sigma[perm]) + (lambda * mu + (1 - lambda) * mu[perm]),

``mu`` / ``sigma`` the per-sample, per-channel mean / std over the spatial axes (no gradient through
them), ``lambda ~ Beta(alpha, alpha)`` per sample and ``perm`` a random permutation of the batch. A
batch that mixes photos of several sources (drones, cameras, surfaces) then trains on styles between
them. At inference it is the identity, so a trained model serves, exports and adapts (AdaBN) as
without it. Keras ops only; the statistics in float32 under mixed precision.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="crack_tf")
class MixStyle(keras.layers.Layer):
    """Mixes feature statistics between the samples of a training batch (module docstring).

    Args:
        p: probability that a training batch is mixed (the paper's 0.5).
        alpha: Beta(alpha, alpha) concentration of the mixing weight (0.1: mostly near 0 or 1).
        eps: added to the variance before the square root.
        seed: seed of the layer's random draws (None: from Keras' global seed).
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"MixStyle p={p}: must be a probability in [0, 1]")
        if alpha <= 0 or eps <= 0:
            raise ValueError(f"MixStyle alpha={alpha} and eps={eps} must be > 0")
        self.p, self.alpha, self.eps, self.seed = float(p), float(alpha), float(eps), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.p == 0.0:
            return inputs
        x = ops.cast(inputs, "float32")
        batch = ops.shape(x)[0]
        mu = ops.stop_gradient(ops.mean(x, axis=(1, 2), keepdims=True))
        sigma = ops.stop_gradient(ops.sqrt(ops.var(x, axis=(1, 2), keepdims=True) + self.eps))
        lam = keras.random.beta((batch, 1, 1, 1), self.alpha, self.alpha, dtype="float32", seed=self.seed_generator)
        perm = keras.random.shuffle(ops.arange(batch), seed=self.seed_generator)
        mu_mix = lam * mu + (1.0 - lam) * ops.take(mu, perm, axis=0)
        sigma_mix = lam * sigma + (1.0 - lam) * ops.take(sigma, perm, axis=0)
        mixed = (x - mu) / sigma * sigma_mix + mu_mix
        apply = keras.random.uniform((), seed=self.seed_generator) < self.p
        return ops.cast(ops.where(apply, mixed, x), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "p": self.p, "alpha": self.alpha, "eps": self.eps, "seed": self.seed}
