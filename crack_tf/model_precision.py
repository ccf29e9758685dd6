"""The compute precision a loaded ``.keras`` model runs in (``--precision`` of the inspection commands).

A model trained on a GPU is saved with ``mixed_bfloat16`` layer policies and would run in bf16
wherever it is loaded. On a CPU that is a trap: without native bf16 instructions (AMX /
AVX512_BF16) TensorFlow's bf16 convolutions are slow or fail outright, and JAX / PyTorch CPU bf16
is no faster than float32. On a CPU with them, bf16 is faster than float32 (1.8x for
ResNet50+ASPP at 224 px on the dev machine's AMX cores, docs/PERFORMANCE.md).

``auto`` keeps the saved precision on an accelerator and on a CPU that runs bf16 natively (with
TensorFlow), and runs float32 on any other CPU; ``float32`` / ``bf16`` force one. A model is
switched by rebuilding it from its saved config with the layer policies rewritten (weights stay
float32 variables in both policies, so they load unchanged); the float32 output layer of a
mixed model stays float32.
"""

from __future__ import annotations

import copy
import json
import zipfile

from crack_tf.choices import DTYPE_POLICIES, INFERENCE_PRECISIONS

_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def define_precision_flag() -> None:
    """``--precision`` of the inspection commands (heatmap, predict, report, evaluate)."""
    from absl import flags

    flags.DEFINE_enum("precision", "auto", list(INFERENCE_PRECISIONS),
                      "Compute precision of a .keras model: auto = as saved, but float32 on a CPU without native "
                      "bf16 (AMX / AVX512_BF16); float32; bf16 (about 2x faster on CPUs with AMX).")


def native_bf16_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises bf16 instructions (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_FLAGS)


def accelerator_available() -> bool:
    """Whether the Keras backend computes on a GPU / TPU here."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def read_config(path: str) -> dict:
    """The model config stored in a ``.keras`` archive."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def _policies(node):
    """Every DTypePolicy dict in a config tree, with the name of the layer that holds it."""
    stack = [(node, None)]
    while stack:
        item, layer = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "DTypePolicy":
                yield item, layer
                continue
            name = item.get("config", {}).get("name") if isinstance(item.get("config"), dict) else None
            stack.extend((v, name or layer) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, layer) for v in item)


def saved_policy(config: dict) -> str:
    """``mixed_bfloat16`` if any layer computes in bf16, else ``float32``."""
    names = {p["config"].get("name") for p, _ in _policies(config)}
    return "mixed_bfloat16" if names & {"mixed_bfloat16", "bfloat16"} else "float32"


def choose_policy(choice: str, saved: str, accelerator: bool, backend: str, native_bf16: bool) -> str:
    """The policy to run in for ``--precision=choice`` (see the module docstring)."""
    if choice not in INFERENCE_PRECISIONS:
        raise ValueError(f"--precision={choice!r}; choose one of {INFERENCE_PRECISIONS}")
    if choice != "auto":
        return DTYPE_POLICIES[choice]
    if accelerator or saved == "float32" or (backend == "tensorflow" and native_bf16):
        return saved
    return "float32"


def with_policy(config: dict, policy: str) -> dict:
    """A copy of ``config`` whose layers compute in ``policy`` (the model's outputs stay float32)."""
    out = copy.deepcopy(config)
    out.pop("compile_config", None)  # inference only (as load_model(compile=False))
    heads = out.get("config", {}).get("output_layers") or []
    if heads and isinstance(heads[0], str):  # one output: [name, node, tensor], else a list of them
        heads = [heads]
    outputs = {entry[0] for entry in heads}
    for item, layer in _policies(out):
        if policy != "float32" and layer in outputs:
            continue  # logits (and a probability head) stay float32, as the trainer builds them
        item["config"]["name"] = policy
    return out


def load_in_policy(path: str, policy: str):
    """The ``.keras`` model at ``path`` rebuilt to compute in ``policy``, with its saved weights."""
    import keras

    model = keras.saving.deserialize_keras_object(with_policy(read_config(path), policy))
    model.load_weights(path)
    return model
