"""The trainer on the JAX backend: TF-free single process, and 2-process data parallel.

Multi-process runs use ``keras.distribution.initialize`` (``jax.distributed``) with CPU
collectives over gloo on 127.0.0.1, as a multi-host GPU job would over the network.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--model=zhang2016", "--data_source=synthetic", "--synthetic_train=64", "--synthetic_val=32",
    "--synthetic_size=64", "--image_size=64", "--batch_size=8", "--epochs=2", "--optimizer=sgd",
    "--lr=0.01", "--tensorboard=false", "--log_every=4", "--loader=numpy", "--seed=3",
]
# Makes `import tensorflow` fail, as on the GPU machine (JAX and PyTorch only).
_BLOCK_TF = textwrap.dedent(
    """
    import sys
    class _BlockTF:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError("tensorflow is blocked in this test")
    sys.meta_path.insert(0, _BlockTF())
    """
)


def _env(tmp_path, block_tf: bool) -> dict:
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    if block_tf:
        site = tmp_path / "block_tf"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_BLOCK_TF)
        env["PYTHONPATH"] = os.pathsep.join([str(site), REPO, env.get("PYTHONPATH", "")])
    return env


def _train(args, env, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crack_tf.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_jax_training_runs_without_tensorflow(tmp_path):
    model_dir = tmp_path / "run"
    proc = _train([*TINY, f"--data_dir={tmp_path / 'data'}", f"--model_dir={model_dir}"], _env(tmp_path, True))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    run = json.load(open(model_dir / "run.json"))
    assert run["versions"]["backend"] == "jax"
    assert "tensorflow" not in run["versions"]  # never imported
    assert (model_dir / "final.keras").is_file() and (model_dir / "best.keras").is_file()


@pytest.mark.slow
def test_two_process_data_parallel_matches_single_process_evaluation(tmp_path):
    model_dir = tmp_path / "mp"
    env = _env(tmp_path, False)
    common = [*TINY, f"--data_dir={tmp_path / 'data'}", f"--model_dir={model_dir}",
              f"--coordinator_address=127.0.0.1:{_free_port()}", "--num_processes=2"]
    procs = [_train([*common, f"--process_id={i}"], env) for i in range(2)]
    outs = [p.communicate(timeout=420)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    digests = [out.split(f"process {i}: weights_sha256=")[1].split()[0] for i, out in enumerate(outs)]
    assert digests[0] == digests[1]  # both processes end with identical weights
    run = json.load(open(model_dir / "run.json"))
    assert run["runtime"]["processes"] == 2 and run["runtime"]["replicas"] == 2

    # The metrics reduced across the 2 processes equal one process on the whole val split.
    code = textwrap.dedent(
        f"""
        import json, keras
        import crack_tf.models
        from crack_tf.data import DataConfig, make_input
        from crack_tf.metrics import default_metrics
        model = keras.saving.load_model({str(model_dir / 'final.keras')!r}, compile=False)
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=default_metrics())
        val = make_input(DataConfig(path={str(tmp_path / 'data')!r}, image_size=64), "val", training=False,
                         global_batch_size=8, backend="numpy")
        print("RESULT", json.dumps(model.evaluate(val.dataset, verbose=0, return_dict=True)))
        """
    )
    single = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    metrics = json.loads(single.stdout.split("RESULT ")[1])
    for key in ("accuracy", "precision", "recall", "f1"):
        np.testing.assert_allclose(metrics[key], run["metrics"]["val"][key], atol=1e-6, err_msg=key)
