"""Plain-PyTorch twin of ``crack_tf.models.build_model`` (ResNet50 [+ ASPP], Keras layout).

Matches ``keras.applications.ResNet50`` v1 exactly: caffe preprocessing (RGB->BGR minus
the ImageNet mean) inside the model, 3 px zero padding before ``conv1``, 1 px zero
padding before ``pool1``, the stride-2 on the first 1x1 conv of each downsampling block
(and its shortcut), biases on every conv, BatchNorm epsilon 1.001e-5, then
GlobalAveragePooling + Dense. Sub-modules are named after the Keras layers so
:func:`load_keras_weights` copies weights by layer name. Used as the parity reference
(``tests/parity/test_torch_reference.py``) and as the PyTorch side of
``tools/benchmark.py``. Input: float NCHW raw 0-255 RGB; output: float32 logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crack_tf.models.resnet_aspp import STAGE_CHANNELS, STAGE_ENDS  # Keras' names and widths

BN_EPS = 1.001e-5
STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)  # Keras momentum 0.99


class TorchASPP(nn.Module):
    """ASPP twin: per rate a dilated depthwise 3x3 (multiplier m) + pointwise 1x1, BN, ReLU."""

    def __init__(self, channels: int, rates: Sequence[int] = (2, 4, 8), depth_multiplier: int = 4,
                 fusion: str = "max", impl: str = "separable"):
        super().__init__()
        if impl not in ("separable", "dense"):
            raise ValueError(f"impl must be 'separable' or 'dense', got {impl!r}")
        self.rates, self.m, self.fusion, self.impl = tuple(rates), depth_multiplier, fusion, impl
        cm = channels * depth_multiplier
        self.depthwise = nn.ModuleList(
            nn.Conv2d(channels, cm, 3, padding=r, dilation=r, groups=channels, bias=False) for r in rates
        )
        self.pointwise = nn.ModuleList(nn.Conv2d(cm, channels, 1, bias=False) for _ in rates)
        self.norms = nn.ModuleList(_bn(channels) for _ in rates)
        self.projection = nn.Conv2d(channels * len(rates), channels, 1) if fusion == "concat" else None

    def _branch(self, x: torch.Tensor, i: int) -> torch.Tensor:
        dw, pw, r = self.depthwise[i], self.pointwise[i], self.rates[i]
        if self.impl == "separable":
            return pw(dw(x))
        # Dense: K[f, c, h, w] = sum_j P[f, c*m + j] * D[c*m + j, 0, h, w].
        c = x.shape[1]
        p = pw.weight.reshape(-1, c, self.m)
        d = dw.weight.reshape(c, self.m, 3, 3)
        kernel = torch.einsum("fcj,cjhw->fchw", p, d)
        return F.conv2d(x, kernel, padding=r, dilation=r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [F.relu(norm(self._branch(x, i))) for i, norm in enumerate(self.norms)]
        if self.fusion == "max":
            return torch.stack(outs).amax(0)
        if self.fusion == "sum":
            return torch.stack(outs).sum(0)
        return self.projection(torch.cat(outs, 1))


class TorchResNetASPP(nn.Module):
    """ResNet50 (Keras v1 layout) with an optional ASPP after ``insert_after``."""

    def __init__(self, insert_after: str | None = "layer1", rates: Sequence[int] = (2, 4, 8),
                 depth_multiplier: int = 4, fusion: str = "max", num_classes: int = 2,
                 aspp_impl: str = "separable"):
        super().__init__()
        if insert_after is not None and insert_after not in STAGE_ENDS:
            raise ValueError(f"insert_after must be one of {sorted(STAGE_ENDS)} or None")
        self.insert_after = insert_after
        self.register_buffer("mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        L = nn.ModuleDict()  # Keras layer name -> module
        L["conv1_conv"], L["conv1_bn"] = nn.Conv2d(3, 64, 7, stride=2), _bn(64)
        self.blocks: list[tuple[str, int, bool]] = []  # (prefix, stride, conv_shortcut)
        cin = 64
        for stage, filters, n_blocks, stride in STAGES:
            for b in range(1, n_blocks + 1):
                prefix, s = f"{stage}_block{b}", (stride if b == 1 else 1)
                if b == 1:
                    L[f"{prefix}_0_conv"], L[f"{prefix}_0_bn"] = nn.Conv2d(cin, 4 * filters, 1, stride=s), _bn(4 * filters)
                L[f"{prefix}_1_conv"], L[f"{prefix}_1_bn"] = nn.Conv2d(cin, filters, 1, stride=s), _bn(filters)
                L[f"{prefix}_2_conv"], L[f"{prefix}_2_bn"] = nn.Conv2d(filters, filters, 3, padding=1), _bn(filters)
                L[f"{prefix}_3_conv"], L[f"{prefix}_3_bn"] = nn.Conv2d(filters, 4 * filters, 1), _bn(4 * filters)
                self.blocks.append((prefix, s, b == 1))
                cin = 4 * filters
        self.layers = L
        self.aspp = (
            TorchASPP(STAGE_CHANNELS[insert_after], rates, depth_multiplier, fusion, aspp_impl)
            if insert_after is not None else None
        )
        self.logits = nn.Linear(2048, num_classes)

    def _maybe_aspp(self, x: torch.Tensor, layer_name: str) -> torch.Tensor:
        if self.aspp is not None and STAGE_ENDS[self.insert_after] == layer_name:
            return self.aspp(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = self.layers
        x = x.float().flip(1) - self.mean  # RGB -> BGR minus mean (caffe)
        x = F.pad(x, (3, 3, 3, 3))
        x = F.relu(L["conv1_bn"](L["conv1_conv"](x)))
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)  # zero pad, like ZeroPadding2D
        x = self._maybe_aspp(x, "pool1_pool")
        for prefix, _, conv_shortcut in self.blocks:
            shortcut = L[f"{prefix}_0_bn"](L[f"{prefix}_0_conv"](x)) if conv_shortcut else x
            y = F.relu(L[f"{prefix}_1_bn"](L[f"{prefix}_1_conv"](x)))
            y = F.relu(L[f"{prefix}_2_bn"](L[f"{prefix}_2_conv"](y)))
            y = L[f"{prefix}_3_bn"](L[f"{prefix}_3_conv"](y))
            x = self._maybe_aspp(F.relu(shortcut + y), f"{prefix}_out")
        return self.logits(x.mean((2, 3))).float()


def keras_layers_by_name(model) -> dict:
    """Every weight-bearing Keras layer, nested models flattened, ASPP parts as
    ``"<aspp name>/sepconv_r2"`` etc."""
    out: dict = {}
    for layer in model.layers:
        if hasattr(layer, "layers") and not hasattr(layer, "rates"):  # nested model
            out.update(keras_layers_by_name(layer))
        elif hasattr(layer, "rates"):  # crack_tf ASPP
            out[layer.name] = layer
        elif layer.weights:
            out[layer.name] = layer
    return out


def _put(param: torch.Tensor, value) -> None:
    value = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"shape mismatch: torch {tuple(param.shape)} vs keras {tuple(value.shape)}")
    with torch.no_grad():
        param.copy_(value)


def _copy_bn(bn: nn.BatchNorm2d, layer) -> None:
    gamma, beta, mean, var = layer.get_weights()
    _put(bn.weight, gamma)
    _put(bn.bias, beta)
    _put(bn.running_mean, mean)
    _put(bn.running_var, var)


def _copy_conv(conv: nn.Conv2d, layer) -> None:
    weights = layer.get_weights()
    _put(conv.weight, np.transpose(weights[0], (3, 2, 0, 1)))  # HWIO -> OIHW
    if conv.bias is not None:
        _put(conv.bias, weights[1])


def load_keras_weights(torch_model: TorchResNetASPP, keras_model) -> TorchResNetASPP:
    """Copies a crack_tf Keras model's weights into ``torch_model`` by layer name."""
    layers = keras_layers_by_name(keras_model)
    for name, module in torch_model.layers.items():
        if name not in layers:
            raise KeyError(f"Keras model has no layer {name!r}")
        (_copy_bn if isinstance(module, nn.BatchNorm2d) else _copy_conv)(module, layers[name])
    kernel, bias = layers["logits"].get_weights()
    _put(torch_model.logits.weight, kernel.T)
    _put(torch_model.logits.bias, bias)
    if torch_model.aspp is not None:
        aspp = [layer for layer in layers.values() if hasattr(layer, "rates")]
        if len(aspp) != 1:
            raise KeyError(f"expected one ASPP layer in the Keras model, found {len(aspp)}")
        aspp, t = aspp[0], torch_model.aspp
        for i, (conv, norm) in enumerate(zip(aspp.convs, aspp.norms)):
            depthwise, pointwise = (np.asarray(w) for w in conv.get_weights())  # [3,3,C,m], [1,1,Cm,F]
            h, w, c, m = depthwise.shape
            _put(t.depthwise[i].weight, depthwise.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w))
            _put(t.pointwise[i].weight, pointwise.transpose(3, 2, 0, 1))
            _copy_bn(t.norms[i], norm)
        if t.projection is not None:
            _copy_conv(t.projection, aspp.projection)
    return torch_model


def aspp_macs_per_pixel(channels: int, rates: int = 3, depth_multiplier: int = 4) -> dict:
    """Multiply-accumulates per output pixel of the ASPP, separable vs composed dense."""
    separable = rates * (9 * channels * depth_multiplier + channels * depth_multiplier * channels)
    return {"separable": separable, "dense": rates * 9 * channels * channels}
