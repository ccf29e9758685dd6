"""End-to-end training throughput of ``crack_tf.train`` and the TF-free loader alone.

Used by ``tools/benchmark.py --e2e_flagfile=...`` so that model-only and end-to-end numbers
come from one invocation on one machine:

* ``run_e2e``: runs the real trainer (``python -m crack_tf.train --flagfile=F``) for
  ``epochs`` x ``steps`` steps without validation and reads its ``history.jsonl``: the last
  epoch's training img/s (the trainer's own clock: data, step, callbacks), and the first
  epoch's extra seconds over a steady epoch (compilation and warm-up). ``repo`` may point to
  another checkout (e.g. an older commit), run with the same flags.
* ``run_loader``: the training input alone, consumed by ``fit`` of a near-empty model, with
  threads or processes: the loader's own ceiling.
* ``run_jobs``: both, for ``tools/benchmark.py --loader_workers / --e2e``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from crack_tf import procs  # noqa: E402


def trainer_command(flagfile: str, model_dir: str, batch: int, size: int, precision: str, epochs: int, steps: int,
                    extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "crack_tf.train", f"--flagfile={flagfile}", f"--batch_size={batch}",
            f"--image_size={size}", f"--mixed_precision={precision}", f"--epochs={epochs}",
            f"--steps_per_epoch={steps}", "--val_split=", "--tensorboard=false", "--checkpoint_every=0",
            "--overwrite", f"--model_dir={model_dir}", *extra]


def summarize_history(history: list[dict], batch: int) -> dict:
    """Steady img/s (last epoch) and first-epoch overhead (s) from a run's history records."""
    last, first = history[-1], history[0]
    seconds = [h.get("train_seconds", h["seconds"]) for h in history]
    return {"img_per_s": last["images_per_second"], "epoch_seconds": seconds,
            "first_epoch_overhead_s": seconds[0] - seconds[-1] if len(seconds) > 1 else None,
            "steps_per_epoch": last["step"] - (history[-2]["step"] if len(history) > 1 else 0),
            "batch": batch, "first_epoch_img_per_s": first["images_per_second"]}


def run_e2e(flagfile: str, repo: str = REPO, batch: int = 128, size: int = 224, precision: str = "bf16",
            epochs: int = 2, steps: int = 40, extra: list[str] | None = None, label: str = "",
            timeout: int = 900) -> dict:
    """One trainer run; returns its throughput summary (raises RuntimeError if it failed)."""
    work = tempfile.mkdtemp(prefix="crack_tf_e2e_")
    model_dir = os.path.join(work, "run")
    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.path.abspath(repo) + os.pathsep + env.get("PYTHONPATH", "")
    argv = trainer_command(os.path.abspath(os.path.join(REPO, flagfile)) if not os.path.isabs(flagfile) else flagfile,
                           model_dir, batch, size, precision, epochs, steps, extra or [])
    started = time.perf_counter()
    try:
        proc = procs.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        wall = time.perf_counter() - started
        history_path = os.path.join(model_dir, "history.jsonl")
        if proc.returncode != 0 or not os.path.isfile(history_path):
            raise RuntimeError(f"trainer failed (rc {proc.returncode}): {proc.stdout[-2000:]}")
        with open(history_path) as f:
            history = [json.loads(line) for line in f if line.strip()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = summarize_history(history, batch)
    out.update(impl="e2e", label=label or os.path.basename(flagfile), flagfile=flagfile,
               repo=os.path.relpath(os.path.abspath(repo), REPO), wall_s=wall, extra=extra or [],
               log_tail=[line for line in proc.stdout.splitlines() if "done in" in line][-3:])
    return out


def flagfile_model(flagfile: str) -> str:
    """The ``--model`` a trainer flagfile sets (last one wins; the trainer's default otherwise)."""
    model = "resnet50_aspp"
    with open(os.path.join(REPO, flagfile)) as f:
        for line in f:
            if line.strip().startswith("--model="):
                model = line.strip().split("=", 1)[1]
    return model


def loader_rate(flagfile: str, batch: int, size: int, batches: int, workers: int, processes: bool,
                extra: list[str]) -> dict:
    """In this process: images/s of the training input alone, consumed by ``fit`` of a model
    that does almost nothing (global average pooling + a 2-unit dense layer), so Keras' own
    PyDataset machinery (workers, queue, transfers) is what is timed."""
    import keras

    from crack_tf.data import make_input
    from crack_tf.training import config as train_config
    from crack_tf.training.build import data_config

    cfg = train_config.parse_args([f"--flagfile={flagfile}", f"--batch_size={batch}", f"--image_size={size}",
                                  f"--loader_workers={workers}", f"--loader_processes={processes}", *extra])
    split = make_input(data_config(cfg), cfg.train_split, True, batch, seed=0, backend="numpy")
    model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    times, cpu = [], []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            times.append(time.perf_counter())
            cpu.append(time.process_time())  # this (the trainer's) process only, all its threads

    model.fit(split.dataset, steps_per_epoch=batches + 4, epochs=1, verbose=0, callbacks=[Clock()])
    n = len(times) - 4  # after 4 warm-up batches
    return {"impl": "loader", "flagfile": flagfile, "workers": workers, "processes": processes, "batch": batch,
            "img_per_s": batch * n / (times[-1] - times[3]),
            "trainer_cpu_ms_per_batch": 1000 * (cpu[-1] - cpu[3]) / n,
            "shared_memory": "--loader_shared_memory=false" not in extra, "cpu_count": os.cpu_count()}


def run_loader(flagfile: str, batch: int, size: int, batches: int, workers: int, processes: bool,
               extra: list[str] | None = None) -> dict:
    """:func:`loader_rate` in a fresh process (its own flags, caches and worker pool)."""
    spec = json.dumps([flagfile, batch, size, batches, workers, processes, extra or []])
    proc = procs.run([sys.executable, os.path.abspath(__file__), spec], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"loader benchmark failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def parse_e2e(spec: str, default_repeat: int = 1) -> dict:
    """``"flagfile=F;label=L;repo=R;extra=--a=1 --b=2"`` -> dict (flagfile required)."""
    items = dict(part.split("=", 1) for part in spec.split(";") if "=" in part)
    if "flagfile" not in items:
        raise ValueError(f"--e2e={spec!r} needs flagfile=...")
    return {"flagfile": items["flagfile"], "label": items.get("label", ""), "repo": items.get("repo", ""),
            "extra": items.get("extra", "").split(), "repeat": int(items.get("repeat", default_repeat))}


# (processes, extra flags): threads; processes with batches through shared memory; through pipes.
LOADER_MODES = ((False, []), (True, []), (True, ["--loader_shared_memory=false"]))


def run_jobs(specs: list[str], loader_workers: list, batch: int, size: int, precision: str, epochs: int,
             steps: int, loader_batches: int, repeat: int, log=print) -> list[dict]:
    """Loader-only results (the first job's input, each worker count, threads and processes) and
    end-to-end trainer results of every ``--e2e`` job spec."""
    jobs = [parse_e2e(spec, repeat) for spec in specs]
    out = []
    for job in jobs[:1] if loader_workers else []:
        for workers in loader_workers:
            for processes, how in LOADER_MODES:
                try:
                    r = run_loader(job["flagfile"], batch, size, loader_batches, int(workers), processes,
                                   [*job["extra"], *how])
                except RuntimeError as err:
                    log(f"[benchmark] loader {job['flagfile']} failed: {err}")
                    continue
                out.append(dict(r, model=flagfile_model(job["flagfile"]), aspp_impl="-", mode="train"))
                log(f"[benchmark] loader workers={workers} processes={processes}{''.join(' ' + h for h in how)}: "
                    f"{r['img_per_s']:.0f} img/s, trainer process {r['trainer_cpu_ms_per_batch']:.1f} CPU ms/batch")
    for job in jobs:
        for i in range(job["repeat"]):
            label = f"{job['label'] or job['flagfile']}#{i + 1}"
            log(f"[benchmark] e2e {label}")
            try:
                r = run_e2e(job["flagfile"], job["repo"] or REPO, batch, size, precision, epochs, steps,
                            job["extra"], label)
            except RuntimeError as err:
                log(f"[benchmark] e2e {label} failed: {err}")
                continue
            out.append(dict(r, model=flagfile_model(job["flagfile"]), aspp_impl="auto", mode="train"))
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(loader_rate(*json.loads(sys.argv[1]))), flush=True)
