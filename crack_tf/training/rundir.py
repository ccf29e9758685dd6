"""The model directory: config guard, resumable checkpoints and ``run.json``.

Layout of ``--model_dir``::

    config.json            flags that define the run (guards against mixing runs)
    ckpt/                  the last two resumable checkpoints (crack_tf.training.checkpoints)
    best.keras, final.keras, run.json, history.jsonl, tensorboard/
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crack_tf.training.config import TrainConfig
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile

import keras
import numpy as np

from crack_tf.training.flags import FLAG_NAMES, NON_IDENTITY_FLAGS


def identity_config(cfg: TrainConfig) -> dict:
    """The flags that determine what a run computes."""
    return {k: getattr(cfg, k) for k in FLAG_NAMES if k not in NON_IDENTITY_FLAGS}


def prepare_model_dir(cfg: TrainConfig, is_chief: bool = True) -> None:
    """Creates ``model_dir``; refuses one that holds a run of another config.

    With ``--overwrite`` the old run is deleted instead. A flag added since the run was started
    (absent from its config.json) counts as its default, so such runs still resume.
    """
    from crack_tf.training.config import from_values

    path = os.path.join(cfg.model_dir, "config.json")
    wanted = identity_config(cfg)
    if os.path.isfile(path):
        with open(path) as f:
            existing = {**identity_config(from_values({})), **json.load(f)}
        if existing != wanted:
            differ = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
            if not cfg.overwrite:
                raise ValueError(
                    f"{cfg.model_dir} holds a run with a different config (differs in: "
                    + ", ".join(f"--{k}" for k in differ)
                    + "). Use another --model_dir, or --overwrite to delete that run."
                )
            if is_chief:
                shutil.rmtree(cfg.model_dir)
    if is_chief:
        os.makedirs(cfg.model_dir, exist_ok=True)
        write_json(path, wanted)  # atomic: the other processes of the run may be reading it now


def output_dir(model_dir: str, is_chief: bool) -> str:
    """Where this process writes models and checkpoints.

    Saving is a collective operation in multi-process JAX runs, so every process saves;
    only the chief writes into ``model_dir``, the others into a private scratch folder.
    """
    if is_chief:
        return model_dir
    scratch = os.path.join(tempfile.gettempdir(), f"crack_tf_worker_{os.getpid()}")
    os.makedirs(scratch, exist_ok=True)
    return scratch


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of all weights: equal digests mean identical replicas across processes."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value)).tobytes())
    return digest.hexdigest()


def versions() -> dict:
    """Library versions for ``run.json``."""
    out = {"python": platform.python_version(), "keras": keras.__version__, "backend": keras.backend.backend()}
    for name in ("tensorflow", "jax", "torch", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    import crack_tf

    out["crack_tf"] = crack_tf.__version__
    return out


def write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
