"""One training run, start to end: data built once, model built or resumed, ``model.fit``, the final
metrics, the operating point and run.json (``crack_tf.train`` is the command around it).

Re-running in the same ``--model_dir`` resumes from the last checkpoint (also after ``kill -9``) and
ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import keras

from crack_tf.choices import CLASS_NAMES
from crack_tf.training import callbacks as cb
from crack_tf.training import checkpoints, finish, rundir
from crack_tf.training.build import build_model, compile_model, data_config, set_backbone_frozen
from crack_tf.training.config import TrainConfig
from crack_tf.training.optim import effective_lr, make_schedule
from crack_tf.training.runtime import Runtime, seed_everything, set_precision


def _sample_batch(dataset):
    if hasattr(dataset, "take"):
        images, _ = next(iter(dataset.take(1)))
        return keras.ops.convert_to_numpy(images)
    return dataset[0][0]


def fit_segments(start_step: int, steps_per_epoch: int, epochs: int, freeze_epochs: int
                 ) -> list[tuple[int, int, int, bool]]:
    """The ``model.fit`` calls of a run: (first epoch, end epoch, steps per epoch, backbone frozen).

    One call for all epochs (the input is built once), split where the backbone is unfrozen, and
    a first call for the rest of an epoch that a resumed run re-enters mid-way.
    """
    epoch, done_in_epoch = divmod(start_step, steps_per_epoch)
    out = []
    if done_in_epoch:
        out.append((epoch, epoch + 1, steps_per_epoch - done_in_epoch, epoch < freeze_epochs))
        epoch += 1
    if epoch < min(freeze_epochs, epochs):
        out.append((epoch, freeze_epochs, steps_per_epoch, True))
        epoch = freeze_epochs
    if epoch < epochs:
        out.append((epoch, epochs, steps_per_epoch, False))
    return out


def _describe_data(cfg, probe, val_input) -> None:
    print(f"data: {cfg.train_split}={probe.num_examples} {probe.class_counts} "
          f"{cfg.val_split}={val_input.num_examples if val_input else 0}; skipped "
          f"{len(probe.skipped) + (len(val_input.skipped) if val_input else 0)} unreadable files", flush=True)
    for name, info in probe.info.get("sources", {}).items():
        tiles = val_input.by_source[name].class_counts if val_input and name in val_input.by_source else {}
        print(f"  source {name}: weight {info['weight']}, {info['photos']} photos ({info['fold']}, "
              f"{info['decoded_mb']} MB decoded, {info['skipped']} skipped); val tiles {tiles}", flush=True)


def _ema_swapper(model: keras.Model, cfg: TrainConfig):
    """With ``--ema_momentum``: Keras' SwapEMAWeights, used around val and best.keras saves so
    they see the averaged weights while training goes on with the raw ones. None with
    ``--ema_bn_crops``: the average's BatchNorm statistics are only right after their re-estimation
    at the end (:func:`_ema_batchnorm`), so val and best.keras keep the raw weights."""
    if not cfg.ema_momentum or cfg.ema_bn_crops:
        return None
    swapper = keras.callbacks.SwapEMAWeights(swap_on_epoch=False)
    swapper.set_model(model)
    return swapper


def _ema_batchnorm(model: keras.Model, cfg: TrainConfig, sampler) -> dict:
    """``--ema_bn_crops``: the averaged weights' BatchNorm statistics re-estimated, in place, on the
    training stream's first crops (augmented, as trained: SWA's BN update over the training data) with
    AdaBN's exact passes; returns what run.json records."""
    from crack_tf.training.adabn import adapt_batchnorm, batchnorm_layers

    images, labels = sampler.batch(0, cfg.ema_bn_crops)
    adapt_batchnorm(model, images, cfg.adabn_batch_size, passes=cfg.adabn_passes)
    record = {"crops": int(len(images)), "crack_crops": int(labels.sum()), "passes": cfg.adabn_passes,
              "inputs": "the training stream's first crops (augmented as in training)",
              "bn_layers": len(batchnorm_layers(model))}
    print(f"EMA: BatchNorm statistics of the averaged weights re-estimated on {record['crops']} training crops "
          f"({record['crack_crops']} with a crack; {record['bn_layers']} layers)", flush=True)
    return record


def _store_operating_point(model, cfg, val_input, out_dir: str, runtime, eval_input=None,
                           seconds: dict | None = None) -> dict | None:
    """Picks the operating point on val for final.keras (returned for run.json; its per-tile margins
    in ``<model_dir>/margins.npz``) and best.keras, and writes each into its file. Single-process
    runs only (val is sharded across processes). ``seconds``: gets each part's wall seconds
    (``final_val``, ``final_eval``, ``final_adabn_adapt``, ``final_adabn_score``, ``final_features``,
    ``best_val``), run.json's ``operating_point_seconds``."""
    from crack_tf.model_meta import write_metadata

    if val_input is None or runtime.num_processes > 1:
        if val_input is not None:
            print("operating point: not picked in a multi-process run (each process sees part of val)", flush=True)
        return None
    result = None
    for name in ("final.keras", "best.keras"):
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path):
            continue
        # The --eval_sources scores (and AdaBN) are the final model's, for run.json: best.keras only
        # needs its own point, and skipping them saves the minutes a time-limited GPU call lacks.
        scored = eval_input if name == "final.keras" else None
        parts: dict[str, float] = {}
        try:
            with _scoring_model(model, path, runtime) as scorer:
                points, margins = finish.operating_point(scorer, val_input, cfg.threshold_rule, cfg.tta, scored,
                                                         _adabn(cfg) if scored is not None else None, parts,
                                                         adabn_weights(cfg))
                if name == "final.keras":
                    finish.save_margins(os.path.join(cfg.model_dir, "margins.npz"), margins)
                    if cfg.save_eval_features and eval_input is not None:
                        features = finish.timed(parts, "features", finish.eval_features, scorer, eval_input, cfg.tta)
                        finish.save_margins(os.path.join(cfg.model_dir, "features.npz"), features, compress=False)
        finally:  # also the parts timed before an interruption (tools/bench_finish.py under a timeout)
            if seconds is not None:
                seconds.update({f"{name.split('.')[0]}_{part}": secs for part, secs in parts.items()})
        chosen = points[cfg.tta]
        at = chosen["val_at_threshold"]
        print(f"{name} operating point ({cfg.threshold_rule} on val, tta {cfg.tta}): threshold "
              f"{chosen['threshold']:.4f}, temperature {chosen['temperature']:.3f} (ECE {chosen['ece_before']:.3f} "
              f"-> {chosen['ece_after']:.3f}); val P={at['precision']:.4f} R={at['recall']:.4f} "
              f"acc={at['accuracy']:.4f}", flush=True)
        scored_by = [(chosen.get("eval_sources_at_threshold_by_source"), ""),
                     (chosen.get("eval_sources_adabn_at_threshold_by_source"), " after AdaBN")]
        scored_by += [(by_source, f" after AdaBN at target weight {weight}")
                      for weight, by_source in (chosen.get("eval_sources_adabn_by_target_weight") or {}).items()]
        for by_source, what in scored_by:
            for source, m in (by_source or {}).items():
                print(f"  eval source {source}{what} at that point: acc={m['accuracy']:.4f} P={m['precision']:.4f} "
                      f"R={m['recall']:.4f}", flush=True)
        write_metadata(path, {"operating_point": chosen, "image_size": cfg.image_size, "tta": cfg.tta,
                              "small_policy": cfg.small_policy, "class_names": list(CLASS_NAMES), "model": cfg.model})
        result = result or points
    return result


@contextlib.contextmanager
def _scoring_model(model: keras.Model, path: str, runtime):
    """The model to score ``path`` (final.keras / best.keras) with. Under a tf.distribute strategy
    predict_on_batch of the live model returns per-replica rows, so the saved file is loaded and
    scored on one device. Otherwise the live model, given the file's weights for best.keras and its
    own back afterwards: its compiled predict function serves both (a loaded model would compile
    again: minutes when a grid's runs share one GPU machine)."""
    if runtime.strategy is not None:
        yield keras.saving.load_model(path, compile=False)
        return
    if os.path.basename(path) != "best.keras":
        yield model
        return
    own = model.get_weights()
    model.set_weights(keras.saving.load_model(path, compile=False).get_weights())
    try:
        yield model
    finally:
        model.set_weights(own)


def _adabn(cfg: TrainConfig):
    """With ``--adabn_eval_crops``: AdaBN to one eval source (its unlabelled train photos) at a target
    weight, in place, ``--adabn_batch_size`` crops a pass."""
    if not cfg.adabn_eval_crops:
        return None
    from crack_tf.training.adabn import adapt_to_source

    def adapt(model: keras.Model, source: str, target_weight: float = 1.0) -> None:
        adapt_to_source(model, source, cfg.data_root, cfg.train_split, crops=cfg.adabn_eval_crops,
                        crop_side=tuple(cfg.crop_side), seed=cfg.seed, batch_size=cfg.adabn_batch_size,
                        image_size=cfg.image_size, copy=False, passes=cfg.adabn_passes, target_weight=target_weight)

    return adapt


def adabn_weights(cfg: TrainConfig) -> tuple[float, ...]:
    """``--adabn_target_weights`` as floats (validated by the flags)."""
    return tuple(float(w) for w in cfg.adabn_target_weights)


class _Phases:
    """Wall seconds of a run's phases (setup, fit, final_metrics, save, operating_point) for run.json:
    where a time-limited GPU call's minutes go besides the epochs."""

    def __init__(self, started: float):
        self.seconds: dict[str, float] = {}
        self._last = started

    def end(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now

    def line(self, parts: dict[str, float] | None = None) -> str:
        """``phases: setup 10s, ...``; with ``parts`` (the operating point's) a second line of them."""
        text = "phases: " + ", ".join(f"{name} {secs:.0f}s" for name, secs in self.seconds.items())
        if parts:
            text += "\noperating point parts: " + ", ".join(f"{name} {secs:.0f}s" for name, secs in parts.items())
        return text


class TrainingFailed(RuntimeError):
    """Training stopped on a non-finite loss, metric or weight (exit code 1)."""


def _record_failure(cfg: TrainConfig, runtime: Runtime, health, started: float) -> None:
    """run.json with status "failed" and the reason; raises TrainingFailed."""
    message = health.message(cfg)
    if runtime.is_chief:
        rundir.write_json(os.path.join(cfg.model_dir, "run.json"), {
            "status": "failed", "reason": message, "failed_at_step": health.step, "config": cfg.flat(),
            "last_finite_loss": health.last_finite, "wall_seconds": time.time() - started,
            "versions": rundir.versions(),
        })
    raise TrainingFailed(message)


def _build_or_resume(cfg: TrainConfig, steps_per_epoch: int) -> tuple[keras.Model, dict, bool]:
    """The compiled model, the state it resumes from and whether its backbone is frozen: the
    newest checkpoint that loads (an unloadable one is reported and the previous one used), or a
    fresh start."""
    model = build_model(cfg)
    frozen_steps = cfg.freeze_backbone_epochs * steps_per_epoch

    def prepare(step: int) -> bool:
        frozen = step < frozen_steps
        set_backbone_frozen(model, frozen)
        compile_model(model, cfg, steps_per_epoch)
        return frozen

    ckpt = checkpoints.restore_latest(model, cfg.model_dir, prepare=lambda c: prepare(c.step))
    if ckpt is None:
        return model, {"global_step": 0, "best": None}, prepare(0)
    print(f"resumed from {cfg.model_dir}/ckpt at step {ckpt.step}", flush=True)
    return model, dict(ckpt.state), ckpt.step < frozen_steps


def train(cfg: TrainConfig, runtime: Runtime) -> dict:
    """Runs (or resumes) training; returns the final metrics written to run.json."""
    from crack_tf.data import make_input
    from crack_tf.training.validation import SourceValidation

    started = time.time()
    seed_everything(cfg.run)
    policy = set_precision(cfg.run, runtime)
    rundir.prepare_model_dir(cfg, runtime.is_chief)
    dcfg = data_config(cfg)
    out_dir = rundir.output_dir(cfg.model_dir, runtime.is_chief)

    def split_input(split: str, training: bool, skip_batches: int = 0, **changes):
        """This process' shard of ``split`` with the run's batch, seed and loader."""
        return make_input(dcfg.replace(**changes), split, training=training, global_batch_size=cfg.batch_size,
                          seed=cfg.seed, backend=cfg.loader, num_shards=runtime.num_processes,
                          shard_index=runtime.process_id, skip_batches=skip_batches)

    probe = split_input(cfg.train_split, training=True)
    train_sampler = probe.sampler  # the photos source's crops (--ema_bn_crops)
    train_summary = {"train": probe.class_counts, "skipped": probe.skipped, **probe.info}
    steps_per_epoch = cfg.steps_per_epoch or probe.steps_per_epoch
    val_input = split_input(cfg.val_split, training=False) if cfg.val_split else None
    _describe_data(cfg, probe, val_input)

    with runtime.scope():
        model, state, frozen = _build_or_resume(cfg, steps_per_epoch)
    start_step = state["global_step"]
    segments = fit_segments(start_step, steps_per_epoch, cfg.epochs, cfg.freeze_backbone_epochs)
    print(f"model: {model.name} params={model.count_params():,} policy={policy} lr={effective_lr(cfg):.5g} "
          f"{runtime.describe()}", flush=True)

    writer = cb.ScalarWriter(os.path.join(cfg.model_dir, "tensorboard") if cfg.tensorboard and runtime.is_chief
                             else None)
    if writer.kind != "none" and not start_step:
        writer.images("train/sample_batch", _sample_batch(probe.dataset), 0)
    clock = cb.StepClock()
    health = cb.Health()
    if cfg.ema_bn_crops and runtime.num_processes > 1:
        raise ValueError("--ema_bn_crops: one process only (each process would see part of the crops)")
    ema = _ema_swapper(model, cfg)
    sources = tuple(val_input.by_source) if val_input else ()
    progress = cb.ProgressLogger(cfg.model_dir, clock, steps_per_epoch, cfg.epochs, cfg.batch_size, cfg.log_every,
                                 writer, print_lines=not sys.stdout.isatty(),
                                 lr_at=make_schedule(cfg.optim, steps_per_epoch).value, is_chief=runtime.is_chief,
                                 sources=sources, async_logs=runtime.num_processes == 1, health=health)
    saver = cb.CheckpointAndBest(cfg.model_dir, clock, cfg.checkpoint_every, cfg.best_metric, cfg.best_mode,
                                       state, runtime.is_chief, ema=ema, health=health)
    class_weight = probe.class_weight if cfg.balance == "class_weight" else None
    callbacks = [progress, saver]
    if sources:  # per-source val: evaluated by the callback, first, so the others see its logs
        callbacks.insert(0, SourceValidation(val_input.by_source, before=progress.mark_train_end, ema=ema))
    elif ema is not None:  # Keras' own validation: the swapper swaps around it
        callbacks.insert(0, ema)

    phases = _Phases(started)
    phases.end("setup")
    done = start_step
    for i, (first_epoch, end_epoch, steps, seg_frozen) in enumerate(segments):
        if frozen and not seg_frozen:  # unfreeze: new optimizer slots, same step count
            frozen = False
            with runtime.scope():
                iterations = cb.global_step(model)
                set_backbone_frozen(model, False)
                compile_model(model, cfg, steps_per_epoch)
                model.optimizer.build(model.trainable_variables)
                model.optimizer.iterations.assign(iterations)
            print(f"epoch {first_epoch + 1}: backbone unfrozen", flush=True)
        train_input = probe if done == 0 else split_input(cfg.train_split, training=True, skip_batches=done)
        probe = None  # the first segment reuses the input built above; later ones start where it stopped
        clock.begin_fit(done, first_epoch, steps)
        model.fit(
            train_input.dataset,
            initial_epoch=first_epoch,
            epochs=end_epoch,
            steps_per_epoch=steps,
            validation_data=val_input.dataset if val_input and not sources else None,
            class_weight=class_weight,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 0,
        )
        done += (end_epoch - first_epoch - 1) * steps_per_epoch + steps
        if health.failure is not None:
            _record_failure(cfg, runtime, health, started)
        if cfg.ema_momentum and i + 1 < len(segments):
            # fit() ended by writing the averages into the weights; go on from the raw ones,
            # exactly as a run resumed from this (epoch-end) checkpoint would.
            checkpoints.restore(model, checkpoints.checkpoints(out_dir)[0])
    ema_bn = None
    if cfg.ema_momentum:
        if not segments:  # resumed after the last epoch: the final model is the average
            model.optimizer.finalize_variable_values(model.trainable_weights)
        # finalize assigned the averages' own arrays to the weights: give the weights copies, or
        # a later donating step (JAX) would delete the buffers the optimizer still holds.
        for var in model.trainable_variables:
            var.assign(keras.ops.convert_to_numpy(var))
        if cfg.ema_bn_crops:
            ema_bn = _ema_batchnorm(model, cfg, train_sampler)

    phases.end("fit")
    eval_input = finish.eval_sources_input(cfg, dcfg)
    results = finish.final_metrics(model, cfg, split_input, val_input, eval_input)
    phases.end("final_metrics")
    model.save(os.path.join(out_dir, "final.keras"))  # every process: saving is collective
    if state.get("best") is None:  # no validation: the final model is the best we know
        model.save(os.path.join(out_dir, "best.keras"))
    phases.end("save")
    point_seconds: dict[str, float] = {}
    points = _store_operating_point(model, cfg, val_input, out_dir, runtime, eval_input, point_seconds)
    phases.end("operating_point")
    digest = rundir.weights_digest(model)
    if runtime.num_processes > 1:
        print(f"process {runtime.process_id}: weights_sha256={digest}", flush=True)
    if runtime.is_chief:
        rundir.write_json(os.path.join(cfg.model_dir, "run.json"), {
            "status": "finished", "config": cfg.flat(), "class_names": list(CLASS_NAMES), "image_size": cfg.image_size,
            "small_policy": cfg.small_policy, "metrics": results,
            "operating_point": points[cfg.tta] if points else None, "operating_points": points,
            "best": {"metric": cfg.best_metric, "value": state.get("best"), "epoch": state.get("best_epoch")},
            "throughput_images_per_second": progress.last_throughput, "dtype_policy": policy,
            "epoch_seconds": progress.epoch_seconds,
            "runtime": {"backend": runtime.backend, "strategy": runtime.strategy_name,
                        "replicas": runtime.num_replicas, "processes": runtime.num_processes,
                        "devices": runtime.devices, "xla_flags": runtime.xla_flags,
                        "deterministic": cfg.run.deterministic},
            "versions": rundir.versions(), "data": {**train_summary, "steps_per_epoch": steps_per_epoch},
            "wall_seconds": time.time() - started, "phase_seconds": phases.seconds,
            "operating_point_seconds": point_seconds, "weights_sha256": digest,
            **({"ema_batchnorm": ema_bn} if ema_bn else {}),
        })
        print(phases.line(point_seconds), flush=True)
    return results
