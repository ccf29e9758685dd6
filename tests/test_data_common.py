"""Shared helpers for the data tests (no tests here): tiny image folders and planted bad files."""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image

from crack_tf import CLASS_NAMES


def rgb(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_folder(root: pathlib.Path, splits=("train", "val"), n: int = 6, size: int = 40) -> pathlib.Path:
    """``<root>/<split>/{crack,background}/*.png``; crack images are bright, background dark."""
    for s_i, split in enumerate(splits):
        for label, name in enumerate(CLASS_NAMES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rgb(1000 * s_i + 100 * label + i, size, size + 8)
                img = (img // 2 + 128 * label).astype(np.uint8)
                Image.fromarray(img).save(d / f"{name}_{i}.png")
    return root


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def plant_files(d: pathlib.Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Writes odd-but-valid files (name -> expected RGB) and bad files (names) into ``d``."""
    base = rgb(7, 36, 44)
    gray = base[..., 0]
    g16 = (gray.astype(np.uint16) * 256 + 3).astype(np.uint16)
    good = {
        "gray.png": (Image.fromarray(gray), "PNG", np.repeat(gray[..., None], 3, -1)),
        "rgba.png": (Image.fromarray(np.dstack([base, gray])), "PNG", base),
        "g16.png": (Image.fromarray(g16), "PNG", np.repeat(gray[..., None], 3, -1)),
        "pal.png": (Image.fromarray(base).quantize(16), "PNG", None),
        "upper.JPG": (Image.fromarray(base), "JPEG", None),
        "cmyk.jpeg": (Image.fromarray(base).convert("CMYK"), "JPEG", None),
        "tiff.TIF": (Image.fromarray(base), "TIFF", base),
        "bmp8.bmp": (Image.fromarray(gray), "BMP", np.repeat(gray[..., None], 3, -1)),
        "bmp24.bmp": (Image.fromarray(base), "BMP", base),
        "tiny_ok.png": (Image.fromarray(rgb(3, 9, 12)), "PNG", rgb(3, 9, 12)),
    }
    expected = {}
    for name, (img, fmt, exp) in good.items():
        (d / name).write_bytes(_save(img, fmt))
        expected[name] = exp
    png = _save(Image.fromarray(base), "PNG")
    jpg = _save(Image.fromarray(base), "JPEG")
    bad = {
        "zero.png": b"",
        "garbage.png": bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)),
        "text.jpg": b"this is not an image\n",
        "trunc.png": png[: len(png) // 2],
        "trunc.jpg": jpg[: len(jpg) // 2],
        "tiny.png": _save(Image.fromarray(rgb(4, 3, 5)), "PNG"),
        "huge.png": _save(Image.fromarray(rgb(5, 300, 400)), "PNG"),
        "notes.txt": b"hello",
    }
    for name, data in bad.items():
        (d / name).write_bytes(data)
    (d / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored, not reported
    return expected, list(bad)
