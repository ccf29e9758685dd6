"""The learning-rate schedule against Keras' CosineDecay, and its host-side twin."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from crack_tf.training.optim import WarmupDecay


def test_cosine_equals_keras_after_the_warm_up_and_differs_in_it():
    """Why the schedule is hand-written: Keras' warm-up starts at 0 (a step without any update)
    and reaches the peak one step later; after the warm-up the two are the same numbers."""
    ours = WarmupDecay(1e-3, 100, "cosine", warmup_steps=10)
    lib = keras.optimizers.schedules.CosineDecay(0.0, 90, alpha=0.0, warmup_target=1e-3, warmup_steps=10)
    lib_at = lambda s: float(keras.ops.convert_to_numpy(lib(s)))  # noqa: E731
    for step in range(10, 101, 7):
        assert ours.value(step) == pytest.approx(lib_at(step), rel=1e-6, abs=1e-12)
    assert lib_at(0) == 0.0 and ours.value(0) == pytest.approx(1e-4)  # step 0 trains here, not there
    assert ours.value(9) == pytest.approx(1e-3) and lib_at(9) == pytest.approx(9e-4)


@pytest.mark.parametrize("kind", ["constant", "step", "exponential", "cosine"])
def test_host_side_value_equals_the_schedule_in_the_step(kind):
    schedule = WarmupDecay(2e-3, 200, kind, warmup_steps=20, decay_rate=0.5, decay_steps=30)
    steps = np.arange(0, 230, 11)
    in_step = [float(keras.ops.convert_to_numpy(schedule(s))) for s in steps]
    np.testing.assert_allclose([schedule.value(s) for s in steps], in_step, rtol=1e-6)
