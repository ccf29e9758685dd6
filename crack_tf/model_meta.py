"""crack_tf metadata inside a ``.keras`` file: threshold, temperature, input size, class names.

A ``.keras`` file is a zip archive; Keras reads only its own entries (``config.json``,
``metadata.json``, ``model.weights.h5``), so crack_tf adds ``crack_tf.json`` beside them and a
plain ``keras.saving.load_model`` still loads the file. Written with the operating point picked
on val by the trainer (or ``python -m crack_tf.calibrate``); read by every crack_tf command.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile

ENTRY = "crack_tf.json"
DEFAULT_THRESHOLD = 0.5


def read_metadata(path: str) -> dict:
    """The ``crack_tf.json`` of a ``.keras`` file, or ``{}`` (older files, other tools)."""
    try:
        with zipfile.ZipFile(path) as zf:
            if ENTRY in zf.namelist():
                return json.loads(zf.read(ENTRY).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError):
        return {}
    return {}


def write_metadata(path: str, metadata: dict) -> None:
    """Stores ``metadata`` (merged over what the file holds) atomically: a new archive is written
    beside the file and renamed over it."""
    merged = {**read_metadata(path), **metadata}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".meta-", suffix=".keras", dir=folder)
    os.close(fd)
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if item.filename != ENTRY:
                    dst.writestr(item, src.read(item.filename))
            dst.writestr(ENTRY, json.dumps(merged, indent=2, sort_keys=True, default=str))
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
