"""``calibrate --fit=finetune``: the top of the network fine-tuned on a site's sample.

The tiny model (nested like the ResNet backbone: ``backbone`` = stem -> feats -> feats_bn, then
pooling and the head) sees gray (feature 1 = ``200 - mean gray``) and redness (``relu(R - G)``);
the head's margin is ``0.1 * feature 1 - 10``. The "site" has blue cracks: crack tiles (R, G, B) =
(50, 70, 90), background (70, 70, 70), the same gray and no redness, so every tile gets the same
margin: no threshold and no re-fitted head can tell them apart, while fine-tuning ``feats`` can.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from crack_tf.calibrate import calibrate
from crack_tf.evaluation import site_finetune as sf
from crack_tf.model_meta import write_metadata
from crack_tf.predictor import load_model

SIZE = 16
CRACK, BACKGROUND = (50, 70, 90), (70, 70, 70)


def tiny_model() -> keras.Model:
    image = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="stem")(image)
    x = keras.layers.Conv2D(2, 1, activation="relu", name="feats")(x)
    x = keras.layers.BatchNormalization(name="feats_bn")(x)
    backbone = keras.Model(image, x, name="backbone")
    outer = keras.Input((SIZE, SIZE, 3))
    y = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone(outer))
    logits = keras.layers.Dense(2, dtype="float32", name="logits")(y)
    model = keras.Model(outer, logits)
    model.get_layer("backbone").get_layer("stem").set_weights([np.eye(3, dtype=np.float32)[None, None]])
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, :, 0] = -1 / 3
    kernel[0, 0, :, 1] = [1.0, -1.0, 0.0]
    model.get_layer("backbone").get_layer("feats").set_weights([kernel, np.array([200.0, 0.0], np.float32)])
    model.get_layer("logits").set_weights([np.array([[0.0, 0.1], [0.0, 0.0]], np.float32),
                                           np.array([0.0, -10.0], np.float32)])
    return model


def site_arrays(n_crack: int = 12, n_background: int = 18) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([np.broadcast_to(np.array(c, np.float32), (SIZE, SIZE, 3)) for c in
                       [CRACK] * n_crack + [BACKGROUND] * n_background])
    return images, np.array([1] * n_crack + [0] * n_background)


def test_trainable_from_opens_nested_models_and_keeps_batchnorm_frozen():
    model = tiny_model()
    assert [layer.name for layer in sf.leaf_layers(model)][-5:] == ["stem", "feats", "feats_bn", "avg_pool", "logits"]
    count = sf.set_trainable_from(model, "feats")
    assert sorted(w.path for w in model.trainable_weights) == ["feats/bias", "feats/kernel", "logits/bias",
                                                               "logits/kernel"]
    assert count == 3 * 2 + 2 + 2 * 2 + 2
    assert sf.set_trainable_from(model, "logits") == 6
    with pytest.raises(ValueError, match="names no layer.*'feats'.*'logits'.*'stem'"):
        sf.set_trainable_from(model, "conv5_")


def test_batchnorm_inside_a_trained_layer_stays_frozen():
    """The ASPP layer is one leaf with its own BatchNorms: training it must not train them."""
    from crack_tf.models.aspp import ASPP

    image = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 1, name="conv5_a")(image)
    x = ASPP(filters=4, depth_multiplier=1, name="aspp_layer4")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, keras.layers.Dense(2, name="logits")(x))
    sf.set_trainable_from(model, "conv5_")
    paths = [w.path for w in model.trainable_weights]
    assert any(p.startswith("aspp_layer4") for p in paths)  # the ASPP's convolutions train
    assert not [p for p in paths if "gamma" in p or "beta" in p]  # its norms do not
    norms = [layer for layer in model._flatten_layers(recursive=True) if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)


def test_finetuning_learns_what_the_features_miss_and_starts_again_from_the_model():
    model = tiny_model()
    images, labels = site_arrays()
    before = sf.array_margins(model, images, "d4", batch_size=8)
    assert before.shape == (8, 30) and np.ptp(before) < 1e-4  # every tile alike: nothing to threshold
    frozen = {name: [w.copy() for w in model.get_layer("backbone").get_layer(name).get_weights()]
              for name in ("stem", "feats_bn")}
    tuner = sf.SiteFinetuner(model, "feats", lr=0.05, steps=60, batch_size=8)
    losses = tuner.fit(images, labels, seed=1)
    after = sf.array_margins(model, images, "d4", batch_size=8).mean(axis=0)
    assert losses[-1] < 0.2 * losses[0]
    assert after[labels == 1].min() > after[labels == 0].max()  # now separable
    for name, weights in frozen.items():  # the stem (before --finetune_from) and BatchNorm are kept
        for old, new in zip(weights, model.get_layer("backbone").get_layer(name).get_weights()):
            np.testing.assert_array_equal(old, new)
    again = tuner.fit(images, labels, seed=1)  # from the model's own weights and a fresh optimizer
    np.testing.assert_allclose(again, losses, rtol=1e-5)
    tuner.restore()
    np.testing.assert_allclose(sf.array_margins(model, images, "none", batch_size=8), before[:1], atol=1e-5)


def test_refusals_name_what_is_wrong():
    images, labels = site_arrays()
    tuner = sf.SiteFinetuner(tiny_model(), "feats", steps=1, batch_size=4)
    with pytest.raises(ValueError, match="both classes"):
        tuner.fit(images[:12], labels[:12])
    soft = tiny_model()
    head = keras.layers.Dense(2, activation="softmax", name="probs")(soft.layers[-2].output)
    with pytest.raises(ValueError, match="linear Dense layer of 2 logits"):
        sf.SiteFinetuner(keras.Model(soft.inputs, head), "feats")
    with pytest.raises(ValueError, match="steps >= 1"):
        sf.SiteFinetuner(tiny_model(), "feats", steps=0)


def test_calibrate_finetune_writes_the_finetuned_model_that_predict_then_uses(tmp_path, monkeypatch):
    model_file = tmp_path / "final.keras"
    tiny_model().save(model_file)
    write_metadata(str(model_file), {"operating_point": {"threshold": 0.5, "temperature": 1.0, "rule": "f1"},
                                     "tta": "none", "image_size": SIZE, "small_policy": "resize"})
    images, labels = site_arrays(15, 25)
    for name in ("crack", "background"):
        (tmp_path / "site" / name).mkdir(parents=True)
    for i, (image, y) in enumerate(zip(images, labels)):
        Image.fromarray(image.astype(np.uint8)).save(tmp_path / "site" / ("crack" if y else "background") / f"{i}.png")
    site = str(tmp_path / "site")
    thr = calibrate(str(model_file), site, str(tmp_path / "t.keras"), n_resamples=0)["point"]["site_calibration"]
    out = tmp_path / "tuned.keras"
    fitted = []  # (sample size, feats kernel after the fit) of every fine-tuning
    real_fit = sf.SiteFinetuner.fit

    def recording_fit(self, x, y, seed=0):
        losses = real_fit(self, x, y, seed)
        fitted.append((len(x), self.model.get_layer("backbone").get_layer("feats").get_weights()[0].copy()))
        return losses

    monkeypatch.setattr(sf.SiteFinetuner, "fit", recording_fit)
    from crack_tf.evaluation import site_calibration as sc

    real_cross, out_of_fold = sf.cross_fitted_margins, []
    monkeypatch.setattr(sf, "cross_fitted_margins", lambda *a, **k: out_of_fold.append(real_cross(*a, **k)) or
                        out_of_fold[-1])
    real_fit_point, fitted_on = sc.fit_point, []
    monkeypatch.setattr(sc, "fit_point", lambda m, *a, **k: fitted_on.append(np.array(m)) or real_fit_point(m, *a, **k))
    res = calibrate(str(model_file), site, str(out), fit="finetune", n_resamples=0,
                    finetune={"start": "feats", "steps": 60, "lr": 0.05})["point"]
    rec = res["site_calibration"]
    # the point, and the verdict's cross-validation, on the out-of-fold margins only: the whole sample's,
    # then each fold's point on the other folds' (never on a fine-tuned model's margins of its own tiles)
    oof, y = out_of_fold[0], np.sort(labels)  # the sample in file order: background/ then crack/
    fold = sc.stratified_folds(y, sf.FOLDS, 0)
    expected = [oof] + [oof[:, fold != k] for k in range(sf.FOLDS)]
    assert len(fitted_on) == len(expected) and all(np.array_equal(a, np.atleast_2d(b))
                                                   for a, b in zip(fitted_on, expected))
    assert thr["cross_validated"]["accuracy"] <= 25 / 40  # a threshold cannot separate them
    assert rec["after"]["accuracy"] == 1.0 and rec["cross_validated"]["accuracy"] >= 0.9
    assert rec["cross_validated"]["folds"] == sf.FOLDS and rec["verdict"].startswith("recalibrate")
    assert (rec["fit"], rec["finetune_from"], rec["finetune_steps"], rec["finetune_lr"]) == ("finetune", "feats", 60, 0.05)
    loaded = load_model(str(out))
    assert loaded.threshold == pytest.approx(res["threshold"])
    picks = np.concatenate([images[:2], images[-2:]]).astype(np.uint8)
    assert loaded.is_crack(loaded.predict(picks)).tolist() == [True, True, False, False]
    original = keras.saving.load_model(model_file, compile=False)
    np.testing.assert_array_equal(loaded.model.get_layer("backbone").get_layer("stem").get_weights()[0],
                                  original.get_layer("backbone").get_layer("stem").get_weights()[0])
    assert sorted(n for n, _ in fitted) == [32] * sf.FOLDS + [40]  # 5 folds (of 8 tiles each held out), then all
    whole = next(k for n, k in fitted if n == 40)
    np.testing.assert_array_equal(loaded.model.get_layer("backbone").get_layer("feats").get_weights()[0], whole)
    assert not np.allclose(whole, original.get_layer("backbone").get_layer("feats").get_weights()[0])


def _finetune_run(folder, root, flip: bool = False):
    """A leave-one-source-out run of the tiny model whose left-out source is the photos at ``root/site``."""
    import json

    from tests.tool_loader import load_tool

    tool = load_tool("few_shot_finetune")
    config = {"eval_sources": "site", "data_root": str(root), "val_split": "val", "val_tile": 32, "image_size": SIZE,
              "small_policy": "resize", "max_padding": 0.1, "eval_max_tiles": None, "val_fraction": 0.2, "seed": 0}
    images, labels, groups = tool.left_out_images(config)
    folder.mkdir(parents=True)
    model = tiny_model()
    model.save(folder / "final.keras")
    point = {"threshold": 0.5, "temperature": 1.0, "rule": "f1", "tta": "none"}
    write_metadata(str(folder / "final.keras"), {"operating_point": point, "tta": "none", "image_size": SIZE,
                                                 "small_policy": "resize"})
    (folder / "run.json").write_text(json.dumps({"config": config, "operating_point": point}))
    margins = sf.array_margins(model, images, "none")
    np.savez(folder / "margins.npz", margins=margins.astype(np.float32), labels=(1 - labels) if flip else labels,
             sources=np.array(["site"] * labels.size), split=np.array(["eval"] * labels.size), tta=np.array("none"))
    return tool, labels, groups


def test_few_shot_finetune_tool_fine_tunes_each_draw_from_the_runs_weights(tmp_path, monkeypatch, capsys):
    import hashlib

    from tests.photo_data import write_source

    root = tmp_path / "data"
    write_source(root / "site", {"train": 1, "val": 4}, seed=5)
    tool, labels, groups = _finetune_run(tmp_path / "runs" / "m_no_site_s0", root)
    assert len(set(groups.tolist())) == 4 and 0 < labels.sum() < labels.size
    _finetune_run(tmp_path / "runs" / "m_no_site_s1", root, flip=True)  # another data version: skipped, named
    digest = hashlib.sha256((tmp_path / "runs" / "m_no_site_s0" / "final.keras").read_bytes()).hexdigest()
    fits = []
    real_fit = sf.SiteFinetuner.fit
    monkeypatch.setattr(sf.SiteFinetuner, "fit", lambda self, x, y, seed=0: fits.append((len(x), seed)) or
                        real_fit(self, x, y, seed))
    common = [f"--runs={tmp_path / 'runs' / 'm_no_site_s*'}", f"--out={tmp_path / 'curve'}", "--ns=0,3,10", "--steps=3"]
    first = tool.main_args(common + ["--starts=feats", "--lr=0.01", "--draws=2"])
    assert "skipped" in capsys.readouterr().err and {r["run"] for r in first} == {"m_no_site_s0"}
    assert len(fits) == 2 * 6
    # called again with more curves (a call cut off, or a new learning rate): only the missing ones are drawn
    rows = tool.main_args(common + ["--starts=feats,logits", "--lr=0.01,0.02", "--draws=2"])
    assert len(fits) == 4 * 2 * 6 and rows[:3] == first
    # n = 3 cannot be cross-validated (3 folds of 1 tile: some fold trains on one class): fallbacks, no fine-tuning
    assert [(r["fit"], r["n"], r["draws"], r["fallbacks"]) for r in rows] == [
        (f"finetune from {start}, lr {lr}", n, draws, fallbacks) for start in ("feats", "logits")
        for lr in ("0.01", "0.02") for n, draws, fallbacks in ((0, 1, 0), (3, 2, 2), (10, 2, 0))]
    assert rows[2]["rest"] == 18  # drawn by photo: the 2 photos of the sample (9 tiles each) are not scored
    assert all(0 <= r["roc_auc_mean"] <= 1 for r in rows)
    # each n = 10 draw: calibrate's 5 folds (8 tiles each) then the whole sample, one seed, a new one a draw
    groups_of_six = [fits[i:i + 6] for i in range(0, len(fits), 6)]
    assert all(g == [(8, g[0][1])] * 5 + [(10, g[0][1])] for g in groups_of_six)
    assert groups_of_six[0][0][1] != groups_of_six[1][0][1]
    assert (tmp_path / "curve" / "few_shot_by_source.md").read_text().count("finetune from") == 4
    with pytest.raises(ValueError, match="other settings .*draws"):  # not mixed with curves drawn otherwise
        tool.main_args(common + ["--starts=feats", "--lr=0.01", "--draws=3"])
    assert hashlib.sha256((tmp_path / "runs" / "m_no_site_s0" / "final.keras").read_bytes()).hexdigest() == digest


def test_finetune_curve_fits_its_point_on_the_out_of_fold_margins(monkeypatch):
    from crack_tf.evaluation import few_shot
    from crack_tf.evaluation import site_calibration as sc

    rng = np.random.default_rng(0)
    labels = np.array([1] * 20 + [0] * 40)
    margins = rng.normal(size=(1, 60))  # the model before: no ranking
    separated = np.where(labels == 1, 3.0, -3.0)[None] + rng.normal(0, 0.3, (1, 60))  # after fine-tuning
    given, seen = [], []

    def refit(picked):  # out-of-fold margins unlike the sample's own (shifted): the point must come from them
        given.append(separated[:, picked] + 100.0)
        return separated, given[-1]

    real_fit_point = sc.fit_point
    monkeypatch.setattr(sc, "fit_point", lambda m, *a, **k: seen.append(np.array(m)) or real_fit_point(m, *a, **k))
    rows = few_shot.few_shot_curve(margins, labels, ns=(0, 20), draws=3, base_point={"threshold": 0.5},
                                   fit="finetune", refit=refit)
    assert len(seen) == len(given) == 3 and all(np.array_equal(s, g) for s, g in zip(seen, given))
    row = rows[1]  # a threshold fitted 100 margins too high calls every crack of the rest background
    assert row["recall_mean"] == 0 and row["roc_auc_mean"] == pytest.approx(1.0)

    def too_small(picked):
        raise sf.SampleTooSmall("folds without both classes")

    fallback = few_shot.few_shot_curve(margins, labels, ns=(20,), draws=2, base_point={"threshold": 0.5},
                                       fit="finetune", refit=too_small)[0]
    assert fallback["fallbacks"] == 2 and fallback["roc_auc_mean"] < 0.8  # the model before, the stored point
