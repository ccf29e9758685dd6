"""Shared pytest set-up: quiet TF logs, markers, seeds and paths to shared data."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

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
