"""Calibrates a trained model for a new site from a small labelled sample of it.

Example::

    python -m crack_tf.calibrate --model=runs/crackmix/final.keras --data=site_b_tiles/ \\
        --out=runs/crackmix/site_b.keras --export=exports/site_b

``--data``: a folder of labelled tiles ``crack/`` + ``background/`` (or ``<data>/<split>/...`` with
``--split``), or with ``--source=photos`` photo + mask folders as ``crack_tf.evaluate`` reads them
(``--data=site_b --data_root=... --split=val``: their fixed grid tiles). The model's margins on
the sample give a new threshold (``--fit=threshold``, the default), temperature and threshold
(``temperature+threshold``) or first a re-fitted final Dense layer (``last_layer``,
``crack_tf.evaluation.head_refit``) or the top of the network fine-tuned on the sample
(``finetune``: ``--finetune_from`` layers on, ``crack_tf.evaluation.site_finetune``). Samples under ``--min_examples`` tiles or with one class are
refused (exit 2) with what to add. Prints the sample's accuracy / precision / recall with 95%
bootstrap CIs before, after and cross-validated, and writes ``--out``: a copy of ``--model`` (never
changed) whose stored operating point is the new one with its provenance
(``crack_tf.evaluation.site_calibration``); every command (evaluate, predict, report, heatmap,
export, serving) uses it as any stored point. ``--export=<dir>`` also writes a SavedModel version.
Guide: docs/CALIBRATE.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from crack_tf import cli
from crack_tf.choices import TTA_MODES
from crack_tf.evaluation import site_calibration as sc
from crack_tf.evaluation import site_finetune as sf
from crack_tf.evaluation.head_refit import DEFAULT_L2
from crack_tf.model_precision import define_precision_flag

FLAGS = flags.FLAGS
SOURCES = ("folder", "photos")


def _define_flags() -> None:
    flags.DEFINE_string("model", None, "Trained .keras file to calibrate (left unchanged).", required=True)
    flags.DEFINE_string("data", None, "Labelled tiles (crack/ + background/), or photo sources with "
                        "--source=photos.", required=True)
    flags.DEFINE_string("out", None, "New .keras file with the site's operating point.", required=True)
    flags.DEFINE_string("split", None, "Sub-folder of --data holding crack/ + background/ (photos: the split, "
                        "default val).")
    flags.DEFINE_enum("source", "folder", list(SOURCES), "folder: labelled tiles; photos: photo + mask folders.")
    flags.DEFINE_string("data_root", "", "--source=photos: folder the --data entries are under.")
    flags.DEFINE_string("rule", None, "Threshold rule: f1 or precision@R (default: the model's stored rule, else f1).")
    flags.DEFINE_enum("tta", None, list(TTA_MODES), "Test-time augmentation (default: the model's).")
    flags.DEFINE_enum("fit", "threshold", list(sc.FITS), "What is re-fitted on the sample (threshold: the default "
                      "and, measured on two left-out sources, the best from 10-50 tiles; last_layer and finetune "
                      "did not rank a new site better there: docs/CALIBRATE.md).")
    flags.DEFINE_integer("min_examples", sc.DEFAULT_MIN_EXAMPLES, "Refuse samples with fewer labelled tiles.")
    flags.DEFINE_float("prior_tiles", sc.DEFAULT_PRIOR_TILES, "The stored threshold counts as this many tiles of "
                       "the site: the fitted one is shrunk towards it, unless it is significantly better on the "
                       "sample (0 = a plain re-pick; docs/CALIBRATE.md).", lower_bound=0)
    flags.DEFINE_float("l2", DEFAULT_L2, "--fit=last_layer: strength of the pull toward the old layer.")
    flags.DEFINE_string("finetune_from", sf.DEFAULT_START, "--fit=finetune: the first layer trained (a name prefix; "
                        "conv5_ = ResNet50's last stage, conv5_block3 its last block, logits the head).")
    flags.DEFINE_integer("finetune_steps", sf.DEFAULT_STEPS, "--fit=finetune: Adam steps (batches of the sample).",
                         lower_bound=1)
    flags.DEFINE_float("finetune_lr", sf.DEFAULT_LR, "--fit=finetune: learning rate.", lower_bound=0)
    flags.DEFINE_string("export", None, "Also export the new model as a SavedModel version under this folder.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")
    flags.DEFINE_integer("image_size", None, "Tile size if neither the model nor its metadata fixes it.")
    flags.DEFINE_integer("batch_size", 32, "Tiles per model call.")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the 95% CIs (0 = none).")
    flags.DEFINE_integer("seed", 0, "Bootstrap and cross-validation seed.")
    define_precision_flag()


def _check_paths(model: str, out: str, overwrite: bool) -> None:
    if not out.endswith(".keras"):
        raise ValueError(f"--out={out} must end in .keras")
    if not os.path.isfile(model):
        raise FileNotFoundError(f"--model={model}: no such file (calibrate takes a .keras file)")
    if os.path.exists(out) and os.path.samefile(model, out):
        raise ValueError(f"--out={out} is --model: calibrate never changes the model in place; pick another --out")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"--out={out} exists; pick another name or pass --overwrite")


def list_sample(data: str, split: str | None, source: str, data_root: str = "") -> dict[str, Any]:
    """Where the sample is (``path``, ``split``), its files as ``(name, path)`` for the hash, and for
    tiles the labels (checked before the model is loaded); raises ValueError naming what is wrong."""
    from crack_tf.data.config import DataConfig

    if source == "folder":
        from crack_tf.data.listing import list_folder

        if not os.path.isdir(data):
            raise ValueError(f"--data={data} is not a directory: give a folder of labelled tiles crack/ + "
                             "background/ (or photo + mask sources with --source=photos)")
        if split:
            root = data
        else:
            root, split = os.path.split(os.path.abspath(data).rstrip(os.sep))
        listing = list_folder(root, split, DataConfig(path=root))
        base = os.path.join(root, split)
        return {"path": root, "split": split, "labels": listing.labels,
                "files": [(os.path.relpath(p, base), p) for p in listing.paths]}
    if source != "photos":
        raise ValueError(f"--source={source!r}; choose one of {SOURCES}")
    from crack_tf.data.photos import list_photos, parse_sources

    split = split or "val"
    files = []
    for spec in parse_sources(data, data_root):
        for pair in list_photos(spec, split).pairs:
            files += [(f"{spec.name}/{os.path.relpath(p, spec.path)}", p) for p in pair]
    return {"path": data, "split": split, "labels": None, "files": files}


def _sample_margins(predictor, inp, fit: str, l2: float, finetune: dict | None = None, seed: int = 0
                    ) -> dict[str, Any]:
    """Margins [V, N] and labels of the sample; for the model fits also the margins after the fit and
    what to write: ``last_layer`` its ``head`` and ``fold_fit`` (re-fit on some tiles -> every tile's
    margins), ``finetune`` its ``weights`` and out-of-fold margins (:func:`_finetune_margins`)."""
    if fit in sc.MARGIN_FITS:
        from crack_tf.training.finish import val_margins

        margins, labels, _ = val_margins(predictor.model, inp, predictor.tta)
        return {"margins": margins, "labels": labels}
    if fit == "finetune":
        return _finetune_margins(predictor, inp, **(finetune or {}), seed=seed)
    from crack_tf.evaluation import head_refit as hr

    features, labels = hr.sample_features(predictor.model, inp, predictor.tta)
    kernel, bias = hr.head_layer(predictor.model).get_weights()
    sc.check_sample(labels, 2)  # the fit needs both classes; the real check follows
    new_kernel, new_bias = hr.refit_head(features, labels, kernel, bias, l2)
    return {
        "margins": hr.head_margins(features, kernel, bias), "labels": labels,
        "after_margins": hr.head_margins(features, new_kernel, new_bias), "head": (new_kernel, new_bias),
        "fold_fit": lambda idx: hr.head_margins(features, *hr.refit_head(features[:, idx], labels[idx], kernel,
                                                                          bias, l2)),
    }


def _finetune_margins(predictor, inp, start: str = sf.DEFAULT_START, steps: int = sf.DEFAULT_STEPS,
                      lr: float = sf.DEFAULT_LR, seed: int = 0) -> dict[str, Any]:
    """``--fit=finetune``: the sample's margins before fine-tuning, and out of fold after it: each of
    the cross-validation folds (``sc.stratified_folds``, as ``calibrate_sample`` draws them) scored by a
    fine-tuning on the other folds, each from the model's own weights. The point is fitted on those
    out-of-fold margins, because a network fine-tuned on the sample nearly separates the sample
    itself (a temperature fitted there runs to its bound), and ``calibrate_sample`` cross-validates
    that fit on them (no ``fold_fit``: each fold's tiles scored at a point fitted on the other folds'
    out-of-fold margins, which is what the written model does with new tiles); the weights written
    are those of a sixth fine-tuning, on the whole sample."""
    from crack_tf.data.input import padded_batches

    images, labels = [], []
    for batch, y, rows in padded_batches(inp.dataset):
        images.append(np.asarray(batch, np.float32)[:rows])
        labels.append(np.asarray(y).reshape(-1)[:rows])
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    sc.check_sample(labels, 2)  # the fit needs both classes; the real check follows
    model, views = predictor.model, predictor.tta
    margins = sf.array_margins(model, images, views)
    tuner = sf.SiteFinetuner(model, start, lr, steps, batch_size=min(sf.DEFAULT_BATCH, max(2, labels.size)))
    try:
        out_of_fold = sf.cross_fitted_margins(tuner, images, labels, views, sf.FOLDS, seed)
    except sf.SampleTooSmall as err:
        raise ValueError(f"--fit=finetune: {err}") from None
    tuner.fit(images, labels)
    return {"margins": margins, "labels": labels, "after_margins": out_of_fold, "weights": model.get_weights(),
            "folds": sf.FOLDS,
            "provenance": {"finetune_from": start, "finetune_steps": steps, "finetune_lr": lr,
                           "finetune_weights": tuner.trainable, "point_fitted_on": "out-of-fold margins"}}


def _write(model: str, out: str, metadata: dict, head: tuple | None, weights: list | None = None) -> None:
    """``out`` = a copy of ``model`` (with the re-fitted head, or all ``weights`` of the fine-tuned
    one) holding ``metadata``, written atomically."""
    from crack_tf.evaluation.head_refit import save_with_head
    from crack_tf.model_meta import read_metadata, write_metadata

    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".calibrate-", suffix=".keras", dir=folder)
    os.close(fd)
    try:
        if weights is not None:
            sf.save_with_weights(model, tmp, weights)
        elif head is not None:
            save_with_head(model, tmp, *head)
        else:
            shutil.copyfile(model, tmp)
        if weights is not None or head is not None:  # a saved copy: the source's metadata under the new
            metadata = {**read_metadata(model), **metadata}
        write_metadata(tmp, metadata)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def calibrate(
    model: str,
    data: str,
    out: str,
    split: str | None = None,
    source: str = "folder",
    data_root: str = "",
    rule: str | None = None,
    tta: str | None = None,
    fit: str = "threshold",
    min_examples: int = sc.DEFAULT_MIN_EXAMPLES,
    l2: float = DEFAULT_L2,
    export_dir: str | None = None,
    overwrite: bool = False,
    image_size: int | None = None,
    batch_size: int = 32,
    n_resamples: int = 1000,
    seed: int = 0,
    precision: str | None = None,
    prior_tiles: float = sc.DEFAULT_PRIOR_TILES,
    finetune: dict | None = None,
) -> dict[str, Any]:
    """Runs the calibration and writes ``out`` (and the export); returns ``point`` (the stored
    operating point), ``out``, ``export`` (version folder or None) and ``skipped`` files.
    ``finetune``: ``start`` / ``steps`` / ``lr`` of ``fit="finetune"`` (defaults: site_finetune's)."""
    import crack_tf
    from crack_tf.data import DataConfig, make_input
    from crack_tf.inspection.scan import file_sha256
    from crack_tf.predictor import load_model

    if fit not in sc.FITS:
        raise ValueError(f"--fit={fit!r}; choose one of {sc.FITS}")
    if rule:
        sc.resolve_rule(rule, None)  # a bad rule fails before the model is loaded
    _check_paths(model, out, overwrite)
    sample = list_sample(data, split, source, data_root)
    if sample["labels"] is not None:
        sc.check_sample(sample["labels"], min_examples)
    predictor = load_model(model, tta, precision)
    if predictor.model is None:
        raise ValueError(f"--model={model} is a SavedModel; calibrate takes the .keras file (then --export)")
    size = predictor.image_size or image_size
    if size is None:
        raise ValueError(f"--model={model} accepts any input size and stores none: pass --image_size")
    config = DataConfig(source=source, path=sample["path"], image_size=int(size), small_policy=predictor.small_policy,
                        data_root=data_root)
    inp = make_input(config, sample["split"], training=False, global_batch_size=batch_size, backend="numpy")
    sc.check_sample([y for _, y in inp.examples], min_examples)
    got = _sample_margins(predictor, inp, fit, l2, finetune, seed)
    provenance = {
        "files_sha256": sc.files_sha256(sample["files"]), "files": len(sample["files"]),
        "data": data if source == "photos" else os.path.abspath(data), "split": sample["split"], "source": source,
        **({"data_root": os.path.abspath(data_root)} if source == "photos" and data_root else {}),
        "skipped": len(inp.skipped), "model": os.path.abspath(model), "model_sha256": file_sha256(model),
        "crack_tf": crack_tf.__version__, **({"l2": l2} if fit == "last_layer" else {}), **got.get("provenance", {}),
    }
    point = sc.calibrate_sample(
        got["margins"], got["labels"], predictor.metadata.get("operating_point"), rule, fit, predictor.tta,
        got.get("after_margins"), got.get("fold_fit"), min_examples, n_resamples, seed,
        folds=got.get("folds", sc.DEFAULT_FOLDS), provenance=provenance, prior_tiles=prior_tiles)
    _write(model, out, {"operating_point": point, "tta": predictor.tta, "image_size": int(size),
                        "small_policy": predictor.small_policy, "class_names": list(predictor.class_names)},
           got.get("head"), got.get("weights"))
    exported = None
    if export_dir:
        from crack_tf.export import export_model_file, read_run_json, verify_export

        exported, metadata, keras_model = export_model_file(out, export_dir, run=read_run_json(model))
        verify_export(keras_model, exported, metadata["image_size"], metadata=metadata)
    return {"point": point, "out": out, "export": exported, "skipped": inp.skipped}


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    res = calibrate(FLAGS.model, FLAGS.data, FLAGS.out, FLAGS.split, FLAGS.source, FLAGS.data_root, FLAGS.rule,
                    FLAGS.tta, FLAGS.fit, FLAGS.min_examples, FLAGS.l2, FLAGS.export, FLAGS.overwrite,
                    FLAGS.image_size, FLAGS.batch_size, FLAGS.bootstrap, FLAGS.seed, FLAGS.precision,
                    FLAGS.prior_tiles, {"start": FLAGS.finetune_from, "steps": FLAGS.finetune_steps,
                                        "lr": FLAGS.finetune_lr})
    for line in sc.summary(res["point"]):
        print(f"calibrate: {line}")
    rec = res["point"]["site_calibration"]
    print(f"calibrate: wrote {res['out']}: threshold {(rec['previous'] or {}).get('threshold', 0.5):.4g} -> "
          f"{res['point']['threshold']:.4g} (sample files sha256 {rec['files_sha256'][:12]}...)")
    if res["export"]:
        print(f"calibrate: exported {res['export']} (is_crack at threshold {res['point']['threshold']:.4g}; verified)")
    return cli.report_left_out("calibrate", res["skipped"])


def run() -> None:
    """Console-script entry point."""
    cli.entry_point(_define_flags, main)()


if __name__ == "__main__":
    run()
