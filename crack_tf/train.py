"""Trains a crack classifier: ``python -m crack_tf.train --flagfile=configs/<name>.cfg``.

With no data flags it generates the embedded synthetic crack set and trains
``resnet50_aspp`` on it. Any flag in the flagfile can be overridden after it, e.g.
``--flagfile=configs/uav75.cfg --epochs=3``. Re-running the same command in the same
``--model_dir`` resumes from the last checkpoint (also after ``kill -9``) and ends with
the same weights as an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app

from crack_tf.training import flags as train_flags

train_flags.define_flags()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from crack_tf import CLASS_NAMES  # noqa: E402
from crack_tf.training import callbacks as cb  # noqa: E402
from crack_tf.training import checkpoints, finish, rundir  # noqa: E402
from crack_tf.training.config import TrainConfig  # noqa: E402
from crack_tf.training.optim import SparseCrossEntropy, effective_lr, make_optimizer, make_schedule  # noqa: E402
from crack_tf.training.runtime import (  # noqa: E402
    Runtime,
    accelerator_present,
    jit_setting,
    make_runtime,
    seed_everything,
    set_precision,
)


def synthetic_root(cfg: TrainConfig) -> str:
    """Generates (once) and returns the synthetic image folder of this config."""
    from crack_tf.data.synthetic import generate_dataset

    root = cfg.data_dir or os.path.join(
        os.path.expanduser("~"), ".cache", "crack_tf", "synthetic",
        f"s{cfg.synthetic_size}_n{cfg.synthetic_train}-{cfg.synthetic_val}_seed{cfg.seed}",
    )
    generate_dataset(root, cfg.synthetic_train, cfg.synthetic_val, cfg.synthetic_size, cfg.seed, verbose=True)
    return root


def check_weights_file(cfg: TrainConfig) -> None:
    """Fails before any data is decoded when ``--weights`` names a backbone file that is not
    there (decoding the crack mix takes seconds to minutes; the model is built after it)."""
    if cfg.model_options.weights and cfg.model_options.model != "zhang2016":  # zhang2016: no backbone
        from crack_tf.models.resnet_aspp import resolve_weights_path

        try:
            resolve_weights_path(cfg.model_options.weights)
        except FileNotFoundError as err:
            hint = (" A crack-domain backbone is made by `python tools/pretrain.py --mode=crack "
                    f"--output={cfg.model_options.weights} ...` (README).")
            raise FileNotFoundError(str(err) + (hint if cfg.model_options.weights.endswith(".weights.h5")
                                                else "")) from None


def data_config(cfg: TrainConfig):
    """The :class:`crack_tf.data.DataConfig` of a run: the data options it shares by name, plus
    the source / path (the synthetic set is generated as a folder), the loader and determinism."""
    import dataclasses

    from crack_tf.data import DataConfig

    d = cfg.data
    source, path = d.data_source, d.data_dir
    if source == "synthetic":
        source, path = "folder", synthetic_root(cfg)
    shared = {f.name: getattr(d, f.name) for f in dataclasses.fields(DataConfig) if hasattr(d, f.name)}
    return DataConfig(**{**shared, "crop_side": tuple(d.crop_side)}, source=source, path=path,
                      deterministic=cfg.run.deterministic, processes=d.loader_processes,
                      shared_memory=d.loader_shared_memory,
                      workers=d.loader_workers or min(8, os.cpu_count() or 1))


def build_model(cfg: TrainConfig) -> keras.Model:
    """The model named by ``--model`` with the run's model options (and input size)."""
    from crack_tf import models

    m = cfg.model_options
    return models.get(
        m.model,
        input_shape=(cfg.data.image_size, cfg.data.image_size, 3),
        insert_after=m.insert_after,
        rates=m.rates,
        depth_multiplier=m.depth_multiplier,
        fusion=m.fusion,
        aspp_impl=m.aspp_impl,
        weights=m.weights or None,
        dropout=m.dropout,
        bn_momentum=m.bn_momentum or None,
        num_classes=len(CLASS_NAMES),
    )


def set_backbone_frozen(model: keras.Model, frozen: bool) -> None:
    """Freezes every backbone layer except the ASPP module (head stays trainable)."""
    from crack_tf.models.aspp import ASPP

    for layer in model.layers:
        if isinstance(layer, keras.Model):  # the ResNet50 backbone (with the spliced ASPP)
            for inner in layer.layers:
                inner.trainable = (not frozen) or isinstance(inner, ASPP)


def compile_model(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Optimizer (with EMA when ``--ema_momentum``), loss and the crack metrics at ``--threshold``."""
    from crack_tf.metrics import default_metrics

    optim = cfg.optim
    model.compile(
        optimizer=make_optimizer(optim, steps_per_epoch),
        loss=SparseCrossEntropy(len(CLASS_NAMES), optim.label_smoothing),
        metrics=default_metrics(threshold=optim.threshold, from_logits=True),
        jit_compile=jit_setting(cfg.run),
    )
    # Build the compiled loss and metrics now, symbolically (no computation). Otherwise the first
    # fit() pulls one batch from the training stream to build them and drops it: with an
    # infinite PyDataset that batch is lost and every later batch shifts by one, so a resumed
    # run (whose later fit() calls pull nothing) would see other batches than a straight one.
    spec = np.zeros((1, cfg.image_size, cfg.image_size, 3), np.uint8), np.zeros((1,), np.int32)
    model._symbolic_build(data_batch=spec)


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
    they see the averaged weights while training goes on with the raw ones."""
    if not cfg.ema_momentum:
        return None
    swapper = keras.callbacks.SwapEMAWeights(swap_on_epoch=False)
    swapper.set_model(model)
    return swapper


def _store_operating_point(model, cfg, val_input, out_dir: str, runtime, eval_input=None) -> dict | None:
    """Picks the operating point on val for final.keras (returned for run.json; its per-tile margins
    in ``<model_dir>/margins.npz``) and best.keras, and writes each into its file. Single-process
    runs only (val is sharded across processes)."""
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
        if name == "best.keras" or runtime.strategy is not None:
            # best.keras is another model; under a tf.distribute strategy predict_on_batch of the
            # live model returns per-replica rows, so the saved file is scored on one device.
            model = keras.saving.load_model(path, compile=False)
        points, margins = finish.operating_point(model, val_input, cfg.threshold_rule, cfg.tta, eval_input)
        if name == "final.keras":
            finish.save_margins(os.path.join(cfg.model_dir, "margins.npz"), margins)
        chosen = points[cfg.tta]
        at = chosen["val_at_threshold"]
        print(f"{name} operating point ({cfg.threshold_rule} on val, tta {cfg.tta}): threshold "
              f"{chosen['threshold']:.4f}, temperature {chosen['temperature']:.3f} (ECE {chosen['ece_before']:.3f} "
              f"-> {chosen['ece_after']:.3f}); val P={at['precision']:.4f} R={at['recall']:.4f} "
              f"acc={at['accuracy']:.4f}", flush=True)
        for source, m in (chosen.get("eval_sources_at_threshold_by_source") or {}).items():
            print(f"  eval source {source} at that point: acc={m['accuracy']:.4f} P={m['precision']:.4f} "
                  f"R={m['recall']:.4f}", flush=True)
        write_metadata(path, {"operating_point": chosen, "image_size": cfg.image_size, "tta": cfg.tta,
                              "small_policy": cfg.small_policy, "class_names": list(CLASS_NAMES), "model": cfg.model})
        result = result or points
    return result


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
        if ema is not None and i + 1 < len(segments):
            # fit() ended by writing the averages into the weights; go on from the raw ones,
            # exactly as a run resumed from this (epoch-end) checkpoint would.
            checkpoints.restore(model, checkpoints.checkpoints(out_dir)[0])
    if ema is not None:
        if not segments:  # resumed after the last epoch: the final model is the average
            model.optimizer.finalize_variable_values(model.trainable_weights)
        # finalize assigned the averages' own arrays to the weights: give the weights copies, or
        # a later donating step (JAX) would delete the buffers the optimizer still holds.
        for var in model.trainable_variables:
            var.assign(keras.ops.convert_to_numpy(var))

    eval_input = finish.eval_sources_input(cfg, dcfg)
    results = finish.final_metrics(model, cfg, split_input, val_input, eval_input)
    model.save(os.path.join(out_dir, "final.keras"))  # every process: saving is collective
    if state.get("best") is None:  # no validation: the final model is the best we know
        model.save(os.path.join(out_dir, "best.keras"))
    points = _store_operating_point(model, cfg, val_input, out_dir, runtime, eval_input)
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
            "wall_seconds": time.time() - started, "weights_sha256": digest,
        })
    return results


def _report(results: dict, seconds: float, model_dir: str) -> None:
    for split in ("train", "val"):
        m = results.get(split) or {}
        if m:
            shown = "  ".join(f"{k}={m[k]:.4f}" for k in ("accuracy", "precision", "recall", "loss") if k in m)
            print(f"final {split}: {shown}")
    print(f"done in {seconds:.0f}s; models and run.json in {model_dir}", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cfg = train_flags.config_from_flags()
    train_flags.validate(cfg)
    check_weights_file(cfg)
    runtime = make_runtime(cfg.run)
    if cfg.backend_check:
        print(runtime.describe())
        print(f"keras={keras.__version__} replicas={runtime.num_replicas} "
              f"accelerator={accelerator_present(runtime)}")
        return
    train_flags.check_replicas(cfg, runtime.num_replicas)
    started = time.time()
    results = train(cfg, runtime)
    if runtime.is_chief:
        _report(results, time.time() - started, cfg.model_dir)


def run() -> None:
    """Console-script entry point (user errors: one line, exit 2; a failed run: exit 1)."""
    from crack_tf import cli

    cli.run(main, extra_errors=(TrainingFailed,))


if __name__ == "__main__":
    run()
