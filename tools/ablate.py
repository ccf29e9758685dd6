"""Runs an ablation grid through the trainer and tabulates it next to the paper.

  python tools/ablate.py --flagfile=configs/ablation_table2.cfg --parallel=4 --seeds=0,1,2
  python tools/ablate.py --flagfile=configs/ablation_table1.cfg --extra=--epochs=2 --dry_run

Grid format (an absl flagfile for THIS tool, see configs/ablation_*.cfg)::

  --table=table2                       # key of the paper's numbers (PAPER below)
  --base_flagfile=configs/uav75.cfg    # trainer flagfile shared by every row
  --row=resnet50:model=resnet50        # one row: NAME:flag=value;flag=value;...
  --row=layer1_x4:model=resnet50_aspp;insert_after=layer1;depth_multiplier=4;rates=2,4,8

Leave-one-source-out (``--loso=uav75:0.5,uavcrack:0.3,deepcrack:0.2``, the full mix in the
trainer's ``--data_dir`` syntax): every (row, seed) becomes one run per fold, ``all`` (the whole
mix) and ``no_<source>`` (the mix without that source, its val the other sources', and
``--eval_sources=<source>``: the left-out source's val tiles scored at the threshold the fold's
model would ship with). In row flags and ``--extra``, ``{fold}`` becomes the fold name and
``{train_sources}`` its training sources joined by ``+`` (``weights=runs/pretrain/{fold}.weights.h5``:
a backbone per fold, pretrained without the left-out source). ``--folds`` keeps some folds only.
results.md then holds the leave-one-source-out table.

Each (row, seed) is one ``python -m crack_tf.train --flagfile=<base> --<row flags> --seed=<s>
--model_dir=<output_dir>/<row>_s<seed> <extra>`` subprocess (later flags win, so ``--extra``
overrides everything; a row may name its own ``flagfile=...``). Logs go to
``<output_dir>/logs/<run>.log`` (appended). A run whose ``run.json`` exists is skipped; a run
killed mid-way resumes from its checkpoint when the grid is launched again. The backend is
inherited (``KERAS_BACKEND``). Writes ``results.csv`` (one line per finished run) and
``results.md`` (mean +- sample std over seeds, n, the paper's figures alongside).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablate_report import (  # noqa: E402  (tools/ is not a package)
    CSV_FIELDS,
    METRICS,
    OPTION_KEYS,
    PAPER,
    PAPER_HEADLINE,
    collect,
    markdown,
    read_json,
    write_results,
)

from crack_tf import procs  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
__all__ = ["CSV_FIELDS", "METRICS", "OPTION_KEYS", "PAPER", "PAPER_HEADLINE", "collect", "markdown", "write_results"]

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The tool's flags (defined only when run as a script, so tests can import it)."""
    flags.DEFINE_string("table", "ours", "Table key: table1 | table2 | table3 | ours (selects the paper's numbers).")
    flags.DEFINE_string("base_flagfile", "configs/uav75.cfg", "Trainer flagfile every row starts from.")
    flags.DEFINE_multi_string("row", [], "Grid row NAME:flag=value;flag=value (repeat the flag per row).")
    flags.DEFINE_string("output_dir", None, "Grid folder (default runs/ablation_<table>).")
    flags.DEFINE_list("seeds", ["0"], "Seeds; every row runs once per seed.")
    flags.DEFINE_integer("parallel", 1, "Runs at the same time (several small runs fit one GPU).")
    flags.DEFINE_list("gpus", [], "GPU ids handed out round-robin to concurrent runs (CUDA_VISIBLE_DEVICES).")
    flags.DEFINE_string("only", None, "Run only rows whose name matches this regex (re.search).")
    flags.DEFINE_multi_string("extra", [], "Trainer flags appended to every run, comma separated: "
                              "--extra=--epochs=2,--rates=2,4,6 (split before each '--').")
    flags.DEFINE_string("loso", None, "Leave-one-source-out over this photo-source mix (--data_dir syntax, e.g. "
                        "uav75:0.5,uavcrack:0.3,deepcrack:0.2): folds all + no_<source> per row and seed.")
    flags.DEFINE_list("folds", [], "With --loso: only these folds (e.g. no_uav75,no_deepcrack).")
    flags.DEFINE_bool("dry_run", False, "Print the commands and exit.")
    flags.DEFINE_bool("report_only", False, "Only rebuild results.csv / results.md from finished runs.")


@dataclass
class Run:
    table: str
    row: str
    seed: int
    args: list[str]
    model_dir: str
    log: str
    status: str = "pending"
    seconds: float = 0.0
    options: dict = field(default_factory=dict)
    fold: str = ""

    @property
    def name(self) -> str:
        return os.path.basename(self.model_dir)


def parse_row(spec: str) -> tuple[str, list[str]]:
    """``"name:flag=v;flag=v"`` -> ``("name", ["--flag=v", ...])``."""
    name, sep, body = spec.partition(":")
    name = name.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ValueError(f"--row={spec!r}: expected NAME:flag=value;flag=value with NAME made of [A-Za-z0-9_.-]")
    args = []
    for item in filter(None, (s.strip() for s in body.split(";"))):
        key, eq, value = item.lstrip("-").partition("=")
        if not eq or not key:
            raise ValueError(f"--row={spec!r}: {item!r} is not flag=value")
        args.append(f"--{key}={value}")
    return name, args


def split_extra(values: list[str]) -> list[str]:
    """``["--epochs=2,--rates=2,4,6"]`` -> ``["--epochs=2", "--rates=2,4,6"]``."""
    out = []
    for value in values:
        for part in re.split(r",(?=--)", value.strip()):
            if part:
                if not part.startswith("--"):
                    raise ValueError(f"--extra: {part!r} must start with '--'")
                out.append(part)
    return out


def flag_values(args: list[str]) -> dict[str, str]:
    """The last value of each ``--flag=value`` (flagfiles excluded)."""
    out = {}
    for a in args:
        key, _, value = a[2:].partition("=")
        if key != "flagfile":
            out[key] = value
    return out


LEFT_OUT_ONLY = ("--adabn_eval_crops", "--save_eval_features")  # trainer flags that need --eval_sources (the left-out source)


@dataclass(frozen=True)
class Fold:
    """One leave-one-source-out fold: its name, training mix (``--data_dir``) and left-out source."""

    name: str
    data_dir: str
    left_out: str = ""

    @property
    def train_sources(self) -> str:
        return "+".join(part.split(":")[0] for part in self.data_dir.split(","))

    def args(self) -> list[str]:
        return [f"--data_dir={self.data_dir}"] + ([f"--eval_sources={self.left_out}"] if self.left_out else [])

    def fill(self, args: list[str]) -> list[str]:
        """The placeholders filled in; a fold with no left-out source drops the flags that score one."""
        args = [a for a in args if self.left_out or a.split("=")[0] not in LEFT_OUT_ONLY]
        return [a.replace("{fold}", self.name).replace("{train_sources}", self.train_sources) for a in args]


def loso_folds(mix: str, keep: list[str] | None = None) -> list[Fold]:
    """``all`` and ``no_<source>`` for every source of ``mix`` (``--data_dir`` syntax; weights kept)."""
    parts = [p.strip() for p in mix.split(",") if p.strip()]
    names = [p.split(":")[0] for p in parts]
    if len(parts) < 2 or len(set(names)) != len(names) or not all(re.fullmatch(r"[A-Za-z0-9_.\-]+", n) for n in names):
        raise ValueError(f"--loso={mix!r}: give two or more distinct photo sources, e.g. uav75:0.5,uavcrack:0.3,deepcrack:0.2")
    folds = [Fold("all", ",".join(parts))]
    folds += [Fold(f"no_{name}", ",".join(p for p in parts if p.split(":")[0] != name), name) for name in names]
    if keep:
        unknown = sorted(set(keep) - {f.name for f in folds})
        if unknown:
            raise ValueError(f"--folds: unknown fold(s) {unknown}; the folds are {[f.name for f in folds]}")
        folds = [f for f in folds if f.name in keep]
    return folds


def build_runs(table: str, base_flagfile: str, rows: list[str], seeds: list[int], output_dir: str,
               extra: list[str], only: str | None = None, folds: list[Fold] | None = None) -> list[Run]:
    """Expands the grid into runs (row-major, then folds, then seeds)."""
    if not rows:
        raise ValueError("no --row given: define the grid in the ablation flagfile (see --help)")
    parsed = [parse_row(r) for r in rows]
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate row names in the grid: {sorted({n for n in names if names.count(n) > 1})}")
    if folds:
        clash = {k for _, row_args in parsed for k in flag_values(row_args + extra)} & {"data_dir", "eval_sources"}
        if clash:
            raise ValueError(f"--loso sets --data_dir / --eval_sources per fold; the grid also sets {sorted(clash)}")
    runs = []
    for name, row_args in parsed:
        if only and not re.search(only, name):
            continue
        for fold in folds or [None]:
            stem = f"{name}_{fold.name}" if fold else name
            for seed in seeds:
                model_dir = os.path.join(output_dir, f"{stem}_s{seed}")
                args = [f"--flagfile={base_flagfile}", *row_args, *(fold.args() if fold else []), f"--seed={seed}",
                        f"--model_dir={model_dir}", *extra]
                args = fold.fill(args) if fold else args
                runs.append(Run(table, name, seed, args, model_dir,
                                os.path.join(output_dir, "logs", f"{stem}_s{seed}.log"), options=flag_values(args),
                                fold=fold.name if fold else ""))
    return runs


def stale_flags(run: Run, run_json: dict) -> list[str]:
    """Flags set by the grid whose typed value (as the trainer parses it) differs from the
    finished run's typed config; flags that change no result (the loader's workers, logging: the
    trainer's ``NON_IDENTITY_FLAGS``, which it resumes across) are not compared."""
    from crack_tf.training import config as train_config
    from crack_tf.training.flags import NON_IDENTITY_FLAGS

    config = run_json.get("config", {})
    finished = train_config.from_values(config)
    differ = []
    for key, value in run.options.items():
        if key in config and key != "model_dir" and key not in NON_IDENTITY_FLAGS:
            try:
                wanted = train_config.parse_value(key, value)
            except Exception:  # noqa: BLE001 - a value the trainer would reject is not the finished run's
                wanted = value
            if wanted != getattr(finished, key):
                differ.append(key)
    return differ


def child_env(slot_gpu: str | None, per_gpu: int) -> dict:
    """The trainer's environment; ``per_gpu`` = how many runs may share one GPU."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if per_gpu > 1:  # several processes share a GPU: no process may grab all of its memory
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / per_gpu:.2f}")
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if slot_gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot_gpu
    return env


class Launcher:
    """Runs the trainer subprocesses (at most ``parallel`` at once) and kills them on exit."""

    def __init__(self, parallel: int, gpus: list[str]):
        self.parallel = max(1, parallel)
        self.slots: queue.Queue = queue.Queue()
        for i in range(self.parallel):
            self.slots.put(gpus[i % len(gpus)] if gpus else None)
        self.per_gpu = -(-self.parallel // max(1, len(gpus)))
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def run(self, run: Run) -> Run:
        gpu = self.slots.get()
        try:
            os.makedirs(os.path.dirname(run.log), exist_ok=True)
            started = time.time()
            with open(run.log, "a", encoding="utf-8") as log:
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command(run))}\n")
                log.flush()
                proc = procs.popen(self.command(run), stdout=log, stderr=subprocess.STDOUT,
                                        env=child_env(gpu, self.per_gpu))
                with self.lock:
                    self.procs.add(proc)
                code = proc.wait()
                with self.lock:
                    self.procs.discard(proc)
            run.seconds = time.time() - started
            ok = code == 0 and os.path.isfile(os.path.join(run.model_dir, "run.json"))
            run.status = "done" if ok else f"failed (exit {code}, see {run.log})"
            return run
        finally:
            self.slots.put(gpu)

    @staticmethod
    def command(run: Run) -> list[str]:
        return [sys.executable, "-m", "crack_tf.train", *run.args]

    def kill_all(self) -> None:
        with self.lock:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.terminate()


def run_grid(runs: list[Run], output_dir: str, table: str, parallel: int = 1, gpus: list[str] | None = None,
             log=print) -> list[Run]:
    """Skips finished runs, launches the rest, rewrites the results after each one."""
    todo = []
    for run in runs:
        rj = read_json(os.path.join(run.model_dir, "run.json"))
        if rj is None:
            todo.append(run)
            continue
        differ = stale_flags(run, rj)
        if differ:
            run.status = "stale"
            log(f"stale   {run.name}: run.json differs in {', '.join('--' + d for d in differ)}; delete "
                f"{run.model_dir} or use another --output_dir (kept out of the results)")
        else:
            run.status = "skipped"
            log(f"skipped {run.name} (run.json exists)")
    launcher = Launcher(parallel, gpus or [])
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        launcher.kill_all()
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    started, finished = time.time(), 0
    try:
        with cf.ThreadPoolExecutor(max_workers=launcher.parallel) as pool:
            def start(run: Run) -> Run:
                resume = os.path.isfile(os.path.join(run.model_dir, "ckpt", "state.json"))
                log(f"start   {run.name}{' (resuming from its checkpoint)' if resume else ''}; log {run.log}")
                return launcher.run(run)

            futures = [pool.submit(start, run) for run in todo]  # "start" is logged when a slot frees
            for fut in cf.as_completed(futures):
                run = fut.result()
                finished += 1
                write_results(output_dir, table, [r for r in runs if r.status != "stale"])
                log(f"{run.status:7s} {run.name} in {run.seconds:.0f}s  [{finished}/{len(todo)}, "
                    f"{time.time() - started:.0f}s elapsed]")
    except BaseException:
        launcher.kill_all()
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    write_results(output_dir, table, [r for r in runs if r.status != "stale"])
    return runs


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    output_dir = FLAGS.output_dir or os.path.join("runs", f"ablation_{FLAGS.table}")
    try:
        seeds = [int(s) for s in FLAGS.seeds]
        extra = split_extra(FLAGS.extra)
        folds = loso_folds(FLAGS.loso, FLAGS.folds) if FLAGS.loso else None
        if FLAGS.folds and not FLAGS.loso:
            raise ValueError("--folds needs --loso")
        runs = build_runs(FLAGS.table, FLAGS.base_flagfile, FLAGS.row, seeds, output_dir, extra, FLAGS.only, folds)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if not os.path.isfile(FLAGS.base_flagfile):
        raise app.UsageError(f"--base_flagfile={FLAGS.base_flagfile} not found (paths are relative to {os.getcwd()})")
    if FLAGS.dry_run:
        for run in runs:
            print(" ".join(Launcher.command(run)))
        print(f"{len(runs)} runs ({FLAGS.table}) -> {output_dir}")
        return 0
    if FLAGS.report_only:
        results = write_results(output_dir, FLAGS.table, runs)
        print(f"{len(results)}/{len(runs)} runs finished; wrote {output_dir}/results.csv and results.md")
        return 0
    print(f"{FLAGS.table}: {len(runs)} runs ({len(FLAGS.row)} rows x {len(seeds)} seeds), parallel={FLAGS.parallel}, "
          f"backend={os.environ.get('KERAS_BACKEND', 'tensorflow (default)')} -> {output_dir}", flush=True)
    run_grid(runs, output_dir, FLAGS.table, FLAGS.parallel, FLAGS.gpus, log=lambda s: print(s, flush=True))
    counts = {s: sum(r.status.startswith(s) for r in runs) for s in ("done", "skipped", "stale", "failed")}
    print(f"summary: {counts['done']} done, {counts['skipped']} skipped, {counts['stale']} stale, "
          f"{counts['failed']} failed of {len(runs)}; results in {output_dir}/results.md", flush=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
