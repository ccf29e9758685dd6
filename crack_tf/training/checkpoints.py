"""Resumable checkpoints: the last two kept, written atomically, the older one used when the
newest does not load.

Layout under ``<model_dir>/ckpt/``::

    step-00000120/model.weights.h5   model + optimizer state (Keras save_weights)
    step-00000120/rng.npz            random-generator states (dropout) at that step
    step-00000120/state.json         {"global_step", "best", ...} at that step
    step-00000096/...                the previous checkpoint
    state.json                       copy of the newest complete checkpoint's state (+ "dir")

A checkpoint is written into a temporary folder that is renamed into place only once complete,
then ``state.json`` is replaced; a write that fails midway (a full disk) leaves the previous
checkpoints untouched. On resume, checkpoints are tried newest first; one that does not load
is reported by file name and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import keras
import numpy as np

CKPT_DIR = "ckpt"
WEIGHTS = "model.weights.h5"
STATE = "state.json"
RNG = "rng.npz"
KEEP = 2
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclasses.dataclass
class Checkpoint:
    step: int
    folder: str
    state: dict

    @property
    def weights(self) -> str:
        return os.path.join(self.folder, WEIGHTS)


def _seed_states(model: keras.Model) -> list:
    return [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]


def _write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def weights_finite(model: keras.Model) -> bool:
    """True when every model weight is finite (no NaN / inf)."""
    return all(np.isfinite(keras.ops.convert_to_numpy(w.value)).all() for w in model.weights)


def save_checkpoint(model: keras.Model, model_dir: str, state: dict, save_weights=None) -> str:
    """Writes model + optimizer + RNG state of ``state["global_step"]``; keeps the last two.

    ``save_weights(model, path)`` defaults to ``model.save_weights`` (tests inject a failing one).
    Returns the checkpoint folder. Raises whatever the writer raised, with nothing replaced.
    """
    root = os.path.join(model_dir, CKPT_DIR)
    os.makedirs(root, exist_ok=True)
    name = f"step-{int(state['global_step']):08d}"
    tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        (save_weights or (lambda m, p: m.save_weights(p, overwrite=True)))(model, os.path.join(tmp, WEIGHTS))
        with open(os.path.join(tmp, RNG), "wb") as f:
            np.savez(f, *[keras.ops.convert_to_numpy(v.value) for v in _seed_states(model)])
        _write_json(os.path.join(tmp, STATE), state)
        final = os.path.join(root, name)
        if os.path.exists(final):  # the same step saved again (epoch end after a step checkpoint)
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_json(os.path.join(root, STATE), {**state, "dir": name})  # marks the newest complete one
    for old in checkpoints(model_dir)[KEEP:]:
        shutil.rmtree(old.folder, ignore_errors=True)
    return final


def checkpoints(model_dir: str) -> list[Checkpoint]:
    """The complete checkpoints (their state.json exists), newest first."""
    root = os.path.join(model_dir, CKPT_DIR)
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        path = os.path.join(root, name, STATE)
        if m and os.path.isfile(path):
            try:
                with open(path) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                continue
            out.append(Checkpoint(int(m.group(1)), os.path.join(root, name), state))
    return sorted(out, key=lambda c: c.step, reverse=True)


def latest_state(model_dir: str) -> dict | None:
    """The newest complete checkpoint's state, or None for a fresh run."""
    found = checkpoints(model_dir)
    return found[0].state if found else None


def restore(model: keras.Model, checkpoint: Checkpoint) -> None:
    """Loads weights, optimizer slots and RNG states of one checkpoint (raises if it does not load)."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(checkpoint.weights)
    rng_path = os.path.join(checkpoint.folder, RNG)
    if os.path.isfile(rng_path):
        with np.load(rng_path) as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        for var, value in zip(_seed_states(model), arrays):
            var.assign(value)


def restore_latest(model: keras.Model, model_dir: str, prepare=None, log=print) -> Checkpoint | None:
    """Restores the newest checkpoint that loads, newest first; None when there is none.

    ``prepare(checkpoint)`` runs before each try (e.g. freeze the backbone for that step). Raises
    ValueError naming every file when checkpoints exist but none loads.
    """
    found = checkpoints(model_dir)
    failures = []
    for ckpt in found:
        if prepare is not None:
            prepare(ckpt)
        try:
            restore(model, ckpt)
        except Exception as e:  # noqa: BLE001 - a truncated / corrupt file: try the previous one
            failures.append(f"{ckpt.weights} ({type(e).__name__}: {str(e)[:120]})")
            log(f"checkpoint {ckpt.weights} does not load ({type(e).__name__}); using the previous one", flush=True)
            continue
        return ckpt
    if found:
        raise ValueError(f"no checkpoint in {os.path.join(model_dir, CKPT_DIR)} loads: " + "; ".join(failures)
                         + ". Delete them, or pass --overwrite to start this run afresh.")
    return None
