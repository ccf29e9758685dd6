"""AdaBN: BatchNormalization statistics re-estimated on unlabelled photos of a target site.

:func:`adapt_batchnorm` sets every BatchNormalization layer's moving mean / variance to the
mean / (biased, as Keras) variance of that layer's input over all pixels of all target images;
every other weight (kernels, gamma, beta) stays as it was. Two methods:

* ``exact`` (default): layer by layer in call order, each measured with every earlier layer
  already adapted and the model in inference mode, so afterwards each layer's statistics are
  exactly those of the inputs it sees at inference on the target images (a fixed point). One
  forward pass over the images per BatchNormalization layer (ResNet50 + ASPP with 3 rates: 56).
* ``batch``: one pass with every layer normalising by its batch's own statistics (classic AdaBN
  / training-mode BatchNorm), the per-batch statistics pooled exactly over all images (Chan's
  combination: the between-batch spread counts too). ~30x cheaper; the deeper layers' inputs
  differ slightly from inference (batch instead of target statistics upstream).

With ``target_weight`` w < 1 each layer's statistics become ``(1 - w)`` times its own (the training
sources') plus ``w`` times the target's, measured as above with every earlier layer already blended
(the prior of Schneider et al. 2020): a new site's shift taken only in part.

Layers are found wherever they sit (nested models, layers inside custom layers such as ASPP) by
running the model once eagerly with their ``call`` temporarily wrapped. The passes themselves
(``passes``):

* ``cached`` (default): ``exact``'s passes start from the latest *cut* of the functional graph
  whose outputs an earlier pass kept (every layer before it is adapted, so they no longer change)
  and run only up to the layer measured: the eager passes' statistics, bit for bit on the CPU
  (JAX and TensorFlow, float32 and bfloat16), from 2.2 full passes' worth of layer calls
  (:mod:`crack_tf.training.adabn_cached`; ResNet50 + ASPP, 16 images of 32 px on the 2-core CPU:
  2.7 s against the eager passes' 16.0 s). ``batch`` runs as ``eager``.
* ``eager``: ``model(x)`` op by op; ``exact``'s pass for a layer stops right after it
  (about 28 full passes for ResNet50 + ASPP).
* ``compiled``: a probe model (:class:`_Probe`) whose output is every layer's input statistics, run
  by Keras' ``predict_on_batch`` (XLA on JAX, a ``tf.function`` on TensorFlow), the moving
  statistics read at each call so that assigning them needs no new compile; full passes (56), no
  per-op dispatch, and statistics equal to compiled inference's to ~1e-7 of the spread (eager
  inference differs from compiled by ~3e-4 of it 55 layers deep). On the 2-core dev machine, 32 px,
  128 images: exact 124 s against eager 63 s (compute-bound: full passes against partial ones);
  on a GPU, where eager passes pay Python dispatch per op, not yet measured
  (``tools/bench_adabn.py``).

Keras ops only, so the same code runs on the JAX, TensorFlow and PyTorch backends. Per-batch sums
are float32 on the device, pooled in float64 on the host (relative error ~1e-6 for ordinary
activations).
"""

from __future__ import annotations

import contextlib
import datetime
import time
import types
from collections.abc import Callable, Iterator

import keras
import numpy as np
from keras import ops

from crack_tf.choices import ADABN_PASSES as PASSES
from crack_tf.training.adabn_hooks import _batches, _forward, _Moments, _recording, _wrapped

METHODS = ("exact", "batch")


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of ``model``, nested ones included."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def keep_batchnorm(model: keras.Model) -> Iterator[None]:
    """Restores every BatchNormalization layer's moving statistics on exit: adapt in place (the model
    stays compiled, no copy), evaluate, and the model is as it was."""
    saved = [(layer, np.array(ops.convert_to_numpy(layer.moving_mean)),
              np.array(ops.convert_to_numpy(layer.moving_variance))) for layer in batchnorm_layers(model)]
    try:
        yield
    finally:
        for layer, mean, variance in saved:
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)


def _call_order(model: keras.Model, layers: list, probe: np.ndarray) -> list:
    """The BatchNormalization layers in the order one forward pass calls them."""
    order: list = []

    def make(layer, original):
        def call(inputs, training=None, mask=None):
            if any(layer is seen for seen in order):
                raise ValueError(f"BatchNormalization layer {layer.name!r} is called more than once per forward "
                                 "pass; adapt_batchnorm needs each one used once")
            order.append(layer)
            return original(inputs, training=training, mask=mask)
        return call

    with _wrapped(layers, make):
        _forward(model, probe, len(probe))
    return order


class _Probe(keras.Model):
    """``model``'s forward pass in inference mode returning, for each BatchNormalization layer of
    ``order``, its input's per-channel mean, sum of squared deviations and element count ([1]);
    with ``batch_stats`` each of those layers normalises by its batch's statistics instead of its
    moving ones. Compiled by Keras like any ``predict_on_batch``; the moving statistics are read at
    each call, so assigning them between calls needs no new compile."""

    def __init__(self, model: keras.Model, order: list, batch_stats: bool):
        super().__init__(name=f"{model.name}_bn_probe")
        self.inner = model
        self._plan = types.SimpleNamespace(order=list(order), batch_stats=batch_stats)  # not tracked as layers

    def call(self, images):
        stats: dict[int, list] = {}

        def record(layer, mean, m2, n):
            stats[id(layer)] = [ops.reshape(mean, (-1,)), m2, ops.reshape(n, (1,))]

        with _wrapped(self._plan.order, _recording(record, self._plan.batch_stats)):
            self.inner(images, training=False)
        return [t for layer in self._plan.order for t in stats[id(layer)]]


def _measure(model: keras.Model, order: list, images: np.ndarray, batch_size: int, method: str,
             passes: str) -> Callable[[list[int]], dict[int, _Moments]]:
    """``measure(indices)``: {index into ``order``: that layer's input statistics pooled over every
    batch of ``images``}, from one pass over them (all of ``order`` for ``batch``, one layer for
    ``exact``)."""
    batch_stats = method == "batch"
    if passes == "cached" and not batch_stats:
        from crack_tf.training.adabn_cached import CachedExact

        return CachedExact(model, order, images, batch_size).measure
    if passes == "compiled":
        probe = _Probe(model, order, batch_stats)

        def measure(indices: list[int]) -> dict[int, _Moments]:
            pooled = {k: _Moments() for k in indices}
            for batch in _batches(images, batch_size):
                out = probe.predict_on_batch(batch)
                for k, moments in pooled.items():
                    moments.add(out[3 * k], out[3 * k + 1], out[3 * k + 2])
            return pooled

        return measure

    def measure(indices: list[int]) -> dict[int, _Moments]:
        pooled = {k: _Moments() for k in indices}
        by_layer = {id(order[k]): moments for k, moments in pooled.items()}
        wrapped = order if batch_stats else [order[k] for k in indices]
        stop_at = None if batch_stats else order[max(indices)]
        with _wrapped(wrapped, _recording(lambda layer, *m: by_layer[id(layer)].add(*m), batch_stats, stop_at)):
            _forward(model, images, batch_size)
        return pooled

    return measure


def _assign(layer, moments: _Moments, target_weight: float = 1.0) -> None:
    """Sets the layer's moving statistics to the target's, or with ``target_weight`` < 1 to
    ``(1 - w) * its own + w * the target's`` (mean and variance alike, as Schneider et al. 2020)."""
    for variable, measured in ((layer.moving_mean, moments.mean), (layer.moving_variance, moments.variance)):
        if target_weight != 1.0:
            own = np.asarray(keras.ops.convert_to_numpy(variable), np.float64)
            measured = (1.0 - target_weight) * own + target_weight * measured
        variable.assign(measured.astype(variable.dtype))


def adapt_batchnorm(model: keras.Model, images: np.ndarray, batch_size: int = 64, method: str = "exact",
                    copy: bool = False, log: Callable[[str], None] | None = None, passes: str = "cached",
                    target_weight: float = 1.0) -> keras.Model:
    """Re-estimates the BatchNormalization statistics of ``model`` on ``images`` (raw model inputs,
    e.g. uint8 [N, S, S, 3] crops) and returns the model (``copy=True``: a clone, ``model`` untouched).

    ``method``: ``exact`` or ``batch``; ``passes``: ``cached``, ``eager`` or ``compiled`` (module
    docstring). ``target_weight`` w in (0, 1]: each layer's statistics become ``(1 - w)`` times its
    own (the source's) plus ``w`` times those of its inputs on the images (with ``exact``, measured
    with every earlier layer already blended); 1 is plain AdaBN, smaller values keep more of the
    source (a prior, as Schneider et al. 2020). Raises ValueError for no images, a weight outside (0,
    1], a model without BatchNormalization, batch renormalisation, or a layer called twice per pass.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    if not 0.0 < target_weight <= 1.0:
        raise ValueError(f"target_weight={target_weight}: must be in (0, 1] (1 = the target's statistics alone)")
    if passes not in PASSES:
        raise ValueError(f"passes={passes!r}: choose one of {PASSES}")
    if len(images) == 0 or batch_size < 1:
        raise ValueError(f"adapt_batchnorm needs target images and batch_size >= 1 (got {len(images)} images)")
    if copy:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        model = clone
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(f"model {model.name!r} has no BatchNormalization layer to adapt")
    if any(layer.renorm for layer in layers):
        raise ValueError("batch renormalisation layers (renorm=True) are not supported by adapt_batchnorm")
    started = time.time()
    order = _call_order(model, layers, np.asarray(images[:1]))
    measure = _measure(model, order, images, batch_size, method, passes)
    if method == "batch":
        for layer, moments in zip(order, measure(list(range(len(order)))).values()):
            _assign(layer, moments, target_weight)
    else:
        for k, target in enumerate(order):
            _assign(target, measure([k])[k], target_weight)
            if log and (k + 1) % 10 == 0:
                log(f"adabn: {k + 1}/{len(order)} layers, {time.time() - started:.0f}s")
    if log:
        unused = len(layers) - len(order)
        blend = "" if target_weight == 1 else f", target weight {target_weight:g}"
        log(f"adabn ({method}, {passes} passes{blend}): {len(order)} BatchNormalization layers re-estimated on "
            f"{len(images)} images in {time.time() - started:.1f}s"
            + (f"; {unused} never called, left as they were" if unused else ""))
    return model


def adaptation_record(photos, crops: int, crop_side, image_size: int, seed: int, method: str, inputs: str,
                      model: keras.Model, passes: str = "eager", target_weight: float = 1.0) -> dict:
    """What the metadata of an adapted model records about its adaptation."""
    return {"method": method, "passes": passes, "target_weight": float(target_weight), "inputs": inputs,
            "photos": len(photos.paths), "files_sha256": photos.digest(), "crops": int(crops), "crop_side": [int(v) for v in crop_side], "image_size": int(image_size),
            "seed": int(seed), "bn_layers": len(batchnorm_layers(model)), "backend": keras.backend.backend(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def adapt_to_source(model: keras.Model, source: str, data_root: str = "", split: str = "train", crops: int = 1024,
                    crop_side: tuple[int, int] = (96, 192), seed: int = 0, batch_size: int = 64,
                    method: str = "exact", copy: bool = True, val_fraction: float = 0.2,
                    image_size: int | None = None, log: Callable[[str], None] | None = None, passes: str = "cached",
                    target_weight: float = 1.0) -> tuple[keras.Model, dict]:
    """AdaBN on ``split`` of photo sources (``--data_dir`` syntax, e.g. the left-out source of a
    leave-one-source-out run): ``crops`` random crops of its photos, labels and masks unused.

    Returns ``(adapted model, record)``; with ``copy=True`` (default) ``model`` is left as it was and
    the adapted clone is not compiled; ``copy=False`` inside ``with keep_batchnorm(model):`` adapts
    the compiled model in place for the block (report the source with and without AdaBN). The
    stored operating point (threshold, temperature) is not re-picked.
    """
    from crack_tf.data.unlabelled import from_sources, random_crops

    size = image_size or model.input_shape[1]
    if not size:
        raise ValueError(f"model {model.name!r} has no fixed input size: pass image_size")
    photos = from_sources(source, data_root, split, val_fraction)
    images = random_crops(photos.images, crops, size, crop_side, seed)
    adapted = adapt_batchnorm(model, images, batch_size, method, copy, log, passes, target_weight)
    return adapted, adaptation_record(photos, crops, crop_side, size, seed, method, f"{source} ({split})", adapted,
                                      passes, target_weight)
