"""Synthetic photo + mask sources for the photos-source tests (UAV75 layout)."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent


def draw_photo(seed: int, size: int = 96, crack: bool = True, joint: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A grey concrete-like photo with a dark diagonal crack (mask 255) in its left part and a dark
    horizontal planking joint (mask 204) in its lower part; mask channel 0 as uint8 [H, W]."""
    rng = np.random.default_rng(seed)
    image = rng.normal(150, 12, (size, size, 3)).clip(0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if crack:
        for t in range(size // 2):
            y, x = 4 + t, 4 + t // 2
            image[y, x : x + 2] = 40
            mask[y, x : x + 2] = 255
    if joint:
        row = size - 12
        image[row : row + 2] = 50
        mask[row : row + 2] = 204
    return image, mask


def write_source(root: pathlib.Path, splits: dict[str, int], size: int = 96, seed: int = 0, rgba_masks: bool = True,
                 crack: bool = True) -> pathlib.Path:
    """``root/<split>/{images,masks}`` with ``splits[split]`` photos each; returns ``root``."""
    for split, n in splits.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = draw_photo(seed * 1000 + sum(map(ord, split)) + i, size, crack=crack)
            Image.fromarray(image).save(root / split / "images" / f"p{i:02d}.png")
            m = np.stack([mask] * 3 + [np.full_like(mask, 255)], -1) if rgba_masks else mask
            Image.fromarray(m).save(root / split / "masks" / f"p{i:02d}.png")
    return root


def crops_module_at(commit: str, tmp_path: pathlib.Path):
    """crack_tf/data/crops.py as it was at ``commit``, from git history (the test skips without it):
    the reference that a new option, left off, must render the same crops as."""
    try:
        text = subprocess.run(["git", "show", f"{commit}:crack_tf/data/crops.py"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history ({commit}) not available")
    path = tmp_path / f"crops_{commit}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"crops_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
