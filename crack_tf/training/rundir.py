"""The model directory: config guard, resumable checkpoints and ``run.json``.

Layout of ``--model_dir``::

    config.json            flags that define the run (guards against mixing runs)
    ckpt/latest.weights.h5 model + optimizer state of the last checkpoint
    ckpt/rng.npz           random-generator states (dropout) at that checkpoint
    ckpt/state.json        {"global_step", "best"} at that checkpoint
    best.keras, final.keras, run.json, history.jsonl, tensorboard/
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import types

import keras
import numpy as np

from crack_tf.training.flags import FLAG_NAMES, NON_IDENTITY_FLAGS

CKPT_DIR = "ckpt"
_WEIGHTS = "latest.weights.h5"
_STATE = "state.json"
_RNG = "rng.npz"


def identity_config(cfg: types.SimpleNamespace) -> dict:
    """The flags that determine what a run computes."""
    return {k: getattr(cfg, k) for k in FLAG_NAMES if k not in NON_IDENTITY_FLAGS}


def prepare_model_dir(cfg: types.SimpleNamespace, is_chief: bool = True) -> None:
    """Creates ``model_dir``; refuses one that holds a run of another config.

    With ``--overwrite`` the old run is deleted instead.
    """
    path = os.path.join(cfg.model_dir, "config.json")
    wanted = identity_config(cfg)
    if os.path.isfile(path):
        with open(path) as f:
            existing = json.load(f)
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
        with open(path, "w") as f:
            json.dump(wanted, f, indent=2, sort_keys=True)


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


def _seed_states(model: keras.Model) -> list:
    return [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]


def save_checkpoint(model: keras.Model, model_dir: str, state: dict) -> None:
    """Writes model + optimizer + RNG state atomically (temp files, then rename)."""
    folder = os.path.join(model_dir, CKPT_DIR)
    os.makedirs(folder, exist_ok=True)
    tmp_weights = os.path.join(folder, "tmp." + _WEIGHTS)
    model.save_weights(tmp_weights, overwrite=True)
    tmp_rng = os.path.join(folder, "tmp." + _RNG)
    with open(tmp_rng, "wb") as f:
        np.savez(f, *[keras.ops.convert_to_numpy(v.value) for v in _seed_states(model)])
    tmp_state = os.path.join(folder, "tmp." + _STATE)
    with open(tmp_state, "w") as f:
        json.dump(state, f)
    # The state file is renamed last: it marks the checkpoint complete.
    os.replace(tmp_weights, os.path.join(folder, _WEIGHTS))
    os.replace(tmp_rng, os.path.join(folder, _RNG))
    os.replace(tmp_state, os.path.join(folder, _STATE))


def load_state(model_dir: str) -> dict | None:
    """The last complete checkpoint's state, or None for a fresh run."""
    path = os.path.join(model_dir, CKPT_DIR, _STATE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def restore_checkpoint(model: keras.Model, model_dir: str) -> None:
    """Loads weights, optimizer slots and RNG states saved by :func:`save_checkpoint`."""
    folder = os.path.join(model_dir, CKPT_DIR)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(folder, _WEIGHTS))
    rng_path = os.path.join(folder, _RNG)
    if os.path.isfile(rng_path):
        with np.load(rng_path) as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        for var, value in zip(_seed_states(model), arrays):
            var.assign(value)


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
