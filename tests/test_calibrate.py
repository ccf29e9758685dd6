"""Site calibration: ``python -m crack_tf.calibrate``, its library and the few-shot curve tool.

The tiny model is fixed (not trained) so every margin is known from the tile's pixels:
feature 1 = ``200 - mean gray``, feature 2 = ``relu(R - G)`` (redness), and the head's logit
margin is ``0.1 * feature 1 - 10``: 0 at gray 100, so the stored threshold 0.5 calls every tile
darker than 100 a crack. The "new site" has dark concrete (background gray 80-90, margin 1-2)
and cracks darker still (gray 40-60, margin 4-6): at the stored point every background tile is a
false alarm, and the right threshold lies between sigmoid(2) and sigmoid(4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from crack_tf.calibrate import calibrate
from crack_tf.evaluation import few_shot, head_refit, site_calibration, stats
from crack_tf.model_meta import read_metadata, write_metadata
from crack_tf.predictor import load_model
from tests.tool_loader import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16
KERNEL = np.array([[0.0, 0.1], [0.0, 0.0]], np.float32)  # margin = 0.1 * (200 - gray) - 10
BIAS = np.array([0.0, -10.0], np.float32)


def tiny_model() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    feats = keras.layers.Conv2D(2, 1, activation="relu", name="feats")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(feats)
    logits = keras.layers.Dense(2, dtype="float32", name="logits")(pooled)
    model = keras.Model(inputs, logits)
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, :, 0] = -1 / 3
    kernel[0, 0, :, 1] = [1.0, -1.0, 0.0]
    model.get_layer("feats").set_weights([kernel, np.array([200.0, 0.0], np.float32)])
    model.get_layer("logits").set_weights([KERNEL, BIAS])
    return model


def margin_of(gray: float) -> float:
    return 0.1 * (200 - gray) - 10


def write_tiles(root, crack_grays, background_grays, red: int = 0):
    """``root/{crack,background}/*.png`` uniform tiles; crack tiles get ``red`` more R and less G."""
    for name, grays in (("crack", crack_grays), ("background", background_grays)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, g in enumerate(grays):
            tile = np.full((SIZE, SIZE, 3), g, np.uint8)
            if name == "crack" and red:
                tile[..., 0], tile[..., 1] = g + red // 2, g - red // 2
            Image.fromarray(tile).save(root / name / f"{name}_{i:03d}.png")
    return root


CRACK_GRAYS = [40, 44, 48, 52, 56, 60] * 2
BACKGROUND_GRAYS = [80, 82, 84, 86, 88, 90] * 3


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "final.keras"
    tiny_model().save(path)
    write_metadata(str(path), {"operating_point": {"threshold": 0.5, "temperature": 1.0, "rule": "f1"},
                               "tta": "none", "image_size": SIZE, "small_policy": "resize"})
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return write_tiles(tmp_path_factory.mktemp("site"), CRACK_GRAYS, BACKGROUND_GRAYS)


def test_calibrate_stores_the_new_threshold_with_its_provenance_and_keeps_the_model(model_file, site, tmp_path):
    before = model_file.read_bytes()
    out = tmp_path / "site.keras"
    res = calibrate(str(model_file), str(site), str(out), n_resamples=200)
    assert model_file.read_bytes() == before  # never modified in place
    margins = np.array([margin_of(g) for g in CRACK_GRAYS + BACKGROUND_GRAYS])
    labels = np.array([1] * len(CRACK_GRAYS) + [0] * len(BACKGROUND_GRAYS))
    expected = stats.pick_threshold(1 / (1 + np.exp(-margins)), labels, "f1")["threshold"]
    point = read_metadata(str(out))["operating_point"]
    assert point == json.loads(json.dumps(res["point"])) and res["export"] is None and res["skipped"] == []
    assert point["threshold"] == pytest.approx(expected, abs=1e-5)
    assert 1 / (1 + np.exp(-2)) < point["threshold"] < 1 / (1 + np.exp(-4))  # between the two classes
    assert point["temperature"] == 1.0 and point["rule"] == "f1" and point["tta"] == "none"
    rec = point["site_calibration"]
    assert rec["examples"] == 30 and rec["class_counts"] == {"background": 18, "crack": 12}
    assert rec["previous"]["threshold"] == 0.5 and rec["fit"] == "threshold" and rec["date"].startswith("20")
    assert rec["before"]["accuracy"] == pytest.approx(12 / 30) and rec["after"]["accuracy"] == 1.0
    assert rec["cross_validated"]["accuracy"] == 1.0  # the classes are separated in every fold
    assert rec["verdict"] == "recalibrate"  # 1.0 cross-validated against 0.4 at the stored 0.5
    lo, hi = rec["before"]["ci95"]["accuracy"]
    assert lo < 12 / 30 < hi
    assert len(rec["files_sha256"]) == 64 and rec["files"] == 30
    loaded = load_model(str(out))
    assert loaded.threshold == pytest.approx(point["threshold"]) and "site sample of 30 tiles" in loaded.threshold_source
    dark_background = np.full((1, SIZE, SIZE, 3), 85, np.uint8)
    assert not loaded.is_crack(loaded.predict(dark_background))[0]
    assert load_model(str(model_file)).is_crack(load_model(str(model_file)).predict(dark_background))[0]


def test_verdict_keeps_the_stored_point_when_the_new_fit_does_not_beat_it():
    from crack_tf.evaluation import site_calibration as sc

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 20)
    margins = np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1.2, labels.size)  # overlapping classes
    stored = {"threshold": 0.5, "temperature": 1.0, "rule": "f1"}  # already the right point for them
    point = sc.calibrate_sample(margins, labels, stored, n_resamples=50)
    rec = point["site_calibration"]
    assert rec["cross_validated"]["accuracy"] <= rec["before"]["accuracy"]
    assert rec["verdict"] == "keep the stored point"
    assert any(line.startswith("verdict: keep the stored point") and "use the old one" in line
               for line in sc.summary(point))
    assert sc.verdict(0.8, 0.81) == "recalibrate" and sc.verdict(0.8, 0.8) == "keep the stored point"


def test_prior_shrinks_a_noisy_fit_towards_the_stored_point_but_not_a_clearly_better_one():
    from crack_tf.evaluation import site_calibration as sc

    stored = {"threshold": 0.5, "temperature": 2.0, "rule": "f1"}
    fitted = {"threshold": 1 / (1 + np.exp(-1.0)), "temperature": 2.0}  # decision margin 2.0 (stored: 0)
    t = sc.shrunk_threshold(fitted, stored, n=50, prior_tiles=50)
    assert 2.0 * np.log(t / (1 - t)) == pytest.approx(1.0)  # halfway in margin space
    assert sc.shrunk_threshold(fitted, stored, n=150, prior_tiles=50) == pytest.approx(1 / (1 + np.exp(-0.75)))
    # overlapping classes near the stored point: the prior applies and pulls the threshold back
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 20)
    margins = np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1.5, labels.size)
    plain = sc.fit_point(margins, labels, "f1", "threshold", stored)
    shrunk = sc.fit_point(margins, labels, "f1", "threshold", stored, prior_tiles=50)
    assert shrunk["prior"] == "applied" and shrunk["prior_tiles"] == 50
    assert abs(shrunk["threshold"] - 0.5) < abs(plain["threshold"] - 0.5)
    # a stored point that calls every background tile a crack: significantly worse, the prior is dropped
    separated = np.where(labels == 1, 4.0, 2.0)
    wrong = {"threshold": 0.5, "temperature": 1.0, "rule": "f1"}
    point = sc.fit_point(separated, labels, "f1", "threshold", wrong, prior_tiles=50)
    assert point["prior"].startswith("not applied") and 1 / (1 + np.exp(-2)) < point["threshold"] < 1 / (1 + np.exp(-4))
    assert sc.fit_point(separated, labels, "f1", "threshold", None, prior_tiles=50).get("prior") is None
    with pytest.raises(ValueError, match="prior_tiles"):
        sc.fit_point(margins, labels, "f1", "threshold", stored, prior_tiles=-1)


def test_the_files_hash_follows_the_files(model_file, tmp_path):
    def digest(root):
        return site_calibration.files_sha256(
            [(os.path.relpath(os.path.join(d, f), root), os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs])

    a = write_tiles(tmp_path / "a", CRACK_GRAYS, BACKGROUND_GRAYS)
    b = write_tiles(tmp_path / "b", CRACK_GRAYS, BACKGROUND_GRAYS)
    assert digest(a) == digest(b)  # content and names, not where the folder is
    Image.fromarray(np.full((SIZE, SIZE, 3), 81, np.uint8)).save(b / "background" / "background_000.png")
    assert digest(a) != digest(b)
    c = write_tiles(tmp_path / "c", CRACK_GRAYS, BACKGROUND_GRAYS)
    os.rename(c / "crack" / "crack_000.png", c / "background" / "crack_000.png")  # same bytes, other label
    assert digest(a) != digest(c)
    ra = calibrate(str(model_file), str(a), str(tmp_path / "a.keras"), n_resamples=0)
    rb = calibrate(str(model_file), str(b), str(tmp_path / "b.keras"), n_resamples=0)
    assert ra["point"]["site_calibration"]["files_sha256"] == digest(a)
    assert rb["point"]["site_calibration"]["files_sha256"] == digest(b) != digest(a)


def test_refusals_say_what_to_add(model_file, tmp_path):
    few = write_tiles(tmp_path / "few", CRACK_GRAYS[:4], BACKGROUND_GRAYS[:6])
    with pytest.raises(ValueError, match=r"10 labelled tiles .* fewer than --min_examples=20: add at least 10 more"):
        calibrate(str(model_file), str(few), str(tmp_path / "x.keras"))
    one = write_tiles(tmp_path / "one", [], BACKGROUND_GRAYS + BACKGROUND_GRAYS)
    with pytest.raises(ValueError, match=r"no usable 'crack' images .* add images of class \['crack'\]"):
        calibrate(str(model_file), str(one), str(tmp_path / "x.keras"))
    with pytest.raises(ValueError, match="no 'crack' tiles .* add at least 1 labelled crack tile"):
        site_calibration.check_sample([0] * 30)
    with pytest.raises(ValueError, match="not a directory"):
        calibrate(str(model_file), str(tmp_path / "missing"), str(tmp_path / "x.keras"))
    with pytest.raises(ValueError, match="is --model"):
        calibrate(str(model_file), str(few), str(model_file))
    (tmp_path / "taken.keras").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        calibrate(str(model_file), str(few), str(tmp_path / "taken.keras"))
    with pytest.raises(ValueError, match="precision@R"):
        calibrate(str(model_file), str(few), str(tmp_path / "x.keras"), rule="recall")
    assert not (tmp_path / "x.keras").exists()


@pytest.mark.slow
def test_command_refuses_with_exit_2_then_predict_uses_the_new_threshold(model_file, site, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def cmd(module, *args):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env=env)

    one = write_tiles(tmp_path / "one", CRACK_GRAYS * 3, [])
    bad = cmd("crack_tf.calibrate", f"--model={model_file}", f"--data={one}", f"--out={tmp_path / 'x.keras'}")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "'background'" in bad.stderr and not (tmp_path / "x.keras").exists()
    out = tmp_path / "site.keras"
    good = cmd("crack_tf.calibrate", f"--model={model_file}", f"--data={site}", f"--out={out}", "--bootstrap=100")
    assert good.returncode == 0, good.stderr[-2000:]
    threshold = read_metadata(str(out))["operating_point"]["threshold"]
    assert f"threshold 0.5 -> {threshold:.4g}" in good.stdout and "cross-validated" in good.stdout
    assert "prior 50 tiles (not applied: the fitted point is significantly better" in good.stdout
    pred = cmd("crack_tf.predict", f"--model={out}", str(site), "--recursive", f"--csv={tmp_path / 'p.csv'}")
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert f"threshold {threshold:.4g} (stored in the model: f1 on a site sample of 30 tiles" in pred.stderr
    import csv

    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 30 and all(float(r["threshold"]) == pytest.approx(threshold, abs=1e-6) for r in rows)
    assert all((r["is_crack"] == "True") == ("/crack/" in r["path"]) for r in rows)  # right on every tile


def test_temperature_fit_and_tta_and_the_rule_default_to_the_stored_ones(model_file, site, tmp_path):
    path = tmp_path / "m.keras"
    path.write_bytes(model_file.read_bytes())
    write_metadata(str(path), {"operating_point": {"threshold": 0.5, "temperature": 2.0, "rule": "precision@0.5"},
                               "tta": "flips"})
    res = calibrate(str(path), str(site), str(tmp_path / "o.keras"), n_resamples=0)
    point = res["point"]
    assert point["rule"] == "precision@0.5" and point["tta"] == "flips" and point["temperature"] == 2.0
    assert read_metadata(str(tmp_path / "o.keras"))["tta"] == "flips"
    fitted = calibrate(str(path), str(site), str(tmp_path / "t.keras"), fit="temperature+threshold", rule="f1",
                       n_resamples=0)["point"]
    assert fitted["temperature"] != 2.0 and fitted["rule"] == "f1" and fitted["site_calibration"]["after"]["accuracy"] == 1


@pytest.mark.slow  # 1.6-3.9 s on the shared 2 cores
def test_last_layer_refit_learns_what_the_old_head_ignores(model_file, tmp_path):
    # Red cracks on concrete of one gray: the old head (gray only) scores every tile alike.
    red = write_tiles(tmp_path / "red", [70] * 15, [70] * 25, red=40)
    thr = calibrate(str(model_file), str(red), str(tmp_path / "t.keras"), n_resamples=0)["point"]
    out = tmp_path / "head.keras"
    res = calibrate(str(model_file), str(red), str(out), fit="last_layer", l2=0.01, n_resamples=0)["point"]
    assert thr["site_calibration"]["cross_validated"]["accuracy"] <= 25 / 40
    assert res["site_calibration"]["after"]["accuracy"] == 1.0
    assert res["site_calibration"]["cross_validated"]["accuracy"] == 1.0 and res["site_calibration"]["l2"] == 0.01
    reloaded = keras.saving.load_model(out, compile=False)
    kernel, bias = reloaded.get_layer("logits").get_weights()
    assert kernel[1, 1] - kernel[1, 0] > 0.01  # weight on redness, for crack
    np.testing.assert_allclose(kernel.sum(1), KERNEL.sum(1), atol=1e-6)  # the logits' sum is kept
    loaded = load_model(str(out))
    tiles = np.stack([np.array(Image.open(p)) for p in sorted((red / "crack").iterdir())[:2]]
                     + [np.array(Image.open(p)) for p in sorted((red / "background").iterdir())[:2]])
    assert loaded.is_crack(loaded.predict(tiles)).tolist() == [True, True, False, False]


def test_refit_head_is_the_penalised_logistic_regression():
    from scipy import optimize

    rng = np.random.default_rng(0)
    f = rng.normal(0, 1, (1, 60, 3))
    y = (f[0] @ [1.5, -1.0, 0.0] + rng.normal(0, 1, 60) > 0).astype(int)
    kernel, bias = rng.normal(0, 0.1, (3, 2)), np.array([0.1, -0.2])
    l2 = 0.3
    new_kernel, new_bias = head_refit.refit_head(f, y, kernel, bias, l2)
    w_old, b_old = kernel[:, 1] - kernel[:, 0], bias[1] - bias[0]
    scale = l2 * np.mean(np.sum(f[0] ** 2, -1))

    def objective(theta):  # written from the softmax of the two logits, numeric gradients
        k = kernel + np.stack([-theta[:3] / 2, theta[:3] / 2], 1)
        b = bias + np.array([-theta[3] / 2, theta[3] / 2])
        logits = f[0] @ k + b
        logp = logits - np.logaddexp(logits[:, :1], logits[:, 1:])
        return -np.mean(logp[np.arange(60), y]) + 0.5 * scale * theta[:3] @ theta[:3]

    ref = optimize.minimize(objective, np.zeros(4), method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-12,
                                                                                    "maxiter": 20000}).x
    w_new, b_new = new_kernel[:, 1] - new_kernel[:, 0], new_bias[1] - new_bias[0]
    np.testing.assert_allclose(w_new - w_old, ref[:3], atol=1e-4)
    assert b_new - b_old == pytest.approx(ref[3], abs=1e-4)
    assert np.abs(w_new - w_old).max() > 0.1  # the data moved it
    kept, _ = head_refit.refit_head(f, y, kernel, bias, l2=1e6)
    np.testing.assert_allclose(kept, kernel, atol=1e-4)  # a strong pull keeps the old weights


def _shifted(seed=0, n=600, shift=3.0):
    """A target site whose margins are shifted by ``shift``: crack ~ N(1 + s, 1), background ~ N(-1 + s, 1)."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.5).astype(int)
    return (np.where(y == 1, 1.0, -1.0) + shift + rng.normal(0, 1, n))[None], y


def test_few_shot_curve_recovers_the_known_best_threshold():
    from scipy.stats import norm

    margins, y = _shifted()
    rows = few_shot.few_shot_curve(margins, y, ns=(0, 10, 100), draws=20, seed=1)
    by_n = {r["n"]: r for r in rows}
    # Stored threshold 0.5 = margin 0: background is right only below 0, i.e. with probability Phi(-2).
    expected_zero = np.mean(np.where(y == 1, margins[0] > 0, margins[0] <= 0))
    assert by_n[0]["accuracy_mean"] == pytest.approx(expected_zero) and by_n[0]["accuracy_std"] == 0
    assert expected_zero == pytest.approx(0.5 * (norm.cdf(4) + norm.cdf(-2)), abs=0.05)
    best = norm.cdf(1)  # the threshold at margin = shift: each class right with probability Phi(1)
    assert by_n[100]["accuracy_mean"] == pytest.approx(best, abs=0.03) and by_n[100]["accuracy_std"] < 0.03
    assert by_n[0]["accuracy_mean"] < by_n[10]["accuracy_mean"] < by_n[100]["accuracy_mean"] + 0.01
    assert by_n[100]["rest"] == 500 and by_n[10]["draws"] == 20 and by_n[10]["fallbacks"] == 0


def _feature_site(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Features [2 views, n, 4] where the label lives in feature 0, and a head that reads only
    feature 1 (noise): no threshold of the old head's margins can sort the site."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.5).astype(int)
    f = rng.normal(0, 1, (2, n, 4))
    f[:, :, 0] += np.where(y == 1, 2.0, -2.0)
    kernel = np.zeros((4, 2), np.float32)
    kernel[1] = [-0.5, 0.5]
    return f.astype(np.float32), y, (kernel, np.zeros(2, np.float32))


def test_few_shot_last_layer_learns_what_the_old_head_ignores():
    features, y, head = _feature_site()
    base = {"threshold": 0.5, "temperature": 1.0}
    rows = {fit: {r["n"]: r for r in few_shot.few_shot_curve(
        None if fit == "last_layer" else head_refit.head_margins(features, *head), y, ns=(0, 50), draws=5, seed=2,
        base_point=base, fit=fit, features=features, head=head, l2=0.01)} for fit in ("threshold", "last_layer")}
    assert rows["last_layer"][0]["accuracy_mean"] == pytest.approx(rows["threshold"][0]["accuracy_mean"])
    assert rows["threshold"][50]["accuracy_mean"] < 0.65  # the old margins are noise for this site
    assert rows["last_layer"][50]["accuracy_mean"] > 0.9 > rows["last_layer"][0]["accuracy_mean"]
    with pytest.raises(ValueError, match="needs the tiles' features"):
        few_shot.few_shot_curve(None, y, fit="last_layer")


def test_grouped_draws_keep_every_photo_on_one_side():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(20)], 15)  # 20 photos of 15 tiles
    y = (rng.uniform(size=groups.size) < 0.3).astype(int)
    for n in (10, 50, 100):
        for _ in range(20):
            picked, rest = few_shot.draw_grouped(y, groups, n, rng)
            assert picked.size == n and 0 < y[picked].sum() < n
            assert not set(groups[picked]) & set(groups[rest])  # no scored tile shares a photo with the sample
            assert set(groups[rest]) | set(groups[picked]) <= set(groups) and rest.size % 15 == 0
            assert rest.size >= groups.size - 15 * (n // 15 + 2)  # only the photos needed were taken
    with pytest.raises(ValueError, match="cannot give 295 tiles"):
        few_shot.draw_grouped(y, groups, 295, rng)
    features, yf, head = _feature_site(n=300)
    rows = few_shot.few_shot_curve(None, yf, ns=(0, 50, 290), draws=4, fit="last_layer", features=features,
                                   head=head, l2=0.01, groups=groups)
    assert [r["n"] for r in rows] == [0, 50]  # 290 tiles leave no photo to score: no row
    assert rows[1]["rest"] <= 300 - 60 and rows[1]["accuracy_mean"] > 0.9


def test_few_shot_tool_last_layer_reads_features_and_names_runs_without_them(tmp_path, capsys):
    tool = load_tool("few_shot_curve")
    features, y, head = _feature_site(seed=4)
    margins = head_refit.head_margins(features, *head).astype(np.float32)
    for name, with_features in (("loso_f", True), ("loso_m", False)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        np.savez(run / "margins.npz", margins=margins, labels=y, sources=np.array(["site"] * y.size),
                 split=np.array(["eval"] * y.size))
        (run / "run.json").write_text(json.dumps({"operating_point": {"threshold": 0.5, "temperature": 1.0,
                                                                      "rule": "f1", "tta": "flips"}}))
        if with_features:
            np.savez(run / "features.npz", features=features.astype(np.float16), labels=y, kernel=head[0],
                     bias=head[1])
    rows = tool.main_args([f"--runs={tmp_path / 'runs' / 'loso_*'}", f"--out={tmp_path / 'curve'}", "--ns=0,50",
                           "--draws=3", "--fit=threshold,last_layer", "--prior_tiles=0", "--l2=0.01,100"])
    assert {(r["run"], r["fit"]) for r in rows} == {("loso_f", "threshold"), ("loso_f", "last_layer, l2 0.01"),
                                                     ("loso_f", "last_layer, l2 100"), ("loso_m", "threshold")}
    assert "loso_m has no features.npz" in capsys.readouterr().err
    at_50 = {r["fit"]: r["accuracy_mean"] for r in rows if r["run"] == "loso_f" and r["n"] == 50}
    assert at_50["last_layer, l2 0.01"] > at_50["threshold"] + 0.25
    assert at_50["last_layer, l2 100"] < at_50["threshold"] + 0.1  # a strong pull keeps the old (noise) head
    np.savez(tmp_path / "runs" / "loso_f" / "features.npz", features=features, labels=1 - y, kernel=head[0],
             bias=head[1])
    with pytest.raises(ValueError, match="not those of the run's left-out margins"):
        tool.main_args([f"--runs={tmp_path / 'runs' / 'loso_f'}", f"--out={tmp_path / 'c2'}", "--fit=last_layer"])
    np.savez(tmp_path / "runs" / "loso_f" / "features.npz", features=features, labels=y, kernel=head[0],
             bias=head[1], groups=np.repeat([f"site/p{i}" for i in range(40)], 10))
    grouped = tool.main_args([f"--runs={tmp_path / 'runs' / 'loso_f'}", f"--out={tmp_path / 'c3'}", "--ns=0,50",
                              "--draws=3", "--fit=threshold,last_layer", "--prior_tiles=0"])
    assert all(r["rest"] == 350 for r in grouped if r["n"] == 50)  # 5 whole photos of 10 tiles taken, both fits
    with pytest.raises(ValueError, match="--fit=bogus"):
        tool.main_args([f"--runs={tmp_path / 'runs' / 'loso_m'}", f"--out={tmp_path / 'c2'}", "--fit=bogus"])


def test_draws_are_stratified_from_ten_tiles():
    y = np.array([1] * 5 + [0] * 95)
    rng = np.random.default_rng(0)
    for n in (10, 25):
        for _ in range(50):
            picked = few_shot.draw_sample(y, n, rng)
            assert len(set(picked.tolist())) == n and 1 <= y[picked].sum() < n
    assert few_shot.draw_sample(y, 25, rng).tolist() != few_shot.draw_sample(y, 25, rng).tolist()


def test_few_shot_tool_reads_runs_and_writes_table_and_plot(tmp_path):
    tool = load_tool("few_shot_curve")
    for i, shift in enumerate((3.0, -2.0)):
        run = tmp_path / "runs" / f"loso_{i}"
        run.mkdir(parents=True)
        m_eval, y_eval = _shifted(seed=i, n=300, shift=shift)
        m_val, y_val = _shifted(seed=10 + i, n=100, shift=0.0)
        np.savez(run / "margins.npz", margins=np.concatenate([m_val, m_eval], 1).astype(np.float32),
                 labels=np.r_[y_val, y_eval], sources=np.array(["a"] * 100 + [f"site{i}"] * 300),
                 split=np.array(["val"] * 100 + ["eval"] * 300))
        (run / "run.json").write_text(json.dumps({"operating_point": {"threshold": 0.5, "temperature": 1.0,
                                                                      "rule": "f1", "tta": "none"}}))
    out = tmp_path / "curve"
    both = tool.main_args([f"--runs={tmp_path / 'runs' / 'loso_*'}", f"--out={out}", "--ns=0,25,100", "--draws=5"])
    assert {r["fit"] for r in both} == {"threshold", "threshold, prior 50"}  # the default: plain and shrunk
    shrunk = {r["run"]: r["accuracy_mean"] for r in both if r["n"] == 100 and r["fit"] == "threshold, prior 50"}
    stored = {r["run"]: r["accuracy_mean"] for r in both if r["n"] == 0 and r["fit"] == "threshold, prior 50"}
    assert all(shrunk[k] > stored[k] + 0.1 for k in shrunk)  # far-off stored point: the prior is dropped
    rows = tool.main_args([f"--runs={tmp_path / 'runs' / 'loso_*'}", f"--out={out}", "--ns=0,25,100", "--draws=5",
                           "--prior_tiles=0"])
    assert {(r["run"], r["left_out"]) for r in rows} == {("loso_0", "site0"), ("loso_1", "site1")}
    assert len(rows) == 6 and all(r["fit"] == "threshold" for r in rows)
    gain = {r["run"]: r["accuracy_mean"] for r in rows if r["n"] == 100}
    zero = {r["run"]: r["accuracy_mean"] for r in rows if r["n"] == 0}
    assert all(gain[k] > zero[k] + 0.1 for k in gain)  # both shifted sites gain from calibration
    assert (out / "few_shot.png").stat().st_size > 1000
    table = (out / "few_shot.md").read_text()
    assert "| loso_0 | site0 | threshold | 100 |" in table
    assert len((out / "few_shot.csv").read_text().splitlines()) == 7
    by_source = tool.per_source(rows)  # one curve per left-out source: each over its one run here
    assert set(by_source) == {"site0, threshold", "site1, threshold"}
    assert by_source["site0, threshold"][-1]["accuracy_mean"] == pytest.approx(gain["loso_0"])
    assert (out / "few_shot_by_source.png").stat().st_size > 1000
    assert "| site1, threshold | 1 |" in (out / "few_shot_by_source.md").read_text()
    with pytest.raises(ValueError, match="no run folder"):
        tool.main_args([f"--runs={tmp_path / 'nothing_*'}", f"--out={out}"])


@pytest.mark.slow
def test_export_answers_is_crack_at_the_calibrated_threshold(model_file, site, tmp_path):
    tf = pytest.importorskip("tensorflow")
    res = calibrate(str(model_file), str(site), str(tmp_path / "site.keras"), export_dir=str(tmp_path / "exp"),
                    n_resamples=0)
    t = res["point"]["threshold"]
    loaded = tf.saved_model.load(res["export"])
    grays = np.array([50, 70, 85, 95, 110], np.float32)
    images = np.ones((5, SIZE, SIZE, 3), np.float32) * grays[:, None, None, None]
    out = loaded.signatures["predict_images"](images=tf.constant(images))
    p = out["crack_probability"].numpy()
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-np.array([margin_of(g) for g in grays]))), atol=1e-5)
    np.testing.assert_array_equal(out["is_crack"].numpy(), p > np.float32(t))
    assert out["is_crack"].numpy().tolist() == [True, True, False, False, False]  # 0.5 would flag 85 and 95
    meta = json.loads(open(os.path.join(res["export"], "assets", "crack_tf_metadata.json")).read())
    assert meta["threshold"] == pytest.approx(t) and meta["operating_point"]["site_calibration"]["examples"] == 30
    assert meta["image_size"] == SIZE
    assert load_model(res["export"]).threshold == pytest.approx(t)


def test_site_margins_tool_writes_what_the_curve_tool_reads(model_file, tmp_path):
    from crack_tf.data import DataConfig
    from crack_tf.data.photo_input import eval_tiles
    from tests.photo_data import write_source

    for i, name in enumerate(("site_a", "site_b")):
        write_source(tmp_path / "data" / name, {"train": 1, "val": 2}, seed=i)
    run = tmp_path / "run"
    run.mkdir()
    (run / "final.keras").write_bytes(model_file.read_bytes())
    (run / "run.json").write_text(json.dumps({
        "config": {"data_dir": "site_a", "eval_sources": "site_b", "data_root": str(tmp_path / "data"),
                   "val_tile": 32},
        "operating_point": {"threshold": 0.5, "temperature": 1.0, "rule": "f1", "tta": "none"}}))
    out = load_tool("site_margins").main_args([f"--run={run}"])
    with np.load(out) as z:
        margins, labels, sources, split = z["margins"], z["labels"], z["sources"], z["split"]
    def cut(source, split):
        return eval_tiles(DataConfig(source="photos", path=source, data_root=str(tmp_path / "data"),
                                     image_size=SIZE, val_tile=32), split)[1][0]

    tiles = [cut("site_a", "val"), cut("site_b", "val"), cut("site_b", "train")]  # the left-out: val + train
    assert margins.shape == (1, sum(len(t.labels) for t in tiles)) and set(labels.tolist()) == {0, 1}
    np.testing.assert_array_equal(labels, np.concatenate([t.labels for t in tiles]))
    assert split.tolist() == ["val"] * len(tiles[0].labels) + ["eval"] * (len(tiles[1].labels) + len(tiles[2].labels))
    assert set(sources[split == "eval"].tolist()) == {"site_b"}
    gray = np.concatenate([t.images.reshape(len(t.labels), -1).astype(np.float64).mean(1) for t in tiles])
    np.testing.assert_allclose(margins[0], 0.1 * (200 - gray) - 10, atol=1e-3)  # the model's known margin
    rows = load_tool("few_shot_curve").main_args([f"--runs={run}", f"--out={tmp_path / 'curve'}", "--ns=0,2",
                                                  "--draws=3", "--prior_tiles=0"])
    assert [r["left_out"] for r in rows] == ["site_b", "site_b"] and rows[0]["rest"] == int((split == "eval").sum())


def test_photos_and_masks_of_a_site_are_cut_into_tiles_and_hashed(model_file, tmp_path):
    from tests.photo_data import write_source

    write_source(tmp_path / "site_c", {"val": 5}, size=256)
    res = calibrate(str(model_file), "site_c", str(tmp_path / "c.keras"), source="photos",
                    data_root=str(tmp_path), min_examples=10, n_resamples=0)
    rec = res["point"]["site_calibration"]
    assert rec["source"] == "photos" and rec["split"] == "val" and rec["files"] == 10  # 5 photos + 5 masks
    assert rec["class_counts"]["crack"] >= 5 and rec["class_counts"]["background"] >= 5
    names = [(f"site_c/val/{kind}/p{i:02d}.png", str(tmp_path / "site_c" / "val" / kind / f"p{i:02d}.png"))
             for i in range(5) for kind in ("images", "masks")]
    assert rec["files_sha256"] == site_calibration.files_sha256(names)
    assert load_model(str(tmp_path / "c.keras")).threshold == pytest.approx(res["point"]["threshold"])


def test_unreadable_tiles_are_left_out_named_and_exit_1(model_file, tmp_path, capsys):
    from crack_tf.cli import report_left_out

    data = write_tiles(tmp_path / "site", CRACK_GRAYS, BACKGROUND_GRAYS)
    (data / "crack" / "broken.png").write_bytes(b"\x89PNG not really")
    res = calibrate(str(model_file), str(data), str(tmp_path / "o.keras"), n_resamples=0)
    assert [os.path.basename(p) for p, _ in res["skipped"]] == ["broken.png"]
    rec = res["point"]["site_calibration"]
    assert rec["examples"] == 30 and rec["files"] == 30 and rec["skipped"] == 1
    assert report_left_out("calibrate", res["skipped"]) == 1 and report_left_out("calibrate", []) == 0
    assert "calibrate: 1 file(s) could not be used" in capsys.readouterr().err


def test_calibrate_runs_on_jax_without_tensorflow(model_file, site, tmp_path):
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "from crack_tf.calibrate import calibrate\n"
            f"r = calibrate({str(model_file)!r}, {str(site)!r}, {str(tmp_path / 'j.keras')!r}, fit='last_layer', "
            "n_resamples=0)\n"
            "import keras; print(keras.backend.backend(), r['point']['site_calibration']['after']['accuracy'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["jax", "1.0"]
    assert load_model(str(tmp_path / "j.keras")).threshold == read_metadata(str(tmp_path / "j.keras"))[
        "operating_point"]["threshold"]
