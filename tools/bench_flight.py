"""Inspection speed: dense vs window-by-window scoring, in one process (CPU) or over flights (GPU).

  python tools/bench_flight.py cpu [--side=1024] [--precision=float32|bf16]   # s/MP of each mode, one process
  python tools/bench_flight.py fold [--side=1792]             # dense pass, batch norms folded or not
  python tools/bench_flight.py photos DIR N WIDTH HEIGHT      # N synthetic drone-like JPEGs
  python tools/bench_flight.py flight LABEL REPO DIR JSON -- [predict / report flags]

* ``cpu``: a random-weight resnet50_aspp at 224 px (``weights=None``, float32), one random
  ``side`` x ``side`` photo, window 128, stride 64, no TTA; windows (the NumPy path, as before
  this work) and dense, each once to compile and once timed; prints one JSON line per mode with
  seconds per megapixel and the largest |dp| between the two at dense's windows. ``--precision``
  computes both modes in that precision (``crack_tf.predictor.load_model``), so run it once per
  precision for a float32 / bf16 comparison.
* ``fold``: the dense model of that random resnet50_aspp on one ``side`` x ``side`` tile, with
  and without its batch norms folded (``crack_tf.inspection.fold_bn``), timed alternately four
  times each after a warm-up call; prints the seconds and the largest |logit difference|.
* ``photos``: concrete-grey noise with dark crack polylines (distinct per file), JPEG quality 90,
  written by all cores.
* ``flight``: runs ``python -m crack_tf.predict`` (or ``crack_tf.report`` when the flags hold
  ``--out=``) in ``REPO`` over ``DIR`` and appends one JSON line to ``JSON``: the process wall,
  the seconds until the first result, the per-photo seconds of the first photo (``predict``:
  the JSONL row), the sustained photos/s between the first and the last row (``predict``), and
  the rate of the command's last progress line (files/s since the model was loaded).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_photo(width: int, height: int, seed: int) -> np.ndarray:
    """A grey noisy surface with a few dark crack polylines."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    small = rng.normal(150, 12, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    base = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    grain = rng.integers(-6, 7, (height, width, 1), dtype=np.int16)
    image = Image.fromarray(np.clip(np.asarray(base, np.int16) + grain, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 5)):
        points = np.cumsum(rng.normal(0, width / 20, (8, 2)), axis=0) + rng.uniform(0, [width, height])
        draw.line([tuple(p) for p in points], fill=(40, 40, 40), width=int(rng.integers(2, 6)))
    return np.asarray(image)


def _write_photo(args: tuple[str, int, int, int]) -> None:
    from PIL import Image

    path, width, height, seed = args
    Image.fromarray(synthetic_photo(width, height, seed)).save(path, quality=90)


def make_photos(folder: str, count: int, width: int, height: int) -> None:
    import multiprocessing

    os.makedirs(folder, exist_ok=True)
    jobs = [(os.path.join(folder, f"p{i:04d}.jpg"), width, height, i) for i in range(count)]
    with multiprocessing.Pool(max(1, (os.cpu_count() or 2) - 1)) as pool:
        pool.map(_write_photo, jobs)


def cpu(side: int = 1024, precision: str = "float32") -> None:
    import keras

    from crack_tf import models
    from crack_tf.inspection.heatmap import sliding_heatmap
    from crack_tf.inspection.photo_scan import make_scanner
    from crack_tf.predictor import load_model

    path = "/tmp/bench_flight_r50a.keras"
    if not os.path.isfile(path):
        models.get("resnet50_aspp", input_shape=(224, 224, 3)).save(path)
    predictor = load_model(path, "none", precision)
    photo = np.clip(np.random.default_rng(0).normal(140, 20, (side, side, 3)), 0, 255).astype(np.uint8)
    mp = side * side / 1e6
    grids = {}
    for mode in ("windows", "dense"):
        scanner = make_scanner(predictor, mode, 128, 64, 64, device=False)
        warm = photo if mode == "dense" else photo[:256, :256]  # dense compiles the photo's own tile shape
        first = time.perf_counter()
        scanner(warm)
        first = time.perf_counter() - first
        started = time.perf_counter()
        heatmap = scanner(photo)
        seconds = time.perf_counter() - started
        grids[mode] = heatmap
        print(json.dumps({"mode": mode, "note": scanner.note, "backend": keras.backend.backend(), "precision": precision, "side": side,
                          "windows": int(heatmap.grid.size), "first_call_s": round(first, 2),
                          "seconds": round(seconds, 2), "s_per_mp": round(seconds / mp, 3)}), flush=True)
    d = grids["dense"]
    w = sliding_heatmap(predictor.predict, photo, 224, 128, 64, 64, progress=False, starts=(d.ys, d.xs))
    print(json.dumps({"max_abs_dp_at_dense_windows": float(np.abs(w.grid - d.grid).max()),
                      "speedup_s_per_mp": round(grids["windows"].seconds / mp / (d.seconds / mp), 2)}), flush=True)


def fold(side: int = 1792) -> None:
    from crack_tf import models
    from crack_tf.inspection.dense import build_dense_model

    base = models.get("resnet50_aspp", input_shape=(224, 224, 3))
    dense = {f: build_dense_model(base, 224, fold=f)[0] for f in (False, True)}
    x = np.random.default_rng(0).uniform(0, 255, (1, side, side, 3)).astype(np.float32)
    logits = {f: np.asarray(m.predict_on_batch(x)) for f, m in dense.items()}  # also the warm-up
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(4):
        for f, m in dense.items():
            started = time.perf_counter()
            m.predict_on_batch(x)
            seconds[f].append(round(time.perf_counter() - started, 2))
    print(json.dumps({"side": side, "unfolded_s": seconds[False], "folded_s": seconds[True],
                      "max_abs_dlogit": float(np.abs(logits[True] - logits[False]).max())}), flush=True)


def _watch_rows(path: str, times: list[float], stop: threading.Event) -> None:
    """Appends the arrival time of each new line of ``path`` (the command flushes every row)."""
    seen = 0
    while not stop.is_set():
        try:
            with open(path, "rb") as f:
                lines = f.read().count(b"\n")
        except OSError:
            lines = 0
        now = time.perf_counter()
        times.extend([now] * (lines - seen))
        seen = max(seen, lines)
        time.sleep(0.01)


def flight(label: str, repo: str, folder: str, out_json: str, flags: list[str]) -> dict:
    report = any(f.startswith("--out=") for f in flags)
    jsonl = os.path.join("/tmp", f"bench_flight_{label}.jsonl")
    if os.path.exists(jsonl):
        os.remove(jsonl)
    cmd = [sys.executable, "-m", "crack_tf.report" if report else "crack_tf.predict", *flags, folder]
    if not report:
        cmd.insert(3, f"--jsonl={jsonl}")
    times: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_rows, args=(jsonl, times, stop), daemon=True)
    watcher.start()
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    wall = time.perf_counter() - started
    stop.set()
    watcher.join()
    photos = len([f for f in os.listdir(folder) if not f.startswith(".")])
    row: dict = {"label": label, "photos": photos, "rc": done.returncode, "wall_s": round(wall, 2),
                 "flags": flags, "first_line": next((ln for ln in done.stderr.splitlines() if ln.startswith(
                     ("predict:", "report:"))), "")}
    if not report and os.path.isfile(jsonl):
        with open(jsonl) as f:
            rows = [json.loads(line) for line in f]
        if rows:
            row["first_photo_s"] = round(rows[0].get("seconds", float("nan")), 2)
            row["first_result_after_s"] = round(times[0] - started, 2) if times else None
            row["median_photo_s"] = round(float(np.median([r.get("seconds", np.nan) for r in rows])), 3)
        if len(times) > 1:
            row["photos_per_s"] = round((len(times) - 1) / max(times[-1] - times[0], 1e-9), 2)
    elif report:
        row["photos_per_s_whole_process"] = round(photos / wall, 2)
    rates = re.findall(r"\] \d+/\d+ \(([\d.]+)/s", done.stderr)
    if rates:  # the command's own progress line: files/s since the model was loaded
        row["progress_rate_per_s"] = float(rates[-1])
    if done.returncode != 0:
        row["stderr_tail"] = done.stderr[-1500:]
    with open(out_json, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str]) -> None:
    opts = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)  # cpu / fold options
    if argv[:1] == ["cpu"]:
        cpu(int(opts.get("side", 1024)), opts.get("precision", "float32"))
    elif argv[:1] == ["fold"]:
        fold(int(opts.get("side", 1792)))
    elif argv[:1] == ["photos"] and len(argv) == 5:
        make_photos(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
    elif argv[:1] == ["flight"] and len(argv) >= 5:
        rest = argv[5:]
        flight(argv[1], argv[2], argv[3], argv[4], rest[1:] if rest[:1] == ["--"] else rest)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
