"""Never lose work: non-finite stop, checkpoint fallback, bad photos in a batch, one-line errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from crack_tf.training import checkpoints
from tests.test_heatmap import crack_photo, darkness_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--model=zhang2016", "--data_source=synthetic", "--synthetic_train=64", "--synthetic_val=32",
    "--synthetic_size=64", "--image_size=64", "--batch_size=8", "--optimizer=sgd", "--lr=0.01",
    "--tensorboard=false", "--log_every=2", "--seed=11", "--epochs=2", "--deterministic=true",
]


def _cmd(args: list[str], module: str = "crack_tf.train", env=None, timeout=400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})))


def _weights(path):
    import crack_tf.models  # noqa: F401

    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).get_weights()]


@pytest.mark.slow
def test_a_diverging_run_stops_at_once_and_leaves_no_model(tmp_path):
    model_dir = tmp_path / "nan"
    proc = _cmd([*TINY, "--lr=1e6", "--checkpoint_every=1", f"--data_dir={tmp_path / 'data'}",
                 f"--model_dir={model_dir}"])
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training stopped at step") and "--lr" in last and "float32" in last
    assert "Traceback" not in proc.stderr
    run = json.load(open(model_dir / "run.json"))
    assert run["status"] == "failed" and run["failed_at_step"] <= 8  # within the first epoch (8 steps)
    assert not (model_dir / "final.keras").exists() and not (model_dir / "best.keras").exists()
    import h5py

    def datasets(path: str) -> list[np.ndarray]:
        found = []
        with h5py.File(path) as f:
            f.visititems(lambda _, obj: found.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return found

    for ckpt in checkpoints.checkpoints(str(model_dir)):  # whatever checkpoint exists is a finite one
        arrays = datasets(ckpt.weights)
        assert all(np.isfinite(a).all() for a in arrays if np.issubdtype(np.asarray(a).dtype, np.floating))


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_falls_back_and_ends_bit_identical(tmp_path):
    common = [*TINY, "--checkpoint_every=2", f"--data_dir={tmp_path / 'data'}"]
    assert _cmd([*common, f"--model_dir={tmp_path / 'straight'}"]).returncode == 0
    run_dir = tmp_path / "resumed"
    assert _cmd([*common, f"--model_dir={run_dir}"]).returncode == 0
    kept = checkpoints.checkpoints(str(run_dir))
    assert [c.step for c in kept] == [16, 14]  # the last two only
    with open(kept[0].weights, "r+b") as f:  # a disk / copy fault in the newest checkpoint
        f.truncate(os.path.getsize(kept[0].weights) // 3)
    os.remove(run_dir / "final.keras")
    proc = _cmd([*common, f"--model_dir={run_dir}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"checkpoint {kept[0].weights} does not load" in proc.stdout
    assert f"resumed from {run_dir}/ckpt at step 14" in proc.stdout
    for a, b in zip(_weights(tmp_path / "straight" / "final.keras"), _weights(run_dir / "final.keras")):
        np.testing.assert_array_equal(a, b)


def _model():
    from crack_tf import models

    model = models.get("zhang2016", input_shape=(64, 64, 3))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def test_a_failing_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    model = _model()
    checkpoints.save_checkpoint(model, str(tmp_path), {"global_step": 3, "best": None})
    saved = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1 for w in saved])

    def full_disk(m, path):
        with open(path, "wb") as f:
            f.write(b"\x89HDF partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        checkpoints.save_checkpoint(model, str(tmp_path), {"global_step": 5, "best": None}, save_weights=full_disk)
    assert checkpoints.latest_state(str(tmp_path))["global_step"] == 3
    assert [c.step for c in checkpoints.checkpoints(str(tmp_path))] == [3]
    assert not [n for n in os.listdir(tmp_path / "ckpt") if n.startswith(".tmp")]  # nothing half-written left
    fresh = _model()
    restored = checkpoints.restore_latest(fresh, str(tmp_path), log=lambda *a, **k: None)
    assert restored.step == 3
    for a, b in zip(fresh.get_weights(), saved):
        np.testing.assert_array_equal(a, b)


def test_no_loadable_checkpoint_names_the_files_and_overwrite(tmp_path):
    model = _model()
    for step in (2, 4):
        checkpoints.save_checkpoint(model, str(tmp_path), {"global_step": step, "best": None})
    for ckpt in checkpoints.checkpoints(str(tmp_path)):
        with open(ckpt.weights, "wb") as f:
            f.write(b"garbage")
    with pytest.raises(ValueError, match="--overwrite") as err:
        checkpoints.restore_latest(_model(), str(tmp_path), log=lambda *a, **k: None)
    assert "step-00000004" in str(err.value) and "step-00000002" in str(err.value)


@pytest.mark.slow
def test_heatmap_goes_on_past_a_truncated_photo_and_exits_1(tmp_path):
    model_path = tmp_path / "m.keras"
    darkness_model(32).save(model_path)
    photo, _ = crack_photo(160, 200)
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=90)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) // 2])  # truncated mid-scan
    Image.fromarray(photo).save(tmp_path / "b.png")
    Image.fromarray(photo[::-1]).save(tmp_path / "c.png")
    out = tmp_path / "out"
    proc = _cmd([f"--model={model_path}", "--window=64", "--stride=32", f"--output_dir={out}",
                 str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), str(tmp_path / "c.png")], "crack_tf.heatmap")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*_heatmap.npy")) == ["b_heatmap.npy", "c_heatmap.npy"]
    assert "1 of 3 photos failed" in proc.stderr and "a.jpg" in proc.stderr.split("failed:")[1]
    assert "summary: 2 photos, 1 failed" in proc.stdout
    strict = _cmd([f"--model={model_path}", "--window=64", "--stride=32", f"--output_dir={tmp_path / 'o2'}",
                   "--fail_fast", str(tmp_path / "a.jpg"), str(tmp_path / "b.png")], "crack_tf.heatmap")
    assert strict.returncode == 2 and not (tmp_path / "o2" / "b_heatmap.npy").exists()


@pytest.mark.slow
def test_user_errors_are_one_line_and_exit_2(tmp_path):
    bad_flag = _cmd(["--lr=-1", f"--model_dir={tmp_path / 'x'}"], timeout=120)
    assert bad_flag.returncode == 2
    assert bad_flag.stderr.strip().splitlines()[-1].startswith("error: Invalid training configuration")
    assert "--lr must be > 0" in bad_flag.stderr and "Traceback" not in bad_flag.stderr
    # A missing backbone file is named before any data is read (here: a data folder that does not exist).
    no_weights = _cmd([f"--weights={tmp_path / 'crack.weights.h5'}", "--data_source=folder",
                       f"--data_dir={tmp_path / 'nowhere'}", f"--model_dir={tmp_path / 'w'}"], timeout=120)
    assert no_weights.returncode == 2 and "Traceback" not in no_weights.stderr
    last = no_weights.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Backbone weights file not found") and "tools/pretrain.py --mode=crack" in last
    assert "nowhere" not in no_weights.stderr and not (tmp_path / "w").exists()
    missing = _cmd([f"--model={tmp_path / 'missing.keras'}", f"--data={tmp_path}"], "crack_tf.evaluate", timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("error: ") and "missing.keras" in missing.stderr
    verbose = _cmd([f"--model={tmp_path / 'missing.keras'}", f"--data={tmp_path}", "--verbose"], "crack_tf.evaluate",
                   timeout=120)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    not_a_model = tmp_path / "weights.h5"
    not_a_model.write_bytes(b"x")
    wrong = _cmd([f"--model={not_a_model}", f"--data={tmp_path}"], "crack_tf.evaluate", timeout=120)
    assert wrong.returncode == 2 and "neither a .keras file nor a SavedModel" in wrong.stderr
