"""Backend, devices, distribution and precision set-up for the trainer.

* TensorFlow backend: ``tf.distribute.MirroredStrategy`` over the visible GPUs (or over
  N logical CPU devices when ``--strategy=mirrored --num_devices=N`` on a CPU-only
  machine); model, optimizer and metrics are built inside ``strategy.scope()``.
* JAX backend: ``keras.distribution.DataParallel`` over the local (or, after
  ``keras.distribution.initialize``, all processes') devices. TensorFlow is never
  imported on this path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crack_tf.training.config import RunOptions
import contextlib
import dataclasses
import os

import keras

from crack_tf.choices import DTYPE_POLICIES


@dataclasses.dataclass
class Runtime:
    """What the trainer runs on."""

    backend: str
    devices: list[str]
    strategy_name: str
    num_replicas: int
    process_id: int = 0
    num_processes: int = 1
    strategy: object = None  # tf.distribute.Strategy on the TF backend

    @property
    def xla_flags(self) -> str:
        return os.environ.get("XLA_FLAGS", "")

    def scope(self):
        """Context in which variables must be created (a no-op outside TF strategies)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @property
    def is_chief(self) -> bool:
        return self.process_id == 0

    def describe(self) -> str:
        return (
            f"backend={self.backend} strategy={self.strategy_name} replicas={self.num_replicas} "
            f"processes={self.num_processes} devices={self.devices}"
        )


def _tf_runtime(cfg: RunOptions) -> Runtime:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    wanted = cfg.num_devices or (len(gpus) or 1)
    if cfg.strategy == "mirrored" and not gpus and wanted > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * wanted
            )
        except RuntimeError as err:  # already initialised with another split
            existing = tf.config.list_logical_devices("CPU")
            if len(existing) < wanted:
                raise RuntimeError(
                    f"Cannot split the CPU into {wanted} logical devices after TensorFlow "
                    f"initialised ({err}); start a fresh process."
                ) from err
    kind = "GPU" if gpus else "CPU"
    logical = [d.name for d in tf.config.list_logical_devices(kind)]
    if cfg.strategy == "one_device":
        device = logical[0]
        strategy = tf.distribute.OneDeviceStrategy(device)
        return Runtime("tensorflow", [device], "one_device", 1, strategy=strategy)
    if cfg.strategy == "auto" and len(logical[:wanted]) < 2:  # Keras' default placement
        return Runtime("tensorflow", logical[:1], "default", 1)
    devices = logical[:wanted]
    if len(devices) < wanted:
        raise ValueError(f"--num_devices={wanted} but only {len(devices)} {kind} devices are visible")
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    return Runtime("tensorflow", devices, "mirrored", strategy.num_replicas_in_sync, strategy=strategy)


def compile_cache_dir(setting: str) -> str | None:
    """Where the JAX persistent compilation cache lives (None = off)."""
    if setting == "none":
        return None
    return setting or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "crack_tf", "jax")


def enable_compile_cache(setting: str) -> str | None:
    """Turns on JAX's persistent compilation cache, every compile stored: loading a .keras model
    alone compiles hundreds of tiny programs (one per weight initializer), which a later process
    then reads instead of compiling (resnet50_aspp, JAX on a 2-core CPU: 9.4 s -> 2.4 s; with
    only compiles over 0.5 s stored, 6.3 s)."""
    import jax

    path = compile_cache_dir(setting)
    if path:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


def deterministic_xla(enabled: bool) -> str:
    """With ``--deterministic`` on JAX: XLA's deterministic GPU kernels (no atomics in reductions and
    scatters, no autotuning between algorithms of different rounding), so one seed gives one model
    on a GPU. Set in ``XLA_FLAGS`` before JAX starts its backends; a no-op on the CPU. Returns the
    flags in effect."""
    flags = os.environ.get("XLA_FLAGS", "")
    if enabled and DETERMINISTIC_XLA_FLAG.split("=")[0] not in flags:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            raise RuntimeError("--deterministic on JAX must be set before JAX starts its backends: start a "
                               f"fresh process, or export XLA_FLAGS={DETERMINISTIC_XLA_FLAG}")
        flags = f"{flags} {DETERMINISTIC_XLA_FLAG}".strip()
        os.environ["XLA_FLAGS"] = flags
    return flags


def deterministic_ops(enabled: bool) -> str:
    """Deterministic kernels for this process's backend when ``enabled``: XLA's on JAX
    (:func:`deterministic_xla`, before JAX starts), TensorFlow's op determinism on TF; nothing
    on torch. Returns ``XLA_FLAGS`` as in effect (JAX) or ``""``."""
    if keras.backend.backend() == "jax":
        return deterministic_xla(enabled)
    if enabled and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return ""


def _jax_runtime(cfg: RunOptions) -> Runtime:
    import jax

    deterministic_xla(cfg.deterministic)
    enable_compile_cache(cfg.compile_cache_dir)

    if cfg.num_processes > 1:
        # Cross-process collectives of CPU arrays need gloo (tests, CPU clusters); GPU
        # arrays use NCCL regardless of this setting.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(
            job_addresses=cfg.coordinator_address,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
        )
    devices = keras.distribution.list_devices()  # all processes' devices
    if cfg.num_devices and cfg.num_processes == 1:
        if cfg.num_devices > len(devices):
            raise ValueError(f"--num_devices={cfg.num_devices} but only {len(devices)} JAX devices exist")
        devices = devices[: cfg.num_devices]
    if cfg.strategy == "one_device" or len(devices) == 1:
        return Runtime("jax", devices[:1], "one_device", 1, jax.process_index(), jax.process_count())
    # Each process already reads only its own shard (make_input num_shards/shard_index).
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    )
    return Runtime("jax", devices, "data_parallel", len(devices), jax.process_index(), jax.process_count())


def _single_runtime(backend: str) -> Runtime:
    device = "cpu"
    if backend == "torch":
        import torch

        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    return Runtime(backend, [device], "one_device", 1)


def make_runtime(cfg: RunOptions) -> Runtime:
    """Creates the distribution for the current Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tf_runtime(cfg)
    if backend == "jax":
        return _jax_runtime(cfg)
    if cfg.strategy == "mirrored" or cfg.num_processes > 1:
        raise ValueError(f"--strategy=mirrored / multi-process needs the tensorflow or jax backend, not {backend}")
    return _single_runtime(backend)


def accelerator_present(runtime: Runtime) -> bool:
    """True when the run's devices are GPUs/TPUs (TF, JAX and torch device names)."""
    return any(tag in d.lower() for d in runtime.devices for tag in ("gpu", "cuda", "tpu", "rocm"))


def set_precision(cfg: RunOptions, runtime: Runtime) -> str:
    """Sets the global Keras dtype policy; returns its name."""
    choice = cfg.mixed_precision
    if choice == "auto":
        choice = "bf16" if accelerator_present(runtime) else "float32"
    policy = DTYPE_POLICIES[choice]
    keras.mixed_precision.set_global_policy(policy)
    return policy


def seed_everything(cfg: RunOptions) -> None:
    """Seeds Python, NumPy and the backend; deterministic TF ops when asked."""
    keras.utils.set_random_seed(cfg.seed)
    if keras.backend.backend() == "tensorflow":
        deterministic_ops(cfg.deterministic)


def jit_setting(cfg: RunOptions) -> bool | str:
    return {"auto": "auto", "true": True, "false": False}[cfg.jit_compile]
