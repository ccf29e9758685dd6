"""Atrous Spatial Pyramid Pooling (ASPP) built from dilated depthwise-separable convs.

The layer follows the paper summarised in ``shared/PAPER.md``: one branch per atrous
rate, each a 3x3 dilated depthwise-separable convolution (depthwise with a channel
multiplier ``m`` -- the paper's "out" -- then a pointwise 1x1), followed by
BatchNorm and ReLU. Branch outputs are resized bilinearly to a common size (a no-op
with ``padding="same"`` and stride 1) and fused.

The code is backend-agnostic (``keras.ops`` only) so the model runs on the
TensorFlow, JAX and PyTorch backends.

Implementations (``impl``) compute the same function from the same weights
(``docs/PERFORMANCE.md`` has the measurements behind them):

* ``"separable"`` -- the textbook path, ``SeparableConv2D`` per branch.
* ``"dense"`` -- each branch's depthwise and pointwise kernels are composed into one
  dense dilated 3x3 kernel ``K[h, w, c, f] = sum_m D[h, w, c, m] * P[c, m, f]`` at every
  call (in the variable dtype, then cast) and applied with a single ``keras.ops.conv``.
  9/m times the pointwise FLOPs, but one dense conv on matrix units, while dilated
  depthwise convs with a channel multiplier have slow kernels (mostly the backward pass)
  on GPUs.
* ``"dense_s2b"`` -- ``"dense"`` on a space-to-batch layout: a rate-``r`` dilated conv
  on ``HxW`` is an undilated conv on the ``r*r`` phase sub-images of size
  ``H/r x W/r`` (exact with zero padding; spatial dims padded to a multiple of ``r``).
* ``"separable_s2b"`` -- undilated depthwise conv on the space-to-batch layout, then the
  pointwise 1x1 as a matmul.
* ``"taps"`` -- the depthwise conv as 9 shifted multiply-adds per branch, all reading one
  zero-padded copy of the input (one shared read for every branch; XLA fuses the taps
  into one elementwise kernel), then the pointwise 1x1 as a matmul. Separable FLOPs, no
  depthwise conv kernel at all.
* ``"auto"`` -- the fastest measured formulation for the device (see :func:`resolve_impl`).

The space-to-batch impls need static spatial dims at call time and otherwise fall back
to their dilated twins (same function). The checkpoint format does not depend on
``impl``: the weights always live in the ``SeparableConv2D`` sub-layers, so a model
trained with one ``impl`` loads with another.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from crack_tf.choices import ASPP_IMPLS as IMPLS
from crack_tf.choices import FUSIONS

#: What ``impl="auto"`` runs on CPUs in float32 (measured with TF on 2 AMD EPYC cores).
CPU_IMPL = "separable"


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


def resolve_impl(impl: str, compute_dtype: str = "float32") -> str:
    """Maps ``"auto"`` to the fastest implementation measured for this device and dtype.

    GPU/TPU: ``"dense_s2b"`` (H200, JAX, bf16, batch 128: full-model training 3876 img/s
    against 3217 for ``"dense"``, 2404 for ``"taps"`` and ~10x slower for ``"separable"``;
    inference within 3% of ``"dense"``). CPU (TF, oneDNN): ``"dense_s2b"`` in bfloat16,
    where the dense convs use the bf16 dot-product instructions (ASPP train step 1.63 s vs
    2.36 s separable, inference 0.57 s vs 0.91 s, batch 8 at 56x56x256), ``"separable"`` in
    float32 (train level, inference 0.91 s vs 1.25 s: the 2.25x FLOPs of a dense kernel do
    not pay). Numbers and commands in ``docs/PERFORMANCE.md``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if _accelerator_present():
        return "dense_s2b"
    return "dense_s2b" if "bfloat16" in str(compute_dtype) else CPU_IMPL


def _static_hw(x) -> tuple[int, int] | None:
    h, w = x.shape[1], x.shape[2]
    return (int(h), int(w)) if h is not None and w is not None else None


def _space_to_batch(x, rate: int, hw: tuple[int, int]):
    """[B, H, W, C] -> [r*r*B, ceil(H/r), ceil(W/r), C] phase sub-images (zero padded)."""
    h, w = hw
    hp, wp = -(-h // rate) * rate, -(-w // rate) * rate
    if (hp, wp) != (h, w):
        x = ops.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    c = x.shape[-1]
    x = ops.reshape(x, (-1, hp // rate, rate, wp // rate, rate, c))
    x = ops.transpose(x, (2, 4, 0, 1, 3, 5))
    return ops.reshape(x, (-1, hp // rate, wp // rate, c))


def _batch_to_space(y, rate: int, hw: tuple[int, int]):
    """Inverse of :func:`_space_to_batch`, cropped back to ``hw``."""
    h, w = hw
    hs, ws, f = y.shape[1], y.shape[2], y.shape[-1]
    y = ops.reshape(y, (rate, rate, -1, hs, ws, f))
    y = ops.transpose(y, (2, 3, 0, 4, 1, 5))
    y = ops.reshape(y, (-1, hs * rate, ws * rate, f))
    if (hs * rate, ws * rate) != (h, w):
        y = y[:, :h, :w, :]
    return y


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
        impl: one of ``IMPLS`` (see module docstring).
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
        self._resolved_impl = resolve_impl(self.impl, self.compute_dtype)
        self.built = True

    # -- kernels ------------------------------------------------------------------
    def _kernels(self, conv: keras.layers.SeparableConv2D):
        """(depthwise [3,3,C,m], pointwise [C*m, F]) in the compute dtype."""
        depthwise = ops.cast(conv.depthwise_kernel, self.compute_dtype)
        pointwise = ops.cast(conv.pointwise_kernel, self.compute_dtype)
        return depthwise, ops.reshape(pointwise, (-1, pointwise.shape[-1]))

    def _dense_kernel(self, conv: keras.layers.SeparableConv2D):
        """K[h, w, c, f] = sum_m D[h, w, c, m] P[c, m, f], composed in the variable dtype."""
        depthwise = ops.convert_to_tensor(conv.depthwise_kernel)
        pointwise = ops.convert_to_tensor(conv.pointwise_kernel)
        c = depthwise.shape[2]
        pointwise = ops.reshape(pointwise, (c, self.depth_multiplier, -1))
        kernel = ops.einsum("hwcm,cmf->hwcf", depthwise, pointwise)
        return ops.cast(kernel, self.compute_dtype)

    def _pointwise(self, z, pointwise):
        return ops.matmul(z, pointwise)  # [..., C*m] @ [C*m, F]

    def _branches(self, x) -> list:
        """Pre-BatchNorm output of every branch, by the resolved implementation."""
        impl = self._resolved_impl
        hw = _static_hw(x)
        if impl in ("dense_s2b", "separable_s2b") and hw is None:
            impl = "dense" if impl == "dense_s2b" else "separable"
        if impl == "separable":
            return [conv(x) for conv in self.convs]
        if impl == "dense":
            return [
                ops.conv(x, self._dense_kernel(conv), strides=1, padding="same", dilation_rate=rate)
                for rate, conv in zip(self.rates, self.convs)
            ]
        if impl == "taps":
            return self._taps(x)
        outs = []
        for rate, conv in zip(self.rates, self.convs):
            xs = _space_to_batch(x, rate, hw) if rate > 1 else x
            if impl == "dense_s2b":
                y = ops.conv(xs, self._dense_kernel(conv), strides=1, padding="same")
            else:
                depthwise, pointwise = self._kernels(conv)
                z = ops.depthwise_conv(xs, depthwise, strides=1, padding="same")
                y = self._pointwise(z, pointwise)
            outs.append(_batch_to_space(y, rate, hw) if rate > 1 else y)
        return outs

    def _taps(self, x) -> list:
        """Depthwise as 9 shifted multiply-adds from one shared zero-padded input."""
        pad = max(self.rates)
        shape = ops.shape(x)
        h, w = shape[1], shape[2]
        xp = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        m = self.depth_multiplier
        outs = []
        for rate, conv in zip(self.rates, self.convs):
            depthwise, pointwise = self._kernels(conv)  # [3,3,C,m], [C*m, F]
            z = None
            for i in range(3):
                for j in range(3):
                    top, left = pad + (i - 1) * rate, pad + (j - 1) * rate
                    tap = xp[:, top : top + h, left : left + w, :, None]
                    term = tap * depthwise[i, j]  # [B,H,W,C,1] * [C,m]
                    z = term if z is None else z + term
            z = ops.reshape(z, (shape[0], h, w, x.shape[-1] * m))
            outs.append(self._pointwise(z, pointwise))
        return outs

    def call(self, inputs, training=None):
        outputs = []
        for y, norm in zip(self._branches(inputs), self.norms):
            outputs.append(ops.relu(norm(y, training=training)))
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
