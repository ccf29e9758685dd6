"""Trainer tests: flag parsing, early errors, 2-replica training, exact kill -9 resume."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from crack_tf.training import config as train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny, fast, deterministic run: Zhang 2016 CNN on 64 px synthetic tiles.
TINY = [
    "--model=zhang2016", "--data_source=synthetic", "--synthetic_train=64", "--synthetic_val=32",
    "--synthetic_size=64", "--image_size=64", "--batch_size=8", "--optimizer=sgd", "--lr=0.01",
    "--lr_schedule=cosine", "--tensorboard=false", "--log_every=2", "--seed=7",
]


def _run_train(args: list[str], env_extra: dict | None = None, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **(env_extra or {}))
    module = "tests.step_delay_train" if "CRACK_TF_STEP_DELAY" in env else "crack_tf.train"  # a slowed trainer
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def _finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _weights(path: str) -> list[np.ndarray]:
    import keras

    import crack_tf.models  # noqa: F401  (registers custom layers)

    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).get_weights()]


def test_flagfile_then_command_line_override(tmp_path):
    flagfile = tmp_path / "run.cfg"
    flagfile.write_text("--model=resnet50\n--epochs=7\n--lr=0.02\n--rates=3,6,9\n")
    cfg = train_config.parse_args([f"--flagfile={flagfile}", "--epochs=3"])
    assert cfg.model == "resnet50" and cfg.lr == 0.02 and cfg.rates == [3, 6, 9]
    assert cfg.epochs == 3  # the later command-line flag wins


def test_every_shipped_config_parses():
    configs = os.path.join(REPO, "configs")
    # ablation_*.cfg are flagfiles of tools/ablate.py, not of the trainer.
    names = sorted(f for f in os.listdir(configs) if f.endswith(".cfg") and not f.startswith("ablation_"))
    assert "quickstart.cfg" in names
    for name in names:
        cfg = train_config.parse_args([f"--flagfile={os.path.join(configs, name)}", "--data_dir=/some/where"])
        assert cfg.batch_size >= 1, name


def test_every_addon_config_parses_after_the_recommended_recipe():
    """configs/addons/*.cfg are added after a recipe (--flagfile=<recipe> --flagfile=<addon>)."""
    addons = sorted(glob.glob(os.path.join(REPO, "configs", "addons", "*.cfg")))
    assert addons
    for path in addons:
        cfg = train_config.parse_args([f"--flagfile={os.path.join(REPO, 'configs', 'crackmix_synthpre.cfg')}",
                                       f"--flagfile={path}"])
        assert cfg.data_source == "photos", path


def test_the_robust48_config_is_the_ablation_row_it_was_measured_as():
    """configs/crackmix_synthpre_robust48.cfg (recommended 2026-12-06 to -08) = crackmix_synthpre.cfg +
    robust_augment.cfg + 48 epochs: the row `synthpre_robustaug_epochs48` of configs/ablation_loso.cfg
    (on the whole-mix backbone), with the threshold rule its left-out folds were scored at."""
    configs = os.path.join(REPO, "configs")
    candidate = train_config.parse_args([f"--flagfile={os.path.join(configs, 'crackmix_synthpre_robust48.cfg')}"])
    recipe = train_config.parse_args([f"--flagfile={os.path.join(configs, 'crackmix_synthpre.cfg')}"])
    row = train_config.parse_args([f"--flagfile={os.path.join(configs, 'crackmix_synthpre.cfg')}",
                                   f"--flagfile={os.path.join(configs, 'addons', 'robust_augment.cfg')}",
                                   "--epochs=48"])
    assert candidate.epochs == 48 != recipe.epochs
    assert candidate.model_dir != recipe.model_dir
    for name in ("gamma", "grayscale", "hue", "blur", "noise", "jpeg", "brightness", "contrast", "weights",
                 "data_dir", "lr", "batch_size", "tta", "image_size"):
        assert getattr(candidate, name) == getattr(row, name), name
    assert candidate.gamma != recipe.gamma and candidate.weights == recipe.weights
    assert candidate.threshold_rule == row.threshold_rule == "f1"  # docs/RESULTS.md 000000000000


def test_the_recommended_simclr_config_is_the_robust48_recipe_on_its_own_backbone():
    """configs/crackmix_simclrpre_robust48.cfg (recommended since 2026-12-08; the row
    `simclrpre_robustaug_epochs48`): every training flag of the robust48 recipe, only the backbone
    (pretrain.sh RECIPE=synth_simclr_crack's output) and the model folder differ."""
    configs = os.path.join(REPO, "configs")
    simclr, robust48 = (vars(train_config.parse_args([f"--flagfile={os.path.join(configs, name)}"]))
                        for name in ("crackmix_simclrpre_robust48.cfg", "crackmix_synthpre_robust48.cfg"))
    differ = {k for k in robust48 if simclr[k] != robust48[k]}
    assert differ == {"weights", "model_dir"}
    assert simclr["weights"] == "runs/pretrain/synth_simclr_crack.weights.h5"


def test_the_readme_recommends_the_simclr_config_and_makes_its_backbone():
    """The README's train line marked "(recommended)" names the recommended config, and its pretraining
    commands chain synthetic -> SimCLR -> crack into the weights that config loads."""
    import re

    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    commands = re.sub(r"\\\n\s*", " ", readme)  # continuation lines joined
    recommended = [line for line in commands.splitlines() if "(recommended)" in line and "crack_tf.train" in line]
    assert len(recommended) == 1 and "--flagfile=configs/crackmix_simclrpre_robust48.cfg" in recommended[0]
    cfg = train_config.parse_args([f"--flagfile={os.path.join(REPO, 'configs', 'crackmix_simclrpre_robust48.cfg')}"])
    lines = commands.splitlines()
    before = lines[:lines.index(recommended[0])]
    first = max(i for i, line in enumerate(before) if not line.startswith("python tools/pretrain.py")) + 1
    chain = {m.group(1): (m.group(2), re.search(r"--output=(\S+)", line).group(1))
             for line in before[first:]  # the pretraining commands right above the recommended line
             for m in [re.search(r"--mode=(\w+)(?:.*--init=(\S+))?", line)]}
    assert sorted(chain) == ["crack", "simclr", "synthetic"]
    assert chain["crack"][1] == cfg.weights
    assert chain["crack"][0] == chain["simclr"][1] and chain["simclr"][0] == chain["synthetic"][1]
    assert chain["synthetic"][0] is None


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--lr=-1"], "--lr must be > 0"),
        (["--data_source=folder"], "needs --data_dir"),
        (["--freeze_backbone_epochs=5", "--epochs=3"], "--freeze_backbone_epochs"),
        (["--rates=2,x"], "--rates"),
        (["--num_processes=2"], "--coordinator_address"),
    ],
)
def test_bad_combinations_are_rejected_before_training(bad, message):
    with pytest.raises(ValueError, match=message):
        train_config.parse_args(bad)


@pytest.mark.slow
def test_unknown_fusion_and_indivisible_batch_fail_fast(tmp_path):
    proc = _run_train(["--fusion=foo", f"--model_dir={tmp_path / 'a'}"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "fusion" in out and "max" in out
    assert not (tmp_path / "a").exists()  # nothing was started
    proc = _run_train([*TINY, "--strategy=mirrored", "--num_devices=2", "--batch_size=7",
                       f"--model_dir={tmp_path / 'b'}"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "not divisible by the 2 replicas" in out
    assert not (tmp_path / "b" / "ckpt").exists()


def test_model_dir_of_another_config_is_refused(tmp_path):
    from types import SimpleNamespace

    from crack_tf.training import rundir

    cfg = train_config.parse_args([f"--model_dir={tmp_path}"])
    rundir.prepare_model_dir(cfg)
    other = SimpleNamespace(**{**vars(cfg), "lr": 0.1})
    with pytest.raises(ValueError, match="differs in: --lr"):
        rundir.prepare_model_dir(other)
    other.overwrite = True
    rundir.prepare_model_dir(other)  # wiped and re-created
    assert json.load(open(tmp_path / "config.json"))["lr"] == 0.1


def test_a_run_started_before_a_flag_was_added_still_resumes(tmp_path):
    from types import SimpleNamespace

    from crack_tf.training import rundir

    cfg = train_config.parse_args([f"--model_dir={tmp_path}"])
    rundir.prepare_model_dir(cfg)
    saved = json.load(open(tmp_path / "config.json"))
    del saved["gamma"], saved["hue"]  # an older run: these flags did not exist yet
    json.dump(saved, open(tmp_path / "config.json", "w"))
    rundir.prepare_model_dir(cfg)  # missing = the default: same run
    assert json.load(open(tmp_path / "config.json"))["gamma"] == 0.0
    json.dump(saved, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match="differs in: --gamma"):
        rundir.prepare_model_dir(SimpleNamespace(**{**vars(cfg), "gamma": 0.2}))


@pytest.mark.slow
def test_other_processes_never_read_a_half_written_config_json(tmp_path):
    """The chief writes config.json while the other processes of a multi-process run check it
    (a torn read once failed CI's 2-process test: 'Expecting value: line 1 column 1')."""
    import textwrap

    from crack_tf.training import rundir

    cfg = train_config.parse_args([f"--model_dir={tmp_path}"])
    rundir.prepare_model_dir(cfg)
    writer = textwrap.dedent(
        f"""
        from crack_tf.training import config, rundir
        cfg = config.parse_args(["--model_dir={tmp_path}"])
        for _ in range(400):
            rundir.prepare_model_dir(cfg)  # the chief, rewriting the same config
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=REPO)
    reads = 0
    while proc.poll() is None:
        rundir.prepare_model_dir(cfg, is_chief=False)  # reads and compares, as process 1 does
        reads += 1
    assert proc.returncode == 0 and reads > 0


@pytest.mark.slow
def test_two_replica_mirrored_training(tmp_path):
    model_dir = tmp_path / "mirrored"
    out = _finish(_run_train([*TINY, "--strategy=mirrored", "--num_devices=2", "--epochs=4",
                              f"--data_dir={tmp_path / 'synthetic'}", f"--model_dir={model_dir}"]))
    run = json.load(open(model_dir / "run.json"))
    assert run["runtime"]["strategy"] == "mirrored" and run["runtime"]["replicas"] == 2, out[-2000:]
    assert len(set(run["runtime"]["devices"])) == 2
    history = [json.loads(line) for line in open(model_dir / "history.jsonl")]
    assert history[-1]["loss"] < history[0]["loss"]
    # The metrics the 2-replica run reported equal a single-device evaluation of its weights.
    import keras

    import crack_tf.models  # noqa: F401
    from crack_tf.data import DataConfig, make_input
    from crack_tf.metrics import default_metrics

    model = keras.saving.load_model(model_dir / "final.keras", compile=False)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=default_metrics())
    val = make_input(DataConfig(path=run["config"]["data_dir"], image_size=64), "val", training=False,
                     global_batch_size=8)
    single = model.evaluate(val.dataset, verbose=0, return_dict=True)
    for key in ("accuracy", "precision", "recall", "f1"):
        assert single[key] == pytest.approx(run["metrics"]["val"][key], abs=1e-6), key


@pytest.mark.slow
def test_kill9_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    common = [*TINY, "--epochs=2", "--checkpoint_every=3", "--deterministic=true"]
    _finish(_run_train([*common, f"--model_dir={tmp_path / 'straight'}"]))

    resumed_dir = tmp_path / "resumed"
    # Slow the run down so the kill lands mid-epoch, between checkpoints.
    proc = _run_train([*common, f"--model_dir={resumed_dir}"], env_extra={"CRACK_TF_STEP_DELAY": "0.5"},
                      start_new_session=True)
    state = resumed_dir / "ckpt" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if state.exists() and json.load(open(state))["global_step"] >= 3:
            break
        time.sleep(0.1)
    time.sleep(0.7)  # one more step past the checkpoint: that step is lost and redone
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.load(open(state))["global_step"]
    assert 0 < killed_at < 16 and not (resumed_dir / "final.keras").exists()

    out = _finish(_run_train([*common, f"--model_dir={resumed_dir}"]))
    assert f"resumed from {resumed_dir}/ckpt at step {killed_at}" in out
    straight = _weights(str(tmp_path / "straight" / "final.keras"))
    resumed = _weights(str(resumed_dir / "final.keras"))
    assert len(straight) == len(resumed)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_backend_check_reports_replicas_and_exits(tmp_path):
    proc = _run_train(["--backend_check", "--strategy=mirrored", "--num_devices=2",
                       f"--model_dir={tmp_path / 'unused'}"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "backend=tensorflow strategy=mirrored replicas=2" in out
    assert "accelerator=False" in out
    assert not (tmp_path / "unused").exists()  # nothing trained, nothing written
