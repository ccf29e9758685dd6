"""The trainer on the photos source: per-source val, exact resume after kill -9, JAX without TF."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from crack_tf.training.loop import fit_segments
from tests.photo_data import write_source
from tests.test_train_jax import _env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    write_source(root / "site_a", {"train": 3, "val": 2}, seed=1)
    write_source(root / "site_b", {"train": 3, "val": 1}, seed=2, rgba_masks=False)
    return root


def _args(root, model_dir, extra=()):
    return ["--model=zhang2016", "--data_source=photos", "--data_dir=site_a:0.7,site_b:0.3", f"--data_root={root}",
            "--image_size=64", "--val_tile=32", "--crop_side=16,48", "--min_crack_pixels=20",
            "--crops_per_epoch=48", "--batch_size=8", "--epochs=2", "--optimizer=adamw", "--lr=0.003",
            "--tensorboard=false", "--log_every=2", "--seed=5", f"--model_dir={model_dir}", *extra]


def _train(args, env=None, **kwargs) -> subprocess.Popen:
    env = env or dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    module = "tests.step_delay_train" if "CRACK_TF_STEP_DELAY" in env else "crack_tf.train"  # a slowed trainer
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(proc, timeout=400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def test_fit_segments_split_at_resume_and_unfreeze():
    assert fit_segments(0, 10, 5, 0) == [(0, 5, 10, False)]  # one fit call for the whole run
    assert fit_segments(23, 10, 5, 0) == [(2, 3, 7, False), (3, 5, 10, False)]
    assert fit_segments(0, 10, 5, 2) == [(0, 2, 10, True), (2, 5, 10, False)]
    assert fit_segments(15, 10, 5, 2) == [(1, 2, 5, True), (2, 5, 10, False)]
    assert fit_segments(50, 10, 5, 0) == []  # finished: nothing left to fit


@pytest.mark.slow
def test_photos_run_reports_val_per_source_and_pooled(sources, tmp_path):
    model_dir = tmp_path / "run"
    out = _finish(_train(_args(sources, model_dir, ["--eval_sources=site_b", "--tta=flips", "--ema_momentum=0.8",
                                                    "--threshold_rule=min_source_accuracy", "--save_eval_features"])))
    assert "source site_a: weight 0.7" in out and "| site_b acc=" in out
    run = json.load(open(model_dir / "run.json"))
    by_source = run["metrics"]["val_by_source"]
    assert set(by_source) == {"site_a", "site_b"} and set(run["metrics"]["train_by_source"]) == {"site_a", "site_b"}
    assert run["data"]["sources"]["site_b"]["weight"] == 0.3
    assert run["metrics"]["eval_sources_by_source"]["site_b"]["accuracy"] == pytest.approx(
        by_source["site_b"]["accuracy"])
    history = [json.loads(line) for line in open(model_dir / "history.jsonl")]
    assert "val_site_a_accuracy" in history[-1] and "val_accuracy" in history[-1]
    # Where the wall time went: every phase, together within the run's wall seconds.
    phases = run["phase_seconds"]
    assert set(phases) == {"setup", "fit", "final_metrics", "save", "operating_point"}
    assert all(v > 0 for v in phases.values()) and sum(phases.values()) <= run["wall_seconds"] + 1e-3
    assert phases["fit"] >= sum(run["epoch_seconds"]) * 0.9 and "phases: setup " in out
    parts = run["operating_point_seconds"]  # and within the operating point, each model's scoring
    assert set(parts) == {"final_val", "final_eval", "final_features", "best_val"}  # (AdaBN: test_finish_adabn)
    assert all(v > 0 for v in parts.values()) and sum(parts.values()) <= phases["operating_point"] + 1e-3
    assert "operating point parts: final_val " in out
    # The pooled metrics (rebuilt from the sources' counts) equal one evaluation of all val tiles.
    import keras

    import crack_tf.models  # noqa: F401
    from crack_tf.data import DataConfig, make_input
    from crack_tf.metrics import default_metrics
    from crack_tf.training.optim import SparseCrossEntropy

    model = keras.saving.load_model(model_dir / "final.keras", compile=False)
    model.compile(loss=SparseCrossEntropy(), metrics=default_metrics())
    cfg = DataConfig(source="photos", path="site_a,site_b", data_root=str(sources), image_size=64, val_tile=32)
    pooled = model.evaluate(make_input(cfg, "val", False, 8).dataset, verbose=0, return_dict=True)
    for key in ("accuracy", "precision", "recall", "f1", "loss"):
        assert pooled[key] == pytest.approx(run["metrics"]["val"][key], abs=1e-5), key
    # The operating point: picked on val with and without TTA, the --tta one stored in final.keras.
    from crack_tf.model_meta import read_metadata

    assert set(run["operating_points"]) == {"none", "flips"} and run["operating_point"]["tta"] == "flips"
    stored = read_metadata(str(model_dir / "final.keras"))
    assert stored["operating_point"]["threshold"] == run["operating_point"]["threshold"] and stored["tta"] == "flips"
    assert set(run["operating_point"]["val_at_threshold_by_source"]) == {"site_a", "site_b"}
    assert "operating_point" in read_metadata(str(model_dir / "best.keras"))
    assert "final.keras operating point (min_source_accuracy on val, tta flips): threshold" in out
    # margins.npz: every tile's margins per view; the stored point is reproduced from its val part,
    # and the --eval_sources tiles are scored at that same temperature and threshold.
    from crack_tf.evaluation import calibration, stats
    from crack_tf.training.finish import metrics_by_source

    arrays = np.load(model_dir / "margins.npz")
    point = run["operating_point"]
    val, ev = arrays["split"] == "val", arrays["split"] == "eval"
    assert arrays["margins"].shape == (4, len(arrays["labels"])) and str(arrays["tta"]) == "flips"
    assert set(arrays["sources"][val]) == {"site_a", "site_b"} and set(arrays["sources"][ev]) == {"site_b"}
    again = calibration.operating_point(arrays["margins"][:, val], arrays["labels"][val], "min_source_accuracy",
                                        sources=arrays["sources"][val])
    assert again["threshold"] == pytest.approx(point["threshold"], abs=1e-6)
    assert again["temperature"] == pytest.approx(point["temperature"], rel=1e-4)
    probs = calibration.calibrated_probability(arrays["margins"], point["temperature"])
    per_source = metrics_by_source(probs[val], arrays["labels"][val], arrays["sources"][val], point["threshold"])
    worst = min(m["accuracy"] for m in per_source.values())
    for t in np.linspace(0.01, 0.99, 99):  # no threshold does better for the worst source
        assert worst >= min(stats.all_metrics(probs[val & (arrays["sources"] == s)],
                                              arrays["labels"][val & (arrays["sources"] == s)], t)["accuracy"]
                            for s in ("site_a", "site_b")) - 1e-9
    scored = point["eval_sources_at_threshold_by_source"]["site_b"]
    expected = stats.all_metrics(probs[ev], arrays["labels"][ev], float(np.float32(point["threshold"])))
    assert scored["accuracy"] == pytest.approx(expected["accuracy"]) and scored["recall"] == pytest.approx(
        expected["recall"])
    assert scored["accuracy"] == pytest.approx(point["val_at_threshold_by_source"]["site_b"]["accuracy"])
    assert "eval source site_b at that point: acc=" in out
    # features.npz (--save_eval_features): the head's input for the same eval tiles and views, so the
    # head's margins of those features are the run's eval margins (features stored in float16).
    from crack_tf.evaluation.head_refit import head_margins

    feats = np.load(model_dir / "features.npz")
    assert feats["features"].dtype == np.float16 and feats["features"].shape[:2] == (4, ev.sum())
    assert np.array_equal(feats["labels"], arrays["labels"][ev]) and set(feats["sources"]) == {"site_b"}
    stems = {os.path.splitext(f)[0] for f in os.listdir(sources / "site_b" / "val" / "images")}
    assert set(feats["groups"]) == {f"site_b/{stem}" for stem in stems}  # each tile's photo (one val photo here)
    again = head_margins(feats["features"], feats["kernel"], feats["bias"])
    scale = np.abs(arrays["margins"][:, ev]).max()
    np.testing.assert_allclose(again, arrays["margins"][:, ev], atol=2e-2 * max(scale, 1.0))


def _weights(path):
    import keras

    import crack_tf.models  # noqa: F401

    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).get_weights()]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "jax_processes"])
def test_kill9_then_resume_is_bit_identical_with_photos(sources, tmp_path, backend):
    # With weight averaging: the resumed run goes on from the raw weights of its checkpoint.
    # jax_processes: forked loader workers handing batches back through shared memory.
    extra = ["--epochs=2", "--checkpoint_every=2", "--deterministic=true", "--ema_momentum=0.9"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    if backend.startswith("jax"):
        env = _env(tmp_path, block_tf=True)
        extra.append("--loader=numpy")
    if backend == "jax_processes":
        extra += ["--loader_processes", "--loader_workers=2"]
    _finish(_train(_args(sources, tmp_path / "straight", extra), env))
    resumed = tmp_path / "resumed"
    proc = _train(_args(sources, resumed, extra), dict(env, CRACK_TF_STEP_DELAY="0.5"), start_new_session=True)
    state = resumed / "ckpt" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (state.exists() and json.load(open(state))["global_step"] >= 2):
        time.sleep(0.1)
    time.sleep(0.7)  # one more step past the checkpoint: that step is lost and redone
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.load(open(state))["global_step"]
    assert 0 < killed_at < 12 and not (resumed / "final.keras").exists()
    out = _finish(_train(_args(sources, resumed, extra), env))
    assert f"resumed from {resumed}/ckpt at step {killed_at}" in out
    for a, b in zip(_weights(tmp_path / "straight" / "final.keras"), _weights(resumed / "final.keras")):
        np.testing.assert_array_equal(a, b)
