"""What a training run is built from: its data config, the model and its compilation.

``data_config`` turns the run's flags into a :class:`crack_tf.data.DataConfig` (the synthetic set is
generated as a folder first), ``build_model`` / ``compile_model`` make the model the flags name,
``check_weights_file`` fails before any data is decoded when ``--weights`` is missing.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from crack_tf.choices import CLASS_NAMES
from crack_tf.training.config import TrainConfig
from crack_tf.training.optim import SparseCrossEntropy, make_optimizer
from crack_tf.training.runtime import jit_setting


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
        mixstyle=tuple(m.mixstyle),
        mixstyle_p=m.mixstyle_p,
        mixstyle_alpha=m.mixstyle_alpha,
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
