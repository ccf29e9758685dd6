"""Atrous Spatial Pyramid Pooling (ASPP) built from dilated depthwise-separable convs.

The layer follows the paper summarised in ``shared/PAPER.md``: one branch per atrous
rate, each a 3x3 dilated depthwise-separable convolution (depthwise with a channel
multiplier ``m`` -- the paper's "out" -- then a pointwise 1x1), followed by
BatchNorm and ReLU. Branch outputs are resized bilinearly to a common size (a no-op
with ``padding="same"`` and stride 1) and fused.

The code is backend-agnostic (``keras.ops`` only) so the model runs on the
TensorFlow, JAX and PyTorch backends.

Implementations (``impl``) compute the same function from the same weights:

* ``"separable"`` -- the textbook path, ``SeparableConv2D`` per branch.
* ``"dense"`` -- each branch's depthwise and pointwise kernels are composed into one
  dense dilated 3x3 kernel ``K[h, w, c, f] = sum_m D[h, w, c, m] * P[c, m, f]`` at every
  call and applied with a single ``keras.ops.conv``. More FLOPs, but a dense conv runs
  on matrix units, while dilated depthwise convs with a channel multiplier have slow
  kernels (especially the backward pass) on GPUs.
* ``"auto"`` -- ``"dense"`` on accelerators (GPU/TPU), ``"separable"`` on CPU.

The checkpoint format does not depend on ``impl``: the weights always live in the
``SeparableConv2D`` sub-layers, so a model trained with one ``impl`` loads with another.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

FUSIONS = ("max", "sum", "concat")
IMPLS = ("auto", "separable", "dense")


def _accelerator_present() -> bool:
    """True when the current Keras backend places work on a GPU/TPU."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")
        if backend == "torch":
            import torch

            return torch.cuda.is_available()
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_logical_devices("GPU"))
    except Exception:  # pragma: no cover - defensive: unknown device stacks
        return False
    return False


def resolve_impl(impl: str) -> str:
    """Maps ``"auto"`` to the fastest implementation measured for this device."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return "dense" if _accelerator_present() else "separable"


@keras.saving.register_keras_serializable(package="crack_tf")
class ASPP(keras.layers.Layer):
    """ASPP module of dilated depthwise-separable 3x3 branches.

    Args:
        filters: output channels of each branch and of the module; ``None`` keeps the
            input channel count so the next backbone stage fits unchanged.
        rates: one atrous (dilation) rate per branch, each >= 1.
        depth_multiplier: depthwise channel multiplier ``m`` (the paper's "out").
        fusion: ``"max"`` (element-wise maximum, the paper's "maximum response"),
            ``"sum"``, or ``"concat"`` (channel concat + 1x1 projection to ``filters``).
        impl: ``"auto"``, ``"separable"`` or ``"dense"`` (see module docstring).
    """

    def __init__(
        self,
        filters: int | None = None,
        rates: Sequence[int] = (2, 4, 8),
        depth_multiplier: int = 4,
        fusion: str = "max",
        impl: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        rates = tuple(int(r) for r in rates)
        if not rates:
            raise ValueError("rates must name at least one atrous rate, e.g. (2, 4, 8)")
        if any(r < 1 for r in rates):
            raise ValueError(f"every atrous rate must be an integer >= 1, got {rates}")
        if int(depth_multiplier) < 1:
            raise ValueError(f"depth_multiplier must be an integer >= 1, got {depth_multiplier}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if filters is not None and int(filters) < 1:
            raise ValueError(f"filters must be None or an integer >= 1, got {filters}")
        self.filters = None if filters is None else int(filters)
        self.rates = rates
        self.depth_multiplier = int(depth_multiplier)
        self.fusion = fusion
        self.impl = impl
        self.convs: list[keras.layers.SeparableConv2D] = []
        self.norms: list[keras.layers.BatchNormalization] = []
        self.projection: keras.layers.Conv2D | None = None

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("ASPP needs a known channel dimension")
        out_filters = self.filters or channels
        for rate in self.rates:
            conv = keras.layers.SeparableConv2D(
                out_filters,
                3,
                padding="same",
                dilation_rate=rate,
                depth_multiplier=self.depth_multiplier,
                use_bias=False,  # BatchNorm follows: a bias would be redundant.
                dtype=self.dtype_policy,
                name=f"sepconv_r{rate}",
            )
            conv.build(input_shape)
            norm = keras.layers.BatchNormalization(
                epsilon=1.001e-5, dtype=self.dtype_policy, name=f"bn_r{rate}"
            )
            norm.build(tuple(input_shape[:-1]) + (out_filters,))
            self.convs.append(conv)
            self.norms.append(norm)
        if self.fusion == "concat":
            self.projection = keras.layers.Conv2D(
                out_filters, 1, dtype=self.dtype_policy, name="projection"
            )
            self.projection.build(
                tuple(input_shape[:-1]) + (out_filters * len(self.rates),)
            )
        self._resolved_impl = resolve_impl(self.impl)
        self.built = True

    def _branch_conv(self, x, conv: keras.layers.SeparableConv2D, rate: int):
        if self._resolved_impl == "separable":
            return conv(x)
        # "dense": compose depthwise (h, w, c, m) and pointwise (1, 1, c*m, f) kernels.
        depthwise = ops.cast(conv.depthwise_kernel, self.compute_dtype)
        pointwise = ops.cast(conv.pointwise_kernel, self.compute_dtype)
        c = depthwise.shape[2]
        pointwise = ops.reshape(pointwise, (c, self.depth_multiplier, -1))
        kernel = ops.einsum("hwcm,cmf->hwcf", depthwise, pointwise)
        return ops.conv(x, kernel, strides=1, padding="same", dilation_rate=rate)

    def call(self, inputs, training=None):
        outputs = []
        for rate, conv, norm in zip(self.rates, self.convs, self.norms):
            y = self._branch_conv(inputs, conv, rate)
            y = norm(y, training=training)
            outputs.append(ops.relu(y))
        target = ops.shape(outputs[0])[1:3]
        outputs = [
            y
            if tuple(y.shape[1:3]) == tuple(outputs[0].shape[1:3])
            else ops.image.resize(y, target, interpolation="bilinear")
            for y in outputs
        ]
        if self.fusion == "max":
            fused = outputs[0]
            for y in outputs[1:]:
                fused = ops.maximum(fused, y)
            return fused
        if self.fusion == "sum":
            fused = outputs[0]
            for y in outputs[1:]:
                fused = fused + y
            return fused
        return self.projection(ops.concatenate(outputs, axis=-1))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "rates": list(self.rates),
                "depth_multiplier": self.depth_multiplier,
                "fusion": self.fusion,
                "impl": self.impl,
            }
        )
        return config

