"""Reading inspection photos for the batch commands (heatmap, predict, report) without losing a batch.

* :func:`read_photo`: any Pillow-readable file -> RGB uint8 [H, W, 3], **EXIF orientation applied**
  (a drone photo is shown the way its camera meant it), grayscale / CMYK / palette / 16-bit
  converted. A photo over ``max_megapixels`` (default: Pillow's decompression-bomb limit) is
  refused with that reason before anything is decoded; raise the limit to process it (memory
  is then ~3 bytes per pixel for the photo plus the bounded per-window work).
* :class:`Failures`: the files a batch command could not process, each with its reason; printed
  at the end, and the command exits with 1 when there were any (0 when none). ``--fail_fast``
  makes the first one stop the command instead.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
from PIL import Image, ImageOps

from crack_tf.data.image_np import pil_to_rgb

PIL_BOMB_MEGAPIXELS = 89.478485  # Pillow's default Image.MAX_IMAGE_PIXELS, in megapixels


class PhotoError(ValueError):
    """A photo that cannot be processed (unreadable, unsupported, too large)."""


def photo_size(path: str) -> tuple[int, int]:
    """(width, height) as stored, from the header only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            return img.size


def read_photo(path: str, max_megapixels: float = PIL_BOMB_MEGAPIXELS, exif: bool = True) -> np.ndarray:
    """RGB uint8 pixels of ``path`` with its EXIF orientation applied (``exif=False``: as stored,
    e.g. to line up with a mask drawn on the stored pixels); raises PhotoError."""
    if not os.path.isfile(path):
        raise PhotoError(f"{path}: no such file")
    try:
        w, h = photo_size(path)
    except Exception as e:  # noqa: BLE001 - not an image Pillow knows
        raise PhotoError(f"{path}: cannot read this photo ({type(e).__name__}: {str(e)[:100]})") from e
    if w * h / 1e6 > max_megapixels:
        raise PhotoError(f"{path}: {w}x{h} = {w * h / 1e6:.0f} MP is over --max_megapixels={max_megapixels:g} "
                         f"(raise it to process this photo: about {3 * w * h / 2**30:.1f} GiB of memory)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                return pil_to_rgb(ImageOps.exif_transpose(img) if exif else img)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, unsupported mode
        raise PhotoError(f"{path}: cannot read this photo ({type(e).__name__}: {str(e)[:100]})") from e


class Failures:
    """Files a batch command skipped, with the reason."""

    def __init__(self, fail_fast: bool = False):
        self.fail_fast = fail_fast
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, err: BaseException | str) -> None:
        reason = str(err)
        if self.fail_fast:
            raise err if isinstance(err, BaseException) else PhotoError(reason)
        self.items.append((path, reason))
        print(f"skipped: {reason if reason.startswith(path) else f'{path}: {reason}'}", file=sys.stderr, flush=True)

    def report(self, total: int, what: str = "files") -> int:
        """Prints the summary of failures; the exit code (1 when some failed, else 0)."""
        if not self.items:
            return 0
        print(f"{len(self.items)} of {total} {what} failed:", file=sys.stderr)
        for path, reason in self.items:
            print(f"  {reason if reason.startswith(path) else f'{path}: {reason}'}", file=sys.stderr)
        sys.stderr.flush()
        return 1
