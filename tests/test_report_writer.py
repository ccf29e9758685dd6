"""The report writes each photo's files in background threads, in order, a bounded number behind
(crack_tf.inspection.report.PhotoFilesWriter)."""

from __future__ import annotations

import threading
import time
import types

import numpy as np
import pytest

from crack_tf.inspection import report


def _results(n):
    return [types.SimpleNamespace(image=np.zeros((4, 4, 3), np.uint8), heatmap=object(), name=f"r{i}")
            for i in range(n)]


def test_files_come_back_in_submission_order_with_the_pixels_released_and_few_photos_in_flight(monkeypatch):
    lock, running, most = threading.Lock(), [0], [0]

    def slow_write(result, key, out, **options):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 if int(key) % 3 == 0 else 0.001)  # some finish after later ones
        with lock:
            running[0] -= 1
        return {"key": key, "out": out, **options}

    monkeypatch.setattr(report, "write_photo_files", slow_write)
    writer = report.PhotoFilesWriter("rep", workers=2, ahead=3, gsd_cm=0.3)
    results = _results(10)
    for i, r in enumerate(results):
        writer.submit(r, f"{i}")
        assert len(writer.pending) <= 3  # bounded: the pixels of at most `ahead` photos wait
    entries = writer.done()
    assert [key for _, key, _ in entries] == [f"{i}" for i in range(10)]
    assert [r.name for r, _, _ in entries] == [r.name for r in results]
    assert all(files == {"key": key, "out": "rep", "gsd_cm": 0.3} for _, key, files in entries)
    assert all(r.image is None and r.heatmap is None for r in results)
    assert most[0] == 2  # two writers at once


def test_inline_writing_without_workers_and_a_write_error_reaches_the_caller(monkeypatch):
    threads = set()

    def write(result, key, out, **options):
        threads.add(threading.get_ident())
        if key == "2":
            raise OSError("No space left on device")
        return {}

    monkeypatch.setattr(report, "write_photo_files", write)
    inline = report.PhotoFilesWriter("rep", workers=0)
    inline.submit(_results(1)[0], "0")
    assert threads == {threading.get_ident()} and len(inline.done()) == 1  # Grad-CAM's case: main thread
    writer = report.PhotoFilesWriter("rep", workers=2, ahead=8)
    for i, r in enumerate(_results(4)):
        writer.submit(r, f"{i}")
    with pytest.raises(OSError, match="No space left"):
        writer.done()
