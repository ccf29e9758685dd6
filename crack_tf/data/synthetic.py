"""Deterministic synthetic concrete tiles with and without cracks.

The embedded default dataset for a first run and for tests: no download, no licence,
a few seconds to generate. Each tile is concrete-like texture (multi-scale noise,
aggregate speckles and pores), optional stains, a soft shadow and, for hard negatives,
straight formwork joints; crack tiles add one or two thin, dark, branching random-walk
cracks of varying width. Every tile is a pure function of ``(seed, split, class, index)``.

Written as an image folder ``<root>/<split>/{crack,background}/<split>_<class>_<i>.png``.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from crack_tf.choices import CLASS_NAMES

_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}
_MARKER = "synthetic.json"


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _concrete(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey concrete texture, float32 HxWx3 in 0..255."""
    base = rng.uniform(105, 185)
    tint = rng.uniform(-6, 6, 3)
    gray = base + 14 * _smooth_noise(rng, size, 4) + 8 * _smooth_noise(rng, size, 12)
    gray += rng.normal(0, rng.uniform(4, 9), (size, size))  # fine grain
    # Pores and aggregate speckles: sparse dark and light dots.
    for sign, density in ((-1, 0.004), (1, 0.003)):
        dots = rng.random((size, size)) < density
        gray += sign * dots * rng.uniform(20, 45)
    if rng.random() < 0.5:  # stain: a large soft blob, darker or lighter
        yy, xx = np.mgrid[0:size, 0:size]
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(0.15, 0.5) * size
        blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)))
        gray += rng.choice([-1, 1]) * rng.uniform(10, 30) * blob
    if rng.random() < 0.4:  # shadow: a soft darkening across a half-plane
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        gray -= rng.uniform(15, 40) / (1 + np.exp(-ramp * rng.uniform(8, 25)))
    img = gray[..., None] + tint[None, None, :]
    return img.astype(np.float32)


def _draw_joint(rng: np.random.Generator, mask: ImageDraw.ImageDraw, size: int) -> None:
    """A straight formwork joint: a hard negative that looks a little like a crack."""
    if rng.random() < 0.5:
        x = rng.uniform(0.1, 0.9) * size
        mask.line([(x, 0), (x + rng.normal(0, 2), size)], fill=int(rng.uniform(60, 110)), width=2)
    else:
        y = rng.uniform(0.1, 0.9) * size
        mask.line([(0, y), (size, y + rng.normal(0, 2))], fill=int(rng.uniform(60, 110)), width=2)


def _draw_crack(rng: np.random.Generator, mask: ImageDraw.ImageDraw, size: int, scale: int) -> None:
    """A branching random-walk crack drawn into a ``scale``-times supersampled mask."""
    big = size * scale
    # Start in the central region so most of the crack stays inside the tile.
    start = rng.uniform(0.2, 0.8, 2) * big
    angle = rng.uniform(0, 2 * np.pi)
    walkers = [(start, angle, rng.uniform(1.0, 3.2) * scale, big * rng.uniform(0.7, 1.4))]
    depth = 0
    while walkers and depth < 4:
        next_walkers = []
        for pos, heading, width, length in walkers:
            travelled = 0.0
            points = [tuple(pos)]
            while travelled < length:
                heading += rng.normal(0, 0.35)
                step = rng.uniform(0.03, 0.07) * big
                pos = pos + step * np.array([np.cos(heading), np.sin(heading)])
                points.append(tuple(pos))
                travelled += step
                width = float(np.clip(width * rng.uniform(0.85, 1.12), 0.8 * scale, 4 * scale))
                if rng.random() < 0.06 and depth < 3:  # branch
                    side = rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
                    next_walkers.append((pos.copy(), heading + side, width * 0.6, length * 0.4))
                if len(points) >= 2:
                    mask.line(points[-2:], fill=255, width=max(1, int(round(width))))
        walkers = next_walkers
        depth += 1


def make_tile(seed: int, split: str, label: int, index: int, size: int = 64) -> np.ndarray:
    """One synthetic tile (uint8 HxWx3). ``label`` 1 = crack, 0 = background."""
    rng = np.random.default_rng([seed, _SPLIT_IDS.get(split, 9), label, index])
    img = _concrete(rng, size)
    scale = 4  # supersampling for anti-aliased thin lines
    mask_img = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(mask_img)
    joint_img = Image.new("L", (size, size), 0)
    if rng.random() < 0.2:
        _draw_joint(rng, ImageDraw.Draw(joint_img), size)
    if label == 1:
        for _ in range(1 if rng.random() < 0.7 else 2):
            _draw_crack(rng, draw, size, scale)
    mask = np.asarray(
        mask_img.filter(ImageFilter.GaussianBlur(scale * 0.4)).resize((size, size), Image.BILINEAR),
        dtype=np.float32,
    ) / 255.0
    joint = np.asarray(joint_img, dtype=np.float32) / 255.0
    darkness = rng.uniform(0.45, 0.75)
    img = img * (1 - darkness * np.clip(mask, 0, 1))[..., None]
    img = img * (1 - 0.35 * joint)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_dataset(
    root: str | os.PathLike,
    n_train: int = 600,
    n_val: int = 200,
    size: int = 64,
    seed: int = 0,
    verbose: bool = False,
) -> pathlib.Path:
    """Writes a balanced synthetic image folder and returns ``root``.

    ``n_train`` / ``n_val`` are tiles per split (half crack, half background). A finished
    folder with the same parameters is reused (a ``synthetic.json`` marker records them).
    Safe when several processes (the workers of one multi-process run) generate the same
    folder at once: each file is written under a private name and moved into place, so a
    reader never sees a half-written tile (every writer produces the same bytes).
    """
    root = pathlib.Path(root)
    params = {"n_train": n_train, "n_val": n_val, "size": size, "seed": seed, "version": 1}
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    scratch = root / f".partial-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        for split, count in (("train", n_train), ("val", n_val)):
            for label, class_name in enumerate(CLASS_NAMES):
                folder = root / split / class_name
                folder.mkdir(parents=True, exist_ok=True)
                n_class = count // 2 + (count % 2 if label == 1 else 0)
                for i in range(n_class):
                    name = f"{split}_{class_name}_{i:05d}.png"
                    Image.fromarray(make_tile(seed, split, label, i, size)).save(scratch / name)
                    os.replace(scratch / name, folder / name)
            if verbose:
                print(f"synthetic: wrote {count} {split} tiles of {size}x{size} to {root / split}")
        (scratch / _MARKER).write_text(json.dumps(params))
        os.replace(scratch / _MARKER, marker)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root
