"""Batches from worker processes through shared memory instead of a pickle per batch.

With ``use_multiprocessing`` Keras' PyDataset workers (a ``multiprocessing.Pool``) send each
batch back pickled through a pipe: at 128 x 224^2 x 3 that is 19 MB written by the worker and
read, unpickled and copied again by the trainer's own process, once per step, competing for
the trainer's GIL with the thread that feeds the accelerator. Here a ring of batch slots is
mapped (anonymous shared memory) before Keras forks its workers; a worker renders batch ``i``
straight into slot ``i % n`` and returns a small :class:`SlotHandle`. Unpickling the handle in
the trainer process (Keras' pool result thread) copies the slot out: one memory copy instead
of a pipe transfer, an unpickle and a copy.

Slot reuse is safe because Keras' ``OrderedEnqueuer`` has at most ``max_queue_size`` futures
queued plus one being submitted and one being read: batch ``i + n`` is only requested once
batch ``i`` has been copied out, for ``n >= max_queue_size + 2`` (:func:`slots_for_queue` adds
a margin). Only with the ``fork`` start method (the decoded photos are shared the same way);
otherwise batches come back pickled, as before.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import uuid
import weakref

import numpy as np

# Weak: a ring (hundreds of MB) lives as long as the dataset that made it, not as long as the process.
_RINGS: weakref.WeakValueDictionary[str, BatchRing] = weakref.WeakValueDictionary()


def fork_workers() -> bool:
    """Whether worker pools of this process fork (so a mapping made now is shared with them)."""
    return multiprocessing.get_start_method(allow_none=False) == "fork"


def slots_for_queue(max_queue_size: int) -> int:
    """Ring length that a Keras ``OrderedEnqueuer`` of ``max_queue_size`` can never overrun."""
    return max_queue_size + 4


class BatchRing:
    """``slots`` batch slots, each holding one array per ``(shape, dtype)`` spec, in shared memory."""

    def __init__(self, specs: list[tuple[tuple[int, ...], np.dtype]], slots: int):
        if slots < 1:
            raise ValueError(f"a batch ring needs at least one slot, not {slots}")
        self.specs = [(tuple(shape), np.dtype(dtype)) for shape, dtype in specs]
        self.offsets = list(np.cumsum([0] + [int(np.prod(s)) * d.itemsize for s, d in self.specs]))
        self.slot_bytes = int(self.offsets[-1])
        self.slots = slots
        self.token = uuid.uuid4().hex
        self._buffer = mmap.mmap(-1, self.slot_bytes * slots)  # MAP_SHARED | MAP_ANONYMOUS
        self._owner = os.getpid()
        self.reads = 0  # batches copied out in this process (for tests and diagnostics)
        _RINGS[self.token] = self

    def views(self, index: int) -> list[np.ndarray]:
        """Writable arrays over the slot of batch ``index`` (index modulo the ring length)."""
        base = (index % self.slots) * self.slot_bytes
        return [np.frombuffer(self._buffer, d, int(np.prod(s)), base + int(o)).reshape(s)
                for (s, d), o in zip(self.specs, self.offsets)]

    def handle(self, index: int) -> SlotHandle:
        return SlotHandle(self.token, index)

    def read(self, index: int) -> tuple[np.ndarray, ...]:
        """Copies of the arrays in the slot of batch ``index``."""
        self.reads += 1
        return tuple(v.copy() for v in self.views(index))

    @property
    def in_owner(self) -> bool:
        """True in the process that made the ring, False in a forked worker."""
        return os.getpid() == self._owner


class SlotHandle:
    """What a worker returns for a batch it wrote into the ring; unpickles as the batch itself."""

    __slots__ = ("token", "index")

    def __init__(self, token: str, index: int):
        self.token, self.index = token, index

    def __reduce__(self):
        return _read_slot, (self.token, self.index)


def _read_slot(token: str, index: int) -> tuple[np.ndarray, ...]:
    ring = _RINGS.get(token)
    if ring is None:
        raise RuntimeError("a worker sent a shared-memory batch to a process without its ring "
                           "(worker pools must fork from the process that made the dataset)")
    return ring.read(index)
