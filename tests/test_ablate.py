"""tools/ablate.py: grid parsing, shipped grids, results tables, kill + resume end to end."""

from __future__ import annotations

import csv
import glob
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.tool_loader import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ablate = load_tool("ablate")


def test_parse_row_and_extra():
    assert ablate.parse_row("l1:model=resnet50_aspp;rates=2,4,8; fusion=sum") == (
        "l1", ["--model=resnet50_aspp", "--rates=2,4,8", "--fusion=sum"])
    assert ablate.split_extra(["--epochs=2,--rates=2,4,6", "--lr=0.1"]) == ["--epochs=2", "--rates=2,4,6", "--lr=0.1"]
    for bad in ("noflags", "bad name:model=x", "x:model"):
        with pytest.raises(ValueError, match="--row"):
            ablate.parse_row(bad)
    with pytest.raises(ValueError, match="--extra"):
        ablate.split_extra(["epochs=2"])
    with pytest.raises(ValueError, match="duplicate"):
        ablate.build_runs("t", "b.cfg", ["a:lr=1", "a:lr=2"], [0], "out", [])


def test_build_runs_order_only_and_extra_last():
    runs = ablate.build_runs("t", "base.cfg", ["a:lr=1", "b:lr=2"], [0, 1], "out", ["--epochs=3", "--lr=9"], only="^b")
    assert [r.name for r in runs] == ["b_s0", "b_s1"]
    assert runs[1].args == ["--flagfile=base.cfg", "--lr=2", "--seed=1", "--model_dir=out/b_s1", "--epochs=3", "--lr=9"]
    assert runs[1].options["lr"] == "9"  # the last value wins, as in absl


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "ablation_*.cfg"))))
def test_shipped_grids_use_real_trainer_flags_and_paper_rows(path):
    from crack_tf.training.flags import FLAG_NAMES

    lines = [ln.strip() for ln in open(path) if ln.strip() and not ln.startswith("#")]
    table = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("--table="))
    rows = [ablate.parse_row(ln.split("=", 1)[1]) for ln in lines if ln.startswith("--row=")]
    assert rows and table in ablate.PAPER
    for name, args in rows:
        for a in args:
            key = a[2:].split("=", 1)[0]
            assert key == "flagfile" or key in FLAG_NAMES, f"{path}: row {name} sets unknown flag --{key}"
            if key == "flagfile":
                assert os.path.isfile(os.path.join(REPO, a.split("=", 1)[1]))
    if table != "ours":  # every paper row is in the grid, and nothing else
        assert sorted(n for n, _ in rows) == sorted(ablate.PAPER[table])
    base = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("--base_flagfile="))
    assert os.path.isfile(os.path.join(REPO, base))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "ablation_*.cfg"))))
def test_every_shipped_grid_run_is_a_valid_trainer_command(path, monkeypatch):
    from crack_tf.training import config as train_config
    from crack_tf.training import flags as train_flags

    monkeypatch.chdir(REPO)
    lines = [ln.strip() for ln in open(path) if ln.strip() and not ln.startswith("#")]
    get = lambda key: [ln.split("=", 1)[1] for ln in lines if ln.startswith(f"--{key}=")]  # noqa: E731
    folds = ablate.loso_folds(get("loso")[0]) if get("loso") else None
    extra = ablate.split_extra(get("extra"))
    runs = ablate.build_runs(get("table")[0], get("base_flagfile")[0], get("row"), [0], "runs/x", extra, folds=folds)
    assert all("{" not in a for run in runs for a in run.args), "a placeholder left unfilled"
    for run in runs:
        cfg = train_config.parse_args(run.args)  # raises on unknown flags / bad combinations
        assert cfg.model_dir == run.model_dir and cfg.seed == 0
        for key, value in run.options.items():
            assert train_config.parse_value(key, value) == getattr(cfg, key), key  # typed, as the trainer reads it
        if run.row == "zhang2016":
            assert (cfg.model, cfg.image_size, cfg.data_dir) == ("zhang2016", 99, "../shared/data/uav75_tiles")
    train_flags.FLAGS.unparse_flags()


def test_robustaug_rows_get_the_robust_augment_flagfile(monkeypatch):
    """The robustaug rows share configs/addons/robust_augment.cfg; its values reach the trainer, the
    row's own flags (epochs, the backbone) too, and the plain rows keep the recipe's augmentation."""
    from crack_tf.training import config as train_config
    from crack_tf.training import flags as train_flags

    monkeypatch.chdir(REPO)
    lines = [ln.strip() for ln in open(os.path.join(REPO, "configs", "ablation_loso.cfg")) if ln.startswith("--row=")]
    runs = ablate.build_runs("ours", "configs/crackmix.cfg", [ln.split("=", 1)[1] for ln in lines], [0], "runs/x",
                             [], folds=ablate.loso_folds("uav75:0.5,uavcrack:0.3,deepcrack:0.2"))
    parsed = {r.row: train_config.parse_args(r.args) for r in runs if r.fold == "all"}
    train_flags.FLAGS.unparse_flags()
    robust = [name for name in parsed if "robustaug" in name]
    assert sorted(robust) == ["robustaug", "simclr3000pre_robustaug_epochs48", "simclrpre_robustaug_epochs48",
                              "simclrpre_robustaug_epochs48_hardneg",
                              "synthpre3000_robustaug_epochs48",
                              "synthpre_robustaug", "synthpre_robustaug_epochs48", "synthpre_robustaug_epochs48_ema",
                              "synthpre_robustaug_epochs48_mixstyle"]
    for name in robust:
        cfg = parsed[name]
        assert (cfg.gamma, cfg.grayscale, cfg.hue, cfg.noise, cfg.jpeg, cfg.contrast) == (0.3, 0.1, 0.03, 6, 0.3, 0.3)
    assert parsed["synthpre_robustaug_epochs48"].epochs == 48 and parsed["synthpre_robustaug"].epochs == 16
    longer = parsed["synthpre3000_robustaug_epochs48"]
    assert longer.epochs == 48 and longer.weights == "runs/pretrain/loso_synth3000_all.weights.h5"
    simclr = parsed["simclrpre_robustaug_epochs48"]  # recommended since 2026-12-08: robust48, only the backbone differs
    assert simclr.weights == "runs/pretrain/loso_simclr_all.weights.h5"
    own = ("weights", "model_dir")
    assert {k: v for k, v in vars(simclr).items() if k not in own} == {
        k: v for k, v in vars(parsed["synthpre_robustaug_epochs48"]).items() if k not in own}
    assert parsed["synthpre"].gamma != 0.3 and parsed["synthpre"].jpeg != 0.3
    hardneg = parsed["simclrpre_robustaug_epochs48_hardneg"]  # the recommended row with hard background crops
    assert hardneg.hard_negatives == 0.5 and {k for k, v in vars(hardneg).items() if v != vars(simclr)[k]} == {
        "hard_negatives", "model_dir"}
    assert all(not parsed[name].hard_negatives for name in parsed if name != "simclrpre_robustaug_epochs48_hardneg")
    mixstyle = parsed["synthpre_robustaug_epochs48_mixstyle"]  # the robust48 row with MixStyle, nothing else
    assert mixstyle.mixstyle == ["layer1", "layer2"] and mixstyle.epochs == 48
    assert mixstyle.weights == parsed["synthpre_robustaug_epochs48"].weights
    assert all(not parsed[name].mixstyle for name in parsed if name != "synthpre_robustaug_epochs48_mixstyle")
    averaged = parsed["synthpre_robustaug_epochs48_ema"]  # the robust48 row with the averaged weights
    assert (averaged.ema_momentum, averaged.ema_bn_crops, averaged.epochs) == (0.998, 1024, 48)
    assert averaged.weights == parsed["synthpre_robustaug_epochs48"].weights and not averaged.mixstyle
    train_flags.validate(averaged)
    assert all(not parsed[name].ema_momentum for name in parsed if name != "synthpre_robustaug_epochs48_ema")


def _fake_run(model_dir, acc, seed, lr=0.01):
    os.makedirs(model_dir, exist_ok=True)
    m = {"accuracy": acc, "precision": 0.8, "recall": 0.6, "f1": 0.685, "missed_alarm_rate": 0.4,
         "false_alarm_rate": 0.2, "loss": 0.5}
    with open(os.path.join(model_dir, "run.json"), "w") as f:
        json.dump({"config": {"model": "resnet50_aspp", "insert_after": "layer1", "depth_multiplier": 4,
                              "rates": [2, 4, 8], "fusion": "max", "image_size": 64, "weights": "",
                              "epochs": 1, "seed": seed, "lr": lr},
                   "metrics": {"val": m, "train": dict(m, accuracy=0.99)}, "best": {"epoch": 3, "value": acc},
                   "wall_seconds": 10.0, "throughput_images_per_second": 100.0}, f)


def test_markdown_mean_std_and_paper_column(tmp_path):
    runs = ablate.build_runs("table3", "b.cfg", ["rates_2_4_8:lr=0.01", "rates_3_6_9:lr=0.01"], [0, 1],
                             str(tmp_path), [])
    _fake_run(runs[0].model_dir, 0.90, 0)
    _fake_run(runs[1].model_dir, 0.80, 1)
    results = ablate.write_results(str(tmp_path), "table3", runs)
    assert len(results) == 2
    md = (tmp_path / "results.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| rates_2_4_8"))
    assert "| 2 | 85.00 ± 7.07 | 99.00 ± 0.00 | 80.00 ± 0.00 |" in line and line.endswith("| 96.70 |")
    assert "| rates_3_6_9 | (not run) | 0 |" in md and "94.64" in md
    # A finished run whose config no longer matches the grid is reported stale, not silently reused.
    stale = ablate.build_runs("table3", "b.cfg", ["rates_2_4_8:lr=0.02"], [0], str(tmp_path), [])
    ablate.run_grid(stale, str(tmp_path), "table3", log=lambda s: None)
    assert stale[0].status == "stale"
    # Loader flags change no result (NON_IDENTITY_FLAGS, as the trainer resumes): the run is reused.
    again = ablate.build_runs("table3", "b.cfg", ["rates_2_4_8:lr=0.01"], [0], str(tmp_path),
                              ["--loader_workers=3", "--loader_processes=true"])
    run_json = pathlib.Path(again[0].model_dir) / "run.json"
    finished = json.loads(run_json.read_text())
    finished["config"].update(loader_workers=2, loader_processes=False)  # the run trained with others
    run_json.write_text(json.dumps(finished))
    ablate.run_grid(again, str(tmp_path), "table3", log=lambda s: None)
    assert again[0].status == "skipped"


TINY_BASE = """--model=zhang2016
--data_source=synthetic
--synthetic_train=32
--synthetic_val=16
--synthetic_size=64
--image_size=64
--batch_size=16
--epochs=1
--steps_per_epoch=2
--optimizer=sgd
--tensorboard=false
--checkpoint_every=1
"""


def _ablate_cmd(tmp_path):
    grid = tmp_path / "grid.cfg"
    grid.write_text(f"--table=ours\n--base_flagfile={tmp_path / 'base.cfg'}\n--output_dir={tmp_path / 'grid'}\n"
                    "--row=a:lr=0.01\n--row=b:lr=0.02\n")
    (tmp_path / "base.cfg").write_text(TINY_BASE + f"--data_dir={tmp_path / 'syn'}\n")
    return [sys.executable, os.path.join(REPO, "tools", "ablate.py"), f"--flagfile={grid}", "--seeds=0"]


@pytest.mark.slow
def test_grid_killed_after_first_run_resumes_without_redoing_it(tmp_path):
    from crack_tf.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "syn", 32, 16, 64, 0)
    cmd = _ablate_cmd(tmp_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = tmp_path / "grid" / "a_s0" / "run.json"
    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 240
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the tool and its trainer child, mid-grid
        proc.wait()
    assert first.exists(), (tmp_path / "first.log").read_text()[-3000:]
    assert not (tmp_path / "grid" / "b_s0" / "run.json").exists()
    mtime = first.stat().st_mtime_ns

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "skipped a_s0 (run.json exists)" in done.stdout
    assert "start   a_s0" not in done.stdout and "done    b_s0" in done.stdout
    assert first.stat().st_mtime_ns == mtime
    assert "summary: 1 done, 1 skipped" in done.stdout

    with open(tmp_path / "grid" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["a_s0", "b_s0"]
    for r in rows:
        rj = json.loads((tmp_path / "grid" / r["run"] / "run.json").read_text())
        for split in ("val", "train"):
            for k in ablate.METRICS:
                assert float(r[f"{split}_{k}"]) == pytest.approx(rj["metrics"][split][k], rel=1e-6)
        assert r["model"] == "zhang2016" and r["image_size"] == "64" and int(r["best_epoch"]) == 1
    md = (tmp_path / "grid" / "results.md").read_text()
    acc = json.loads((tmp_path / "grid" / "b_s0" / "run.json").read_text())["metrics"]["val"]["accuracy"]
    assert f"| b | zhang2016 | 1 | {100 * acc:.2f} |" in md
    assert (tmp_path / "grid" / "logs" / "b_s0.log").read_text().count("=== ") >= 1


FAKE_TRAINER = r"""
import json, os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
start = time.time()
time.sleep(0.6)
os.makedirs(args["model_dir"], exist_ok=True)
m = {"accuracy": 0.5 + 0.1 * int(args["seed"]), "precision": 0.5, "recall": 0.5, "f1": 0.5,
     "missed_alarm_rate": 0.5, "false_alarm_rate": 0.5, "loss": 0.7}
env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_MEM_FRACTION")}
json.dump({"config": {"model": "zhang2016", "seed": int(args["seed"]), "lr": float(args["lr"])},
           "metrics": {"val": m, "train": m}, "best": {"epoch": 1}, "env": env, "span": [start, time.time()]},
          open(os.path.join(args["model_dir"], "run.json"), "w"))
"""


def test_parallel_runs_overlap_and_get_their_own_gpu(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    monkeypatch.setattr(ablate.Launcher, "command", staticmethod(lambda run: [sys.executable, str(script), *run.args]))
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    runs = ablate.build_runs("ours", "b.cfg", ["a:lr=0.1", "b:lr=0.2"], [0, 1], str(tmp_path / "g"), [])
    lines = []
    ablate.run_grid(runs, str(tmp_path / "g"), "ours", parallel=4, gpus=["0", "1"], log=lines.append)
    assert [r.status for r in runs] == ["done"] * 4
    rjs = [json.loads((tmp_path / "g" / r.name / "run.json").read_text()) for r in runs]
    assert {rj["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] for rj in rjs} == {"0.45"}
    spans = sorted(rj["span"] for rj in rjs)
    assert spans[3][0] < spans[0][1]  # all four at the same time
    # Four slots on two GPUs: two runs per GPU, each allowed 0.9 / 2 of its memory.
    assert sorted(rj["env"]["CUDA_VISIBLE_DEVICES"] for rj in rjs) == ["0", "0", "1", "1"]
    md = (tmp_path / "g" / "results.md").read_text()
    assert "| a | zhang2016 | 2 | 55.00 ± 7.07 |" in md
    assert sum(ln.startswith("done") for ln in lines) == 4


def test_loso_expands_each_row_into_folds_with_per_fold_backbones():
    folds = ablate.loso_folds("uav75:0.5,uavcrack:0.3,deepcrack:0.2")
    assert [f.name for f in folds] == ["all", "no_uav75", "no_uavcrack", "no_deepcrack"]
    assert folds[2].data_dir == "uav75:0.5,deepcrack:0.2" and folds[2].left_out == "uavcrack"
    runs = ablate.build_runs("ours", "b.cfg", ["base:weights=bb/{fold}.h5;lr=0.1"], [0, 1], "out",
                             ["--epochs=2", "--adabn_eval_crops=64", "--save_eval_features"], folds=folds)
    assert len(runs) == 8 and [r.name for r in runs[:3]] == ["base_all_s0", "base_all_s1", "base_no_uav75_s0"]
    no_uavcrack = next(r for r in runs if r.name == "base_no_uavcrack_s1")
    assert no_uavcrack.args == ["--flagfile=b.cfg", "--weights=bb/no_uavcrack.h5", "--lr=0.1",
                                "--data_dir=uav75:0.5,deepcrack:0.2", "--eval_sources=uavcrack", "--seed=1",
                                "--model_dir=out/base_no_uavcrack_s1", "--epochs=2", "--adabn_eval_crops=64",
                                "--save_eval_features"]
    assert no_uavcrack.fold == "no_uavcrack" and no_uavcrack.options["weights"] == "bb/no_uavcrack.h5"
    assert "--eval_sources" not in " ".join(runs[0].args) and runs[0].options["data_dir"].count(",") == 2
    assert runs[0].args[-1] == "--epochs=2"  # the `all` fold has no left-out source to adapt to or save
    only = ablate.loso_folds("a,b,c", ["no_b"])
    assert [f.name for f in only] == ["no_b"] and only[0].train_sources == "a+c"
    with pytest.raises(ValueError, match="unknown fold"):
        ablate.loso_folds("a,b", ["no_z"])
    with pytest.raises(ValueError, match="two or more distinct"):
        ablate.loso_folds("a")
    with pytest.raises(ValueError, match="sets --data_dir / --eval_sources per fold"):
        ablate.build_runs("ours", "b.cfg", ["x:eval_sources=a"], [0], "out", [], folds=only)


def _fake_loso_run(run, left_out_acc: float, val_acc: float):
    os.makedirs(run.model_dir, exist_ok=True)
    m = {"accuracy": val_acc, "precision": 0.9, "recall": 0.9, "f1": 0.9, "missed_alarm_rate": 0.1,
         "false_alarm_rate": 0.1, "loss": 0.3}
    point = {"threshold": 0.3, "temperature": 1.2, "ece_before": 0.05, "ece_after": 0.04, "tta": "none",
             "val_at_threshold": dict(m), "val_at_threshold_by_source": {}}
    metrics = {"val": m, "train": m}
    sources = [s.split(":")[0] for s in run.options["data_dir"].split(",")]
    point["val_at_threshold_by_source"] = {s: dict(m) for s in sources}
    if run.fold.startswith("no_"):
        src = run.fold[3:]
        point["eval_sources_at_threshold_by_source"] = {src: dict(m, accuracy=left_out_acc, precision=0.7, recall=0.8)}
        metrics["eval_sources_by_source"] = {src: dict(m, accuracy=left_out_acc - 0.1)}
        if src == "b":  # AdaBN scored plain and blended at two target weights
            point["eval_sources_adabn_at_threshold_by_source"] = {src: dict(m, accuracy=left_out_acc + 0.1)}
            point["eval_sources_adabn_by_target_weight"] = {
                w: {src: dict(m, accuracy=left_out_acc + float(w) / 10)} for w in ("0.5", "0.25")}
    with open(os.path.join(run.model_dir, "run.json"), "w") as f:
        json.dump({"config": {"model": "resnet50_aspp", "seed": run.seed}, "metrics": metrics,
                   "operating_point": point, "operating_points": {"none": point}, "best": {}}, f)


def test_loso_table_scores_each_left_out_source_at_its_folds_threshold(tmp_path):
    folds = ablate.loso_folds("a,b,c")
    runs = ablate.build_runs("ours", "b.cfg", ["base:lr=0.1"], [0, 1], str(tmp_path), [], folds=folds)
    left_out = {("no_a", 0): 0.80, ("no_a", 1): 0.90, ("no_b", 0): 0.70, ("no_b", 1): 0.70,
                ("no_c", 0): 0.60, ("no_c", 1): 0.50}
    for run in runs:
        _fake_loso_run(run, left_out.get((run.fold, run.seed), 0.0), 0.95 if run.fold == "all" else 0.9)
    ablate.write_results(str(tmp_path), "ours", runs)
    md = (tmp_path / "results.md").read_text()
    line_a = next(ln for ln in md.splitlines() if ln.startswith("| base | a |"))
    assert "| 2 | 0.300 | 85.00 ± 7.07 [21.5, 148.5] | 70.00 ± 0.00 / 80.00 ± 0.00 | 75.00 ± 7.07 | - | - | 90.00 ± 0.00 |" \
        in line_a
    # AdaBN plain (70 + 10) and at target weights 0.25 and 0.5 (70 + 2.5, 70 + 5), lowest weight first
    line_b = next(ln for ln in md.splitlines() if ln.startswith("| base | b |"))
    assert "| 80.00 ± 0.00 | w 0.25: 72.50 ± 0.00; w 0.5: 75.00 ± 0.00 | 90.00 ± 0.00 |" in line_b
    # per seed: (80 + 70 + 60) / 3 = 70 and (90 + 70 + 50) / 3 = 70
    summary = next(ln for ln in md.splitlines() if ln.startswith("| base | 3 |"))
    assert "| 70.00 ± 0.00" in summary and "| 95.00 ± 0.00 |" in summary and "a 95.00 ± 0.00" in summary
    assert "| base [no_b] |" in md and "| base [all] |" in md  # one line per fold in the other tables
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {r["fold"] for r in rows} == {"all", "no_a", "no_b", "no_c"}
    assert float(next(r for r in rows if r["run"] == "base_no_c_s1")["thr_eval_c_accuracy"]) == 0.5
    assert float(next(r for r in rows if r["run"] == "base_no_b_s0")["thr_adabn_w0.5_b_accuracy"]) == 0.75
    # the blends' columns are not taken for sources of their own in the per-source tables
    assert "adabn_w" not in md.split("### Leave one source out")[0]
