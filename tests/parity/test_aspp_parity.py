"""ASPP numeric parity against an independent PyTorch reference (float32, atol 1e-4).

The reference is written from the paper's description only: per atrous rate a 3x3
dilated depthwise conv (channel multiplier m, Keras channel order c*m + k) + 1x1
pointwise conv (no bias) + inference-mode BatchNorm + ReLU, then max / sum / concat
(+ 1x1 projection with bias) fusion. The weights are copied from the Keras layer.
"""

from __future__ import annotations

import zlib

import keras
import numpy as np
import pytest

from crack_tf.models.aspp import ASPP

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = [
    pytest.mark.parity,
    # Keras' own NumPy conversion of TF variables (not this code) emits it.
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

ATOL = 1e-4

# (height, width, channels, depth multiplier, filters) -- non-square and F != C included.
SHAPES = [
    (13, 17, 8, 2, None),
    (13, 17, 8, 4, 6),
    (16, 16, 4, 1, None),
]


def _randomize(layer: ASPP, rng: np.random.Generator) -> None:
    """Non-trivial BN statistics / affine params and projection bias (kernels stay random)."""
    for norm in layer.norms:
        n = norm.gamma.shape[0]
        norm.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
        norm.beta.assign(rng.normal(0.0, 0.5, n).astype("float32"))
        norm.moving_mean.assign(rng.normal(0.0, 0.5, n).astype("float32"))
        norm.moving_variance.assign(rng.uniform(0.3, 2.0, n).astype("float32"))
    if layer.projection is not None:
        bias = layer.projection.bias
        bias.assign(rng.normal(0.0, 0.5, bias.shape).astype("float32"))


def _t(value) -> torch.Tensor:
    return torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32))


def _torch_reference(layer: ASPP, x_nhwc: np.ndarray, rates, fusion: str) -> np.ndarray:
    """Independent PyTorch forward pass of the ASPP layer's function (NCHW internally)."""
    x = _t(x_nhwc).permute(0, 3, 1, 2)
    channels = x.shape[1]
    branches = []
    for i, rate in enumerate(rates):
        conv, norm = layer.convs[i], layer.norms[i]
        assert tuple(conv.dilation_rate) == (rate, rate), "branch order must follow rates"
        dw = _t(conv.depthwise_kernel)  # (3, 3, C, m)
        m = dw.shape[3]
        # Keras depthwise output channel c*m + k <- torch group c, output k within it.
        dw_t = dw.permute(2, 3, 0, 1).reshape(channels * m, 1, 3, 3)
        y = F.conv2d(x, dw_t, bias=None, stride=1, padding=rate, dilation=rate, groups=channels)
        pw = _t(conv.pointwise_kernel)  # (1, 1, C*m, filters)
        y = F.conv2d(y, pw[0, 0].t()[:, :, None, None])
        mean, var = _t(norm.moving_mean), _t(norm.moving_variance)
        gamma, beta = _t(norm.gamma), _t(norm.beta)
        y = (y - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + norm.epsilon)
        y = y * gamma[None, :, None, None] + beta[None, :, None, None]
        branches.append(torch.relu(y))
    if fusion == "max":
        out = branches[0]
        for y in branches[1:]:
            out = torch.maximum(out, y)
    elif fusion == "sum":
        out = torch.stack(branches).sum(0)
    else:
        proj_k = _t(layer.projection.kernel)  # (1, 1, filters*len(rates), filters)
        out = F.conv2d(
            torch.cat(branches, dim=1),
            proj_k[0, 0].t()[:, :, None, None],
            bias=_t(layer.projection.bias),
        )
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("impl", ["separable", "dense"])
@pytest.mark.parametrize("fusion", ["max", "sum", "concat"])
@pytest.mark.parametrize("rates", [(2, 4, 8), (1, 3)], ids=["r248", "r13"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(str(v) for v in s))
def test_aspp_matches_torch_reference(impl, fusion, rates, shape):
    height, width, channels, m, filters = shape
    rng = np.random.default_rng(zlib.crc32(repr((impl, fusion, rates, shape)).encode()))
    layer = ASPP(filters=filters, rates=rates, depth_multiplier=m, fusion=fusion, impl=impl)
    layer.build((None, height, width, channels))
    _randomize(layer, rng)
    x = rng.normal(size=(2, height, width, channels)).astype("float32")

    got = np.asarray(layer(x, training=False))
    want = _torch_reference(layer, x, rates, fusion)

    out_filters = filters or channels
    assert got.shape == want.shape == (2, height, width, out_filters)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    # Guard against a vacuous comparison (e.g. everything ReLU'd to zero).
    assert np.std(want) > 0.1
    if fusion != "concat":
        assert np.mean(want > 0) > 0.2


def test_reference_detects_wrong_channel_order():
    """Sanity check of the test itself: the c*m + k order matters for m > 1."""
    rng = np.random.default_rng(1)
    layer = ASPP(rates=(2,), depth_multiplier=2, fusion="sum", impl="separable")
    layer.build((None, 9, 11, 4))
    _randomize(layer, rng)
    x = rng.normal(size=(1, 9, 11, 4)).astype("float32")
    got = np.asarray(layer(x, training=False))
    dw = keras.ops.convert_to_numpy(layer.convs[0].depthwise_kernel)
    # Reinterpret the flat c*m + k order as k*C + c: the reference must then disagree.
    wrong = dw.reshape(3, 3, 8).reshape(3, 3, 2, 4).transpose(0, 1, 3, 2)
    assert not np.allclose(wrong, dw)
    layer.convs[0].depthwise_kernel.assign(wrong)
    want_wrong = _torch_reference(layer, x, (2,), "sum")
    layer.convs[0].depthwise_kernel.assign(dw)
    assert np.max(np.abs(got - want_wrong)) > 1e-2
    np.testing.assert_allclose(got, _torch_reference(layer, x, (2,), "sum"), rtol=0, atol=ATOL)
