"""Trains a crack classifier: ``python -m crack_tf.train --flagfile=configs/<name>.cfg``.

With no data flags it generates the embedded synthetic crack set and trains
``resnet50_aspp`` on it. Any flag in the flagfile can be overridden after it, e.g.
``--flagfile=configs/uav75.cfg --epochs=3``. Re-running the same command in the same
``--model_dir`` resumes from the last checkpoint (also after ``kill -9``) and ends with
the same weights as an uninterrupted run.
"""

from __future__ import annotations

import time

from absl import app

from crack_tf.training import flags as train_flags

train_flags.define_flags()

import keras  # noqa: E402

from crack_tf.training.build import check_weights_file  # noqa: E402
from crack_tf.training.config import from_flags  # noqa: E402
from crack_tf.training.loop import TrainingFailed, train  # noqa: E402
from crack_tf.training.runtime import accelerator_present, make_runtime  # noqa: E402


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
    cfg = from_flags()
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
