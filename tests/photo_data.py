"""Synthetic photo + mask sources for the photos-source tests (UAV75 layout)."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


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
