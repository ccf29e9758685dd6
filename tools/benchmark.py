"""Training / inference throughput of the Keras model (current backend) and the PyTorch twin.

One invocation measures every (implementation, model, ASPP impl, mode) so ratios are
honest. Each Keras model runs in its own subprocess (clean compile caches and device
peak memory); PyTorch runs in this process. Inputs are random (never zeros), warm-up
steps are excluded, every step is synchronised. One JSON line per result, then a ratio
table (each model vs plain resnet50 of the same implementation; keras vs torch).

  KERAS_BACKEND=jax python tools/benchmark.py --models=resnet50,resnet50_aspp \
      --aspp_impls=dense_s2b,dense --batch=128 --size=224 --precision=bf16 --json_out=bench.jsonl
  python tools/benchmark.py --models=aspp_module ...     # the ASPP layer alone (micro)
  python tools/benchmark.py --check_curves               # float32 vs bf16 loss curves

With KERAS_BACKEND=jax this script never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools.bench_report import macs, ratio_table  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["resnet50", "resnet50_aspp"], "resnet50 | resnet50_aspp | aspp_module")
flags.DEFINE_list("aspp_impls", ["separable", "dense"], "crack_tf ASPP impls for the Keras model")
flags.DEFINE_list("torch_aspp_impls", ["separable"], "ASPP impls of the PyTorch twin: separable, dense")
flags.DEFINE_string("insert_after", "layer1", "ASPP position")
flags.DEFINE_integer("batch", 16, "batch size")
flags.DEFINE_integer("size", 224, "image size")
flags.DEFINE_enum("precision", "float32", ["float32", "bf16"], "keras: mixed_bfloat16; torch: autocast")
flags.DEFINE_integer("steps", 10, "timed steps")
flags.DEFINE_integer("warmup", 3, "untimed steps (compilation included)")
flags.DEFINE_list("impls", ["keras", "torch_eager", "torch_compile"], "keras, torch_eager, torch_compile")
flags.DEFINE_list("modes", ["train", "infer"], "train, infer")
flags.DEFINE_list("torch_compile_modes", ["train", "infer"], "modes torch_compile runs")
flags.DEFINE_list("torch_compile_impls", None, "ASPP impls torch_compile runs (default: --torch_aspp_impls)")
flags.DEFINE_list("jit_compile", ["true"], "keras on TF: XLA true/false (list runs both)")
flags.DEFINE_string("json_out", None, "append JSON lines here")
flags.DEFINE_bool("check_curves", False, "instead: float32 vs bf16 loss curves (Keras)")
flags.DEFINE_integer("curve_steps", 30, "steps for --check_curves")
flags.DEFINE_float("curve_lr", 1e-3, "SGD learning rate for --check_curves")
flags.DEFINE_float("curve_tol", 0.1, "--check_curves passes when the 10-step mean losses differ <= this")
flags.DEFINE_string("child", None, "internal: run one Keras spec (JSON) and print RESULT lines")
flags.DEFINE_multi_string("e2e", [], "also run crack_tf.train end to end (tools/bench_e2e.py), one flag per run: "
                          "'flagfile=F[;label=L][;repo=OTHER_CHECKOUT][;repeat=N][;extra=--a=1 --b=2]'")
flags.DEFINE_integer("e2e_steps", 40, "steps per epoch of each end-to-end run")
flags.DEFINE_integer("e2e_epochs", 2, "epochs of each end-to-end run (the last one is the steady rate)")
flags.DEFINE_integer("e2e_repeat", 1, "default repeat= of --e2e runs (2: cold, then warm compile cache)")
flags.DEFINE_list("loader_workers", [], "also time the TF-free training input (of the first --e2e run) alone, "
                  "with these worker counts, threads and processes")
flags.DEFINE_integer("loader_batches", 30, "batches per loader measurement")

# ----------------------------------------------------------------------------- timing
def _time(run, warmup: int, steps: int) -> dict:
    t0 = time.perf_counter()
    for _ in range(warmup):
        run()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    times.sort()
    med, p90 = times[len(times) // 2], times[min(len(times) - 1, int(0.9 * len(times)))]
    return {"step_ms_median": 1e3 * med, "step_ms_p90": 1e3 * p90, "warmup_s": warm_s,
            "img_per_s": FLAGS.batch / (sum(times) / len(times))}


def _data(model: str):
    import numpy as np

    rng = np.random.default_rng(0)
    b, s = FLAGS.batch, FLAGS.size
    if model == "aspp_module":
        x = rng.normal(size=(b, s // 4, s // 4, 256)).astype("float32")
        return x, rng.normal(size=x.shape).astype("float32")
    return rng.uniform(0, 255, (b, s, s, 3)).astype("float32"), rng.integers(0, 2, b).astype("int32")


# ----------------------------------------------------------------------------- Keras
def _keras_model(model: str, impl: str):
    import keras

    if model == "aspp_module":
        from crack_tf.models.aspp import ASPP

        s = FLAGS.size // 4
        inputs = keras.Input((s, s, 256))
        return keras.Model(inputs, ASPP(impl=impl)(inputs))
    from crack_tf import models

    return models.get(model, input_shape=(FLAGS.size, FLAGS.size, 3), insert_after=FLAGS.insert_after,
                      aspp_impl=impl, weights=None)


def _loss(model: str):
    import keras

    if model == "aspp_module":
        return keras.losses.MeanSquaredError()
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _keras_step_jax(model, mode: str, x, y, loss_fn):
    import jax
    import keras

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    xj, yj = jax.device_put(x), jax.device_put(y)
    if mode == "infer":
        f = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        return lambda: f(tv, ntv, xj).block_until_ready()
    opt = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    opt.build(model.trainable_variables)

    def compute(tv, ntv, x, y):
        out, ntv = model.stateless_call(tv, ntv, x, training=True)
        return loss_fn(y, out), ntv

    grad = jax.value_and_grad(compute, has_aux=True)

    def step(tv, ntv, ov, x, y):
        (loss, ntv), g = grad(tv, ntv, x, y)
        tv, ov = opt.stateless_apply(ov, g, tv)
        return tv, ntv, ov, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    state = [tv, ntv, [v.value for v in opt.variables]]

    def run():
        out = step(*state, xj, yj)  # the state buffers are donated: keep the new ones
        state[:] = out[:3]
        out[3].block_until_ready()

    return run


def _keras_step_tf(model, mode: str, x, y, loss_fn, jit: bool):
    import keras
    import tensorflow as tf

    xt, yt = tf.constant(x), tf.constant(y)
    if mode == "infer":
        f = tf.function(lambda x: model(x, training=False), jit_compile=jit)
        return lambda: f(xt).numpy()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9), loss=loss_fn,
                  jit_compile=jit)
    return lambda: model.train_on_batch(xt, yt)


def _peak_bytes():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    return None


def keras_child(spec: dict) -> None:
    """Runs infer then train for one (model, aspp impl[, jit]) and prints RESULT lines."""
    import keras

    if FLAGS.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    backend = keras.backend.backend()
    model = _keras_model(spec["model"], spec["aspp_impl"])
    if spec["model"] != "resnet50":
        from crack_tf.models.aspp import resolve_impl

        spec["aspp_resolved"] = resolve_impl(spec["aspp_impl"], keras.mixed_precision.global_policy().compute_dtype)
    x, y = _data(spec["model"])
    for mode in [m for m in ("infer", "train") if m in FLAGS.modes]:
        if backend == "jax":
            run = _keras_step_jax(model, mode, x, y, _loss(spec["model"]))
        elif backend == "tensorflow":
            run = _keras_step_tf(model, mode, x, y, _loss(spec["model"]), spec["jit"])
        else:
            raise SystemExit(f"keras backend {backend} is not benchmarked; use jax or tensorflow")
        result = dict(spec, mode=mode, backend=backend, **_time(run, FLAGS.warmup, FLAGS.steps))
        result["peak_bytes"] = _peak_bytes()
        result["tensorflow_imported"] = "tensorflow" in sys.modules  # must stay False on JAX
        print("RESULT " + json.dumps(result), flush=True)


def run_keras(model: str, impl: str, jit: bool) -> list[dict]:
    spec = {"impl": "keras" + ("" if jit else "_nojit"), "model": model, "aspp_impl": impl, "jit": jit}
    argv = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    argv += [a for a in sys.argv[1:] if not a.startswith("--json_out")]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="2")
    from crack_tf import procs  # the child ends with this process, also on SIGKILL

    proc = procs.run(argv, env=env, stdout=subprocess.PIPE, text=True)
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0:
        print(f"[benchmark] keras {model}/{impl} failed (rc {proc.returncode})", file=sys.stderr)
    return results


# ----------------------------------------------------------------------------- PyTorch
def run_torch(model: str, impl: str, compiled: bool, mode: str) -> dict:
    import numpy as np
    import torch

    from tools.torch_reference import TorchASPP, TorchResNetASPP

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True  # fastest conv algorithms, as XLA autotunes its own
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # like JAX's default
    torch.manual_seed(0)
    if model == "aspp_module":
        net = TorchASPP(256, impl=impl)
    else:
        net = TorchResNetASPP(insert_after=None if model == "resnet50" else FLAGS.insert_after, aspp_impl=impl)
    net = net.to(dev).to(memory_format=torch.channels_last)
    x, y = _data(model)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dev)
    xt = xt.contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(y.transpose(0, 3, 1, 2) if y.ndim == 4 else y.astype("int64")).to(dev)
    fwd = torch.compile(net) if compiled else net
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=FLAGS.precision == "bf16")
    loss_fn = torch.nn.MSELoss() if model == "aspp_module" else torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def train():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(fwd(xt).float(), yt)
        loss.backward()
        opt.step()
        sync()

    def infer():
        with torch.inference_mode(), autocast:
            fwd(xt)
        sync()

    net.train(mode == "train")
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {"impl": "torch_compile" if compiled else "torch_eager", "model": model, "aspp_impl": impl,
              "mode": mode, "backend": f"torch {torch.__version__} {dev}"}
    result.update(_time(train if mode == "train" else infer, FLAGS.warmup, FLAGS.steps))
    result["peak_bytes"] = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    return result


# ----------------------------------------------------------------------------- report
def _emit(result: dict) -> None:
    gmac, gmac_exec = macs(result["model"], FLAGS.size, FLAGS.insert_after, result["aspp_impl"])
    result.update(precision=FLAGS.precision, batch=FLAGS.batch, size=FLAGS.size, steps=FLAGS.steps,
                  warmup=FLAGS.warmup, gmacs_per_img=gmac / 1e9, gmacs_executed_per_img=gmac_exec / 1e9,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    line = json.dumps(result)
    print(line, flush=True)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "a") as f:
            f.write(line + "\n")


def check_curves() -> None:
    """Trains resnet50_aspp from identical weights in float32 and mixed_bfloat16 on a
    fixed synthetic batch; prints both loss curves and their largest difference."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    curves = {}
    weights = None
    for precision in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(precision)
        model = _keras_model("resnet50_aspp", "auto")
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=FLAGS.curve_lr, momentum=0.9),
                      loss=_loss("resnet50_aspp"))
        x, y = _data("resnet50_aspp")
        curves[precision] = [float(model.train_on_batch(x, y)) for _ in range(FLAGS.curve_steps)]
        print(f"[curves] {precision}: " + " ".join(f"{v:.4f}" for v in curves[precision]), flush=True)
    a, b = np.array(curves["float32"]), np.array(curves["mixed_bfloat16"])
    diff = np.abs(a - b)
    # Single steps of a from-scratch net on one batch are chaotic; 10-step means are not.
    windows = [float(abs(a[i:i + 10].mean() - b[i:i + 10].mean())) for i in range(0, len(a), 10)]
    summary = {"check": "float32_vs_bf16_curves", "backend": keras.backend.backend(), "size": FLAGS.size,
               "batch": FLAGS.batch, "steps": FLAGS.curve_steps, "max_abs_diff": float(diff.max()),
               "max_rel_diff": float((diff / np.maximum(a, 1e-3)).max()),
               "first_loss": [float(a[0]), float(b[0])], "last_loss": [float(a[-1]), float(b[-1])],
               "window10_mean_abs_diff": windows, "lr": FLAGS.curve_lr, "tolerance": FLAGS.curve_tol,
               "passed": bool(max(windows) <= FLAGS.curve_tol)}
    print(json.dumps(summary), flush=True)
    if not summary["passed"]:
        raise SystemExit(f"float32 and bf16 10-step mean losses differ by {max(windows):.4f} > {FLAGS.curve_tol}")


def main(argv) -> None:
    del argv
    if FLAGS.child:
        return keras_child(json.loads(FLAGS.child))
    if FLAGS.check_curves:
        return check_curves()
    results = []
    plan = []
    for model in FLAGS.models:  # per model: the (quick) PyTorch runs first, then Keras
        impls = ["separable"] if model == "resnet50" else FLAGS.aspp_impls
        torch_impls = ["separable"] if model == "resnet50" else FLAGS.torch_aspp_impls
        for name in ("torch_eager", "torch_compile"):
            modes, names = FLAGS.modes, torch_impls
            if name == "torch_compile":
                modes = [m for m in modes if m in FLAGS.torch_compile_modes]
                names = [i for i in names if i in (FLAGS.torch_compile_impls or names)]
            if name in FLAGS.impls:
                plan += [(name, model, impl, None, m) for impl in names for m in modes]
        if "keras" in FLAGS.impls:
            plan += [("keras", model, impl, jit.lower() == "true", None)
                     for impl in impls for jit in FLAGS.jit_compile]
    from tools import bench_e2e

    precision = "bf16" if FLAGS.precision == "bf16" else "float32"
    pipeline = bench_e2e.run_jobs(FLAGS.e2e, FLAGS.loader_workers, FLAGS.batch, FLAGS.size, precision,
                                  FLAGS.e2e_epochs, FLAGS.e2e_steps, FLAGS.loader_batches, FLAGS.e2e_repeat,
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
    for r in pipeline:
        _emit(r)
    results += pipeline
    for i, (name, model, impl, jit, mode) in enumerate(plan, 1):
        print(f"[benchmark] {i}/{len(plan)} {name} {model} {impl} {mode or ''}", file=sys.stderr, flush=True)
        try:
            batch = (run_keras(model, impl, jit) if name == "keras"
                     else [run_torch(model, impl, name == "torch_compile", mode)])
        except Exception as err:  # keep going: one failing config must not lose the others
            print(f"[benchmark] {name} {model} {impl} {mode} failed: {err!r}", file=sys.stderr)
            continue
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()  # the finished model's cached blocks, before the next config
        for r in batch:
            _emit(r)
            results.append(r)
    print(ratio_table(results), flush=True)
    print(f"[benchmark] done: {len(results)} results, precision {FLAGS.precision}, batch {FLAGS.batch}, "
          f"size {FLAGS.size}", flush=True)


if __name__ == "__main__":
    app.run(main)
