"""The few-shot curve after AdaBN: the adapted margins, and AdaBN only where the labelled sample
ranks them better (``few_shot.choose_by_sample_auc``; ``tools/few_shot_curve.py --adabn``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crack_tf.evaluation import few_shot
from tests.tool_loader import load_tool

POINT = {"threshold": 0.5, "temperature": 1.0, "rule": "f1", "tta": "none"}


def _site(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, margins that carry no signal, margins that separate the classes perfectly)."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.4).astype(int)
    noise = rng.normal(0, 1, n)[None]
    clean = (np.where(y == 1, 2.0, -2.0) + rng.uniform(-1, 1, n))[None]
    return y, noise, clean


def test_the_sample_picks_the_margins_that_rank_it_better():
    y, noise, clean = _site()
    rng = np.random.default_rng(1)
    picked = few_shot.draw_sample(y, 40, rng)
    to_clean = few_shot.choose_by_sample_auc(noise, clean, y, POINT)
    chosen, on = to_clean(picked)
    assert chosen is not noise and np.array_equal(chosen, np.atleast_2d(clean))
    assert np.array_equal(on, chosen[:, picked])
    kept, _ = few_shot.choose_by_sample_auc(clean, noise, y, POINT)(picked)  # the model's own ranks better
    assert np.array_equal(kept, np.atleast_2d(clean))
    unmoved, _ = few_shot.choose_by_sample_auc(noise, clean, y, POINT, by=1.0)(picked)  # AUC cannot gain 1
    assert np.array_equal(unmoved, np.atleast_2d(noise))
    with pytest.raises(ValueError, match="differ in shape"):
        few_shot.choose_by_sample_auc(noise, clean[:, :10], y, POINT)


def test_a_curve_that_always_prefers_the_better_margins_is_the_curve_on_them():
    """The draws do not depend on the choice: where the sample always picks ``clean`` (n >= 25: a
    no-signal ranking cannot tie a perfect one), every row equals the curve on ``clean`` itself; n = 0
    keeps the model's own margins."""
    y, noise, clean = _site()
    kwargs = {"ns": (0, 25, 50), "draws": 6, "seed": 3, "base_point": POINT, "prior_tiles": 50}
    chosen = few_shot.few_shot_curve(noise, y, refit=few_shot.choose_by_sample_auc(noise, clean, y, POINT), **kwargs)
    on_clean = few_shot.few_shot_curve(clean, y, **kwargs)
    on_noise = few_shot.few_shot_curve(noise, y, **kwargs)
    assert chosen[0] == on_noise[0]  # n = 0: no sample, no choice
    assert chosen[1:] == on_clean[1:] and chosen[2]["accuracy_mean"] > on_noise[2]["accuracy_mean"] + 0.3
    with pytest.raises(ValueError, match="not 'last_layer'"):
        few_shot.few_shot_curve(None, y, fit="last_layer", refit=lambda picked: (clean, clean[:, picked]))


def _run(folder, y, margins, adapted=None, blend=None):
    folder.mkdir(parents=True)
    parts = [("val", margins[:, :100], y[:100]), ("eval", margins[:, 100:], y[100:])]
    if adapted is not None:
        parts.append(("eval_adabn", adapted[:, 100:], y[100:]))
    if blend is not None:  # AdaBN at target weight 0.5 (--adabn_target_weights=1,0.5)
        parts.append(("eval_adabn_w0.5", blend[:, 100:], y[100:]))
    np.savez(folder / "margins.npz", margins=np.concatenate([m for _, m, _ in parts], 1).astype(np.float32),
             labels=np.concatenate([lab for _, _, lab in parts]),
             sources=np.array(["a"] * 100 + ["site"] * (sum(lab.size for _, _, lab in parts) - 100)),
             split=np.concatenate([[name] * lab.size for name, _, lab in parts]))
    (folder / "run.json").write_text(json.dumps({"operating_point": POINT}))


def test_curve_tool_adds_the_adabn_curves_where_the_runs_have_them(tmp_path, capsys):
    tool = load_tool("few_shot_curve")
    y, noise, clean = _site()
    _run(tmp_path / "runs" / "loso_0", y, noise, adapted=clean)
    _run(tmp_path / "runs" / "loso_1", y, noise)  # trained without --adabn_eval_crops
    rows = tool.main_args([f"--runs={tmp_path / 'runs' / 'loso_*'}", f"--out={tmp_path / 'curve'}", "--ns=0,50",
                           "--draws=4", "--prior_tiles=50", "--adabn"])
    fits = {(r["run"], r["fit"]) for r in rows}
    assert fits == {("loso_0", "threshold, prior 50"), ("loso_1", "threshold, prior 50"),
                    ("loso_0", "AdaBN, threshold, prior 50"),
                    ("loso_0", "AdaBN where the sample ranks better (by > 0), threshold, prior 50")}
    assert "loso_1 has no AdaBN margins" in capsys.readouterr().err
    zero = {r["fit"]: r["accuracy_mean"] for r in rows if r["run"] == "loso_0" and r["n"] == 0}
    # n = 0 after AdaBN: the stored point on the adapted margins (clean: every tile right at margin 0)
    assert zero["AdaBN, threshold, prior 50"] == 1.0
    assert zero["AdaBN where the sample ranks better (by > 0), threshold, prior 50"] == zero["threshold, prior 50"]
    assert "AdaBN, threshold, prior 50" in (tmp_path / "curve" / "few_shot.md").read_text()


def test_adabn_margins_of_other_tiles_are_refused(tmp_path):
    tool = load_tool("few_shot_curve")
    y, noise, clean = _site()
    _run(tmp_path / "run", y, noise, adapted=clean)
    with np.load(tmp_path / "run" / "margins.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["labels"][-1] = 1 - arrays["labels"][-1]  # an eval_adabn label that is not its eval tile's
    np.savez(tmp_path / "run" / "margins.npz", **arrays)
    with pytest.raises(ValueError, match="eval_adabn tiles are not its eval tiles"):
        tool.main_args([f"--runs={tmp_path / 'run'}", f"--out={tmp_path / 'curve'}", "--ns=0", "--adabn"])


def test_curve_tool_reads_a_blends_margins_with_adabn_split(tmp_path, capsys):
    tool = load_tool("few_shot_curve")
    y, noise, clean = _site()
    _run(tmp_path / "runs" / "loso_0", y, noise, adapted=noise, blend=clean)
    args = [f"--runs={tmp_path / 'runs' / 'loso_*'}", f"--out={tmp_path / 'curve'}", "--ns=0", "--prior_tiles=50",
            "--adabn"]
    zero = {r["fit"]: r["accuracy_mean"] for r in tool.main_args(args + ["--adabn_split=eval_adabn_w0.5"])}
    assert zero["AdaBN, threshold, prior 50"] == 1.0  # the blend's (clean) margins, not plain AdaBN's (noisy)
    plain = {r["fit"]: r["accuracy_mean"] for r in tool.main_args(args)}
    assert plain["AdaBN, threshold, prior 50"] == plain["threshold, prior 50"] < 1.0
    tool.main_args(args + ["--adabn_split=eval_adabn_w0.25"])
    assert "no AdaBN margins (eval_adabn_w0.25" in capsys.readouterr().err
