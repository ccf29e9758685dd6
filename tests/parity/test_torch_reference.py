"""tools/torch_reference.py computes the same logits as the Keras model (float32, eval)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crack_tf.models import build_model  # noqa: E402
from tools.torch_reference import TorchResNetASPP, keras_layers_by_name, load_keras_weights  # noqa: E402

pytestmark = pytest.mark.parity
SIZE = 64


def _randomize_bn(model, rng: np.random.Generator) -> None:
    """Non-trivial BatchNorm parameters and moving statistics on every BN layer."""
    for layer in keras_layers_by_name(model).values():
        norms = getattr(layer, "norms", None) or ([layer] if "BatchNormalization" in type(layer).__name__ else [])
        for norm in norms:
            c = norm.gamma.shape[0]
            norm.set_weights([
                rng.uniform(0.6, 1.2, c), rng.normal(0.0, 0.1, c),
                rng.normal(0.0, 0.2, c), rng.uniform(0.5, 2.0, c),
            ])


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.slow
@pytest.mark.parametrize("insert_after", [None, "conv1", "layer1", "layer2", "layer3", "layer4"])
def test_logits_match_keras(insert_after, images):
    rng = np.random.default_rng(0)
    keras_model = build_model((SIZE, SIZE, 3), insert_after=insert_after, aspp_impl="separable")
    _randomize_bn(keras_model, rng)
    expected = np.asarray(keras_model(images, training=False))

    torch_model = TorchResNetASPP(insert_after=insert_after).eval()
    load_keras_weights(torch_model, keras_model)
    with torch.no_grad():
        got = torch_model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
        torch_model.aspp is not None and setattr(torch_model.aspp, "impl", "dense")
        got_dense = torch_model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    assert got.shape == expected.shape == (2, 2)
    assert np.abs(expected).max() > 1e-3, "degenerate logits would hide a mismatch"
    np.testing.assert_allclose(got, expected, atol=1e-3 * scale, rtol=0)
    np.testing.assert_allclose(got_dense, expected, atol=1e-3 * scale, rtol=0)


def test_missing_layer_is_reported():
    keras_model = build_model((32, 32, 3), insert_after=None)
    with pytest.raises(KeyError, match="ASPP"):
        load_keras_weights(TorchResNetASPP(insert_after="layer1"), keras_model)
