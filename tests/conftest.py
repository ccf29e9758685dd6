"""Shared pytest set-up: quiet TF logs, markers, seeds and paths to shared data."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tests.gpu_job_tree import job_tree  # noqa: E402, F401 - the GPU job tests' fixture

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "parity: compares against an independent PyTorch reference")
    config.addinivalue_line("markers", "slow: takes 2 s or more on 2 CPU cores; the quick run (pytest -m \"not slow\") leaves it out")
    config.addinivalue_line("markers", "shared_data: reads ../shared/data")


@pytest.fixture
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A fixed 32-px "darkness" crack detector (tests/test_heatmap.py) saved as .keras with an
    operating threshold of 0.42 stored in it."""
    from crack_tf.model_meta import write_metadata
    from tests.test_heatmap import darkness_model

    path = tmp_path_factory.mktemp("model") / "dark.keras"
    darkness_model(32).save(path)
    write_metadata(str(path), {"operating_point": {"threshold": 0.42, "temperature": 1.0, "rule": "f1"}})
    return path
