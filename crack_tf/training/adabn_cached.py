"""AdaBN's ``exact`` method without recomputing the network from the images for every layer
(``passes="cached"``).

``exact`` measures one BatchNormalization layer per pass, every earlier layer already adapted, so
an eager pass recomputes everything up to that layer from the images: ~28 full forward passes for
ResNet50 + ASPP, and on an H100 more than 100 s for 1,024 crops (docs/RESULTS.md 00000000000000).
Once a layer's upstream BatchNorms are adapted its output never changes again, so a pass can start
from a *cut*: a node call of the model's functional graph whose outputs are all that the rest of
the pass (up to the layer being measured) needs, because no earlier tensor is used after it before
that layer. A pass keeps, for every batch, the outputs of the cuts it computed that a later pass
can start from (the latest usable one for some later layer: a few at a time), and a pass with a
usable cut replays only the recorded calls after it, each through its layer's ``__call__`` as the
graph runs it. The statistics are those of the eager passes (the same ops on the same inputs), at
about two forward passes of layer calls in all (ResNet50 + ASPP: 2.2).

Cuts are found from one recorded pass over a single image: which graph node's outputs each node
consumes (by tensor identity; nested functional models are entered, any other layer -- ASPP, a
custom layer with BatchNorms inside -- is one opaque node). An input of unknown origin (a cast,
the model input) counts as using every earlier tensor, so no cut is taken across it. A model that
is not functional has no cuts, and every pass then computes from the images (the eager passes).
"""

from __future__ import annotations

import keras
import numpy as np

from crack_tf.training import adabn_hooks as hooks


def _is_functional(layer) -> bool:
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth") and hasattr(layer, "operations")


def _out_of_memory(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(word in text for word in ("resource_exhausted", "resourceexhausted", "out of memory", "oom"))


def graph_nodes(model: keras.Model) -> list:
    """The layers that are nodes of ``model``'s functional graph, nested functional models entered."""
    nodes: list = []

    def visit(functional) -> None:
        for op in functional.operations:
            if isinstance(op, keras.layers.InputLayer):
                continue
            if _is_functional(op):
                visit(op)
            elif not any(op is seen for seen in nodes):
                nodes.append(op)

    if _is_functional(model):
        visit(model)
    return nodes


class _Ref:
    """Where a recorded call's input came from: output ``index`` of call ``call`` (None: unknown)."""

    def __init__(self, call: int | None, index: int = 0):
        self.call, self.index = call, index


class _Plan:
    """From one recorded pass: each node call's layer and arguments (tensors as :class:`_Ref`), and
    for every stop call ``s`` which earlier calls are cuts (``valid[s, c]``)."""

    def __init__(self, calls: list):
        self.calls = calls  # [(layer, args, kwargs)]
        n = len(calls)
        last_use = np.arange(n)[None, :].repeat(n, 0)  # [s, r]: r's last consumer at or before stop s
        for q, (_, args, kwargs) in enumerate(calls):
            for ref in (x for x in keras.tree.flatten((args, kwargs)) if isinstance(x, _Ref)):
                if ref.call is None:  # unknown origin: may be any earlier tensor
                    last_use[q:, :q] = np.maximum(last_use[q:, :q], q)
                else:
                    last_use[q:, ref.call] = np.maximum(last_use[q:, ref.call], q)
        # c is a cut for stop s if every call before c is last used at or before c (up to s)
        before = np.concatenate([np.full((n, 1), -1), np.maximum.accumulate(last_use, 1)[:, :-1]], 1)
        self.valid = before <= np.arange(n)[None, :]

    def latest_cut(self, stop: int, candidates) -> int | None:
        """The latest of ``candidates`` (< ``stop``) that is a cut for ``stop``."""
        found = [c for c in candidates if c < stop and self.valid[stop, c]]
        return max(found) if found else None


def _record(model: keras.Model, nodes: list, inner_bns: list, probe: np.ndarray) -> tuple[_Plan, dict]:
    """One pass over ``probe``: the plan, and the node call each BatchNorm layer sits in (id -> call)."""
    made_by: dict[int, tuple[int, int]] = {}
    calls: list = []
    keep: list = []  # holds every tensor seen, so that no id is reused during the pass
    open_calls: list[int] = []
    bn_call: dict[int, int] = {}

    def as_ref(x):
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            keep.append(x)
            return _Ref(*made_by.get(id(x), (None, 0)))
        return x

    def node(layer, original):
        def call(*args, **kwargs):
            p = len(calls)
            calls.append((layer, *keras.tree.map_structure(as_ref, (list(args), kwargs))))
            if isinstance(layer, keras.layers.BatchNormalization):
                bn_call[id(layer)] = p
            open_calls.append(p)
            try:
                out = original(*args, **kwargs)
            finally:
                open_calls.pop()
            for i, x in enumerate(keras.tree.flatten(out)):
                keep.append(x)
                made_by[id(x)] = (p, i)
            return out
        return call

    def inner(layer, original):
        def call(*args, **kwargs):
            bn_call[id(layer)] = open_calls[-1] if open_calls else -1
            return original(*args, **kwargs)
        return call

    with hooks._wrapped(nodes, node), hooks._wrapped(inner_bns, inner):
        model(np.asarray(probe, np.float32), training=False)
    return _Plan(calls), bn_call


class CachedExact:
    """``measure([k])`` for ``exact``: the statistics of ``order[k]``'s input pooled over ``images``,
    layers ``0..k-1`` adapted; called for k = 0, 1, ... in turn. A pass with a kept cut replays the
    recorded calls after it (each through its layer's ``__call__``, as the graph runs it); one
    without runs the model from the images. Each keeps the outputs of the cuts that later passes can
    start from (:meth:`_wanted`)."""

    def __init__(self, model: keras.Model, order: list, images: np.ndarray, batch_size: int):
        self.model, self.order, self.images, self.batch_size = model, order, images, batch_size
        self.nodes = graph_nodes(model)
        node_ids = {id(n) for n in self.nodes}
        self.inner_bns = [layer for layer in order if id(layer) not in node_ids]
        self.plan, bn_call = _record(model, self.nodes, self.inner_bns, images[:1])
        self.stops = [bn_call.get(id(layer), -1) for layer in order]
        self.kept: dict[int, list] = {}  # cut call -> per batch: its flat outputs
        self.computed_calls = 0  # node calls run (tests, logs)
        self.no_cache = False  # set once keeping cuts ran out of device memory: passes from the images

    def _replay(self, cut: int, stop: int, target, stored: dict[int, list], record) -> None:
        """Every batch from the kept outputs of ``cut`` up to the layer measured at ``stop``."""
        for b in range(len(self.kept[cut])):
            env = {cut: self.kept[cut][b]}

            def fill(x, env=env):
                return env[x.call][x.index] if isinstance(x, _Ref) else x

            try:
                for p in range(cut + 1, stop + 1):
                    layer, args, kwargs = self.plan.calls[p]
                    args, kwargs = keras.tree.map_structure(fill, (args, kwargs))
                    self.computed_calls += 1
                    if layer is target:
                        record(layer, None)(*args, **kwargs)  # measures, then stops
                    env[p] = keras.tree.flatten(layer(*args, **kwargs))
                    if p in stored:
                        stored[p].append(env[p])
            except hooks._Stop:
                pass

    def _run(self, target, stored: dict[int, list], record) -> None:
        """Every batch from the images (no cut kept), keeping the outputs of the calls in ``stored``."""
        state = {"p": 0}

        def node(layer, original):
            def call(*args, **kwargs):
                p = state["p"]
                state["p"] += 1
                self.computed_calls += 1
                if layer is target:
                    return record(layer, original)(*args, **kwargs)
                out = original(*args, **kwargs)
                if p in stored:
                    stored[p].append(keras.tree.flatten(out))
                return out
            return call

        with hooks._wrapped(self.nodes, node):
            for batch in hooks._batches(self.images, self.batch_size):
                state["p"] = 0
                hooks._forward(self.model, batch, len(batch))

    def _wanted(self, k: int, candidates) -> set[int]:
        """Of ``candidates``, the cuts that are the latest usable one for some pass after ``k``."""
        wanted = set()
        for stop in self.stops[k + 1:]:
            best = self.plan.latest_cut(stop, candidates) if stop >= 0 else None
            if best is not None:
                wanted.add(best)
        return wanted

    def measure(self, indices: list[int]) -> dict:
        if len(indices) != 1:
            raise ValueError("CachedExact measures one layer a pass (method='exact')")
        try:
            return self._measure(indices[0])
        except Exception as err:  # noqa: BLE001 -- only a device out of memory is retried
            if self.no_cache or not _out_of_memory(err):
                raise
            print(f"adabn: keeping cut outputs ran out of device memory ({type(err).__name__}); "
                  "the remaining passes run from the images", flush=True)
            self.kept, self.no_cache = {}, True
            return self._measure(indices[0])

    def _measure(self, k: int) -> dict:
        target, stop = self.order[k], self.stops[k]
        pooled = {k: hooks._Moments()}
        record = hooks._recording(lambda _, *m: pooled[k].add(*m), False, target)
        cut = self.plan.latest_cut(stop, self.kept) if stop >= 0 else None
        computed = range(cut + 1 if cut is not None else 0, max(stop, 0))  # calls this pass runs before the stop
        # the cuts later passes start from: those kept already, the rest stored as this pass runs them
        wanted = set() if self.no_cache else self._wanted(k, [*self.kept, *computed])
        stored: dict[int, list] = {c: [] for c in wanted - set(self.kept)}
        inner = [layer for layer in self.inner_bns if layer is target]
        with hooks._wrapped(inner, record):
            if cut is None:
                self._run(target, stored, record)
            else:
                self._replay(cut, stop, target, stored, record)
        self.kept = {c: self.kept[c] if c in self.kept else stored[c] for c in wanted}
        return pooled
