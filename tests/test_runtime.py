"""Run-time settings of the trainer: deterministic XLA kernels for --deterministic on JAX."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crack_tf.training import runtime


def test_deterministic_adds_the_xla_flag_once_and_keeps_other_flags(monkeypatch):
    pytest.importorskip("jax")
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert runtime.deterministic_xla(False) == "--xla_dump_to=/tmp/x"
    flags = runtime.deterministic_xla(True)
    assert flags == f"--xla_dump_to=/tmp/x {runtime.DETERMINISTIC_XLA_FLAG}"
    assert runtime.deterministic_xla(True) == flags  # idempotent
    import os

    assert os.environ["XLA_FLAGS"] == flags


def test_deterministic_after_jax_started_fails_with_what_to_do():
    pytest.importorskip("jax")
    code = ("import os; os.environ.pop('XLA_FLAGS', None)\n"
            "import jax, jax.numpy as jnp; jnp.ones(2).block_until_ready()\n"
            "from crack_tf.training import runtime\n"
            "try:\n    runtime.deterministic_xla(True)\nexcept RuntimeError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR --deterministic on JAX must be set before JAX starts" in out.stdout, out.stderr[-2000:]
    assert "XLA_FLAGS=--xla_gpu_deterministic_ops=true" in out.stdout


def test_compile_cache_keeps_even_tiny_compiles_for_the_next_process(tmp_path):
    """A model load compiles hundreds of sub-second programs: the cache must keep those too."""
    pytest.importorskip("jax")
    cache = tmp_path / "cache"
    code = ("import os; os.environ['JAX_PLATFORMS'] = 'cpu'\n"
            "from crack_tf.training import runtime\n"
            f"print(runtime.enable_compile_cache({str(cache)!r}))\n"
            "import jax, jax.numpy as jnp\n"
            "jax.jit(lambda x: x * 2.0 + 1.0)(jnp.ones(3)).block_until_ready()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(cache)
    assert [p for p in cache.rglob("*") if p.is_file()], "a tiny compile was not stored"
