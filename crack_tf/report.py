"""A static HTML inspection report of a folder of drone photos: ``python -m crack_tf.report``.

  python -m crack_tf.report --model=runs/uav75/final.keras flight_0412/ --out=report_0412 --gsd_cm=0.3

Opens from disk (``report_0412/index.html``), no server, no network. The index lists every photo
sorted by severity (crack first, then the photo score = the highest window p(crack), then the
cracked area share) with a thumbnail of the heatmap overlay; each photo has a detail page with
the overlay, the table of crack boxes (pixels, area, centimetres with ``--gsd_cm``), the EXIF
capture time and GPS position when present, and links to its per-pixel map (``.npy``), boxes
(GeoJSON: WGS84 with GPS and ``--gsd_cm``, else pixels; CSV). ``summary.csv`` has one row per
photo (the ``crack_tf.predict`` columns). Unreadable files are skipped and named at the end
(exit code 1); see ``crack_tf.scan`` for tiles vs photos.
"""

from __future__ import annotations

import csv
import html
import json
import os
import sys

import numpy as np
from absl import flags

from crack_tf.choices import TTA_MODES
from crack_tf.model_precision import define_precision_flag
from crack_tf.photo_scan import define_scan_flags, start_compile_cache

FLAGS = flags.FLAGS
THUMB_SIDE, OVERLAY_SIDE = 320, 1600
_STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
          ".crack{color:#b00;font-weight:bold}img.thumb{max-width:320px}img.big{max-width:100%}")
# Counts decoded images once the page has loaded (a status line for readers; tests read it).
_STATUS_SCRIPT = ("<script>window.addEventListener('load',function(){var im=document.images,ok=0;"
                  "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}"
                  "var s=document.getElementById('status');s.dataset.total=im.length;s.dataset.loaded=ok;"
                  "s.textContent=ok+' of '+im.length+' images shown';});</script>")


def define_flags() -> None:
    flags.DEFINE_string("model", None, ".keras file or SavedModel folder.", required=True)
    flags.DEFINE_string("out", "report", "Report folder (index.html inside).")
    flags.DEFINE_bool("recursive", False, "Also read the sub-folders of folder arguments.")
    flags.DEFINE_integer("window", 128, "Window side in photo pixels.")
    flags.DEFINE_integer("stride", 64, "Window step in photo pixels.")
    flags.DEFINE_integer("batch", 64, "Windows per model call.")
    flags.DEFINE_enum("tta", None, list(TTA_MODES), "Test-time augmentation (default: the model's).")
    define_precision_flag()
    flags.DEFINE_float("threshold", None, "Crack threshold (default: the model's stored one, else 0.5).")
    flags.DEFINE_float("gsd_cm", None, "Ground sampling distance in cm per pixel (box sizes, WGS84 boxes).")
    flags.DEFINE_float("max_megapixels", 89.5, "Skip photos larger than this (raise it to process them).")
    flags.DEFINE_bool("explain", False, "Add a Grad-CAM view of each photo's highest window.")
    flags.DEFINE_bool("fail_fast", False, "Stop at the first unreadable file.")
    define_scan_flags()


def _save_png(image: np.ndarray, path: str, max_side: int) -> None:
    from PIL import Image

    img = Image.fromarray(image)
    scale = max(img.size) / max_side
    if scale > 1:
        img = img.resize((max(1, round(img.width / scale)), max(1, round(img.height / scale))), Image.BILINEAR)
    img.save(path)


def _overlay(result) -> np.ndarray:
    """The photo blended with its map in red (tiles: with a red / green frame)."""
    if result.heatmap is None:
        img = np.array(result.image)
        img[:4], img[-4:], img[:, :4], img[:, -4:] = ([200, 0, 0] if result.is_crack else [0, 160, 0],) * 4
        return img
    step = max(1, int(max(result.width, result.height) / OVERLAY_SIDE))
    base = result.image[::step, ::step].astype(np.float32)
    prob = result.heatmap.pixel_map(scale=step)[: base.shape[0], : base.shape[1], None]
    return np.clip(base * (1 - 0.6 * prob) + np.array([255.0, 0, 0]) * 0.6 * prob, 0, 255).astype(np.uint8)


def write_photo_files(result, key: str, out: str, cam=None, window: int = 128, image_size: int = 224) -> dict:
    """Overlay, thumbnail, map, boxes (and Grad-CAM) of one photo; returns their paths (relative)."""
    from crack_tf.geo import boxes_geojson
    from crack_tf.heatmap import write_boxes, write_pixel_map

    files = {"overlay": f"img/{key}_overlay.png", "thumb": f"img/{key}_thumb.png"}
    overlay = _overlay(result)
    _save_png(overlay, os.path.join(out, files["overlay"]), OVERLAY_SIDE)
    _save_png(overlay, os.path.join(out, files["thumb"]), THUMB_SIDE)
    if result.heatmap is not None:
        files.update(map=f"data/{key}_heatmap.npy", geojson=f"data/{key}_boxes.geojson", csv=f"data/{key}_boxes.csv")
        write_pixel_map(result.heatmap, os.path.join(out, files["map"]))
        with open(os.path.join(out, files["geojson"]), "w") as f:
            json.dump(boxes_geojson(result.boxes, result.width, result.height, result.gps, FLAGS.gsd_cm,
                                    os.path.basename(result.path)), f)
        write_boxes(result.boxes, os.path.join(out, files["csv"]), "csv", os.path.basename(result.path))
    if cam is not None:
        from crack_tf.predict import explain

        files["gradcam"] = os.path.relpath(explain(result, image_size, window, os.path.join(out, "img"), cam, key),
                                           out)
    return files


def _gps_text(result) -> str:
    if result.gps is None:
        return "-"
    g = result.gps
    alt = "" if g.altitude is None else f", {g.altitude:.1f} m"
    return f"{g.latitude:.6f}, {g.longitude:.6f}{alt}"


def severity_order(results: list) -> list[int]:
    """Indices sorted by severity: crack first, then photo score, then cracked area share."""
    return sorted(range(len(results)), key=lambda i: (not results[i].is_crack, -results[i].probability,
                                                      -results[i].cracked_share))


def render_index(entries: list[tuple], model: str, threshold: float, failures: list) -> str:
    rows = []
    for rank, (r, key, files) in enumerate(entries, 1):
        name = html.escape(os.path.basename(r.path))
        verdict = '<span class="crack">crack</span>' if r.is_crack else "no crack"
        rows.append(f'<tr class="entry"><td>{rank}</td><td><a href="photos/{key}.html"><img class="thumb" '
                    f'src="{files["thumb"]}" alt="{name}"></a></td><td><a href="photos/{key}.html">{name}</a><br>'
                    f'{r.width}x{r.height} {r.kind}</td><td>{verdict}<br>score {r.probability:.3f}</td>'
                    f'<td>{100 * r.cracked_share:.2f}%</td><td>{len(r.boxes)}</td><td>{html.escape(r.taken or "-")}'
                    f'</td><td>{_gps_text(r)}</td></tr>')
    skipped = "".join(f"<li>{html.escape(p)}: {html.escape(why)}</li>" for p, why in failures)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>crack_tf inspection report</title>"
            f"<style>{_STYLE}</style></head><body><h1>Inspection report</h1>"
            f"<p>{len(entries)} photos, {sum(r.is_crack for r, _, _ in entries)} with cracks; model "
            f"<code>{html.escape(model)}</code>, crack when p(crack) &gt; {threshold:.4g}. "
            f"<a href='summary.csv'>summary.csv</a></p><p id='status'></p>"
            f"<table><tr><th>#</th><th>overlay</th><th>photo</th><th>verdict</th><th>cracked area</th>"
            f"<th>boxes</th><th>taken</th><th>GPS</th></tr>{''.join(rows)}</table>"
            + (f"<h2>Skipped files</h2><ul>{skipped}</ul>" if failures else "") + _STATUS_SCRIPT + "</body></html>")


def render_photo(r, files: dict, gsd_cm: float | None) -> str:
    name = html.escape(os.path.basename(r.path))
    cm = gsd_cm is not None
    head = "<tr><th>#</th><th>x0</th><th>y0</th><th>x1</th><th>y1</th><th>area px</th>" + (
        "<th>width cm</th><th>height cm</th>" if cm else "") + "<th>max p</th><th>windows</th></tr>"
    rows = "".join(
        f"<tr><td>{i}</td><td>{b['x0']}</td><td>{b['y0']}</td><td>{b['x1']}</td><td>{b['y1']}</td>"
        f"<td>{b['area_px']}</td>" + (f"<td>{b['width_cm']}</td><td>{b['height_cm']}</td>" if cm else "")
        + f"<td>{b['max_prob']:.3f}</td><td>{b['windows']}</td></tr>" for i, b in enumerate(r.boxes))
    links = " | ".join(f'<a href="../{files[k]}">{label}</a>' for k, label in
                       (("map", "per-pixel map (.npy)"), ("geojson", "boxes (GeoJSON)"), ("csv", "boxes (CSV)"))
                       if k in files)
    cam = (f"<h2>Grad-CAM of the highest window</h2><img class='big' src='../{files['gradcam']}'>"
           if "gradcam" in files else "")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title><style>{_STYLE}</style>"
            f"</head><body><p><a href='../index.html'>back to the index</a></p><h1>{name}</h1>"
            f"<p>{r.width}x{r.height} pixels, {'crack' if r.is_crack else 'no crack'} (score {r.probability:.3f}, "
            f"threshold {r.threshold:.4g}), cracked area {100 * r.cracked_share:.2f}%, {r.windows} windows; taken "
            f"{html.escape(r.taken or '-')}; GPS {_gps_text(r)}</p><p>{links}</p>"
            f"<img class='big' src='../{files['overlay']}' alt='{name} overlay'><h2>Crack boxes</h2>"
            f"<table>{head}{rows}</table>{cam}<p id='status'></p>{_STATUS_SCRIPT}</body></html>")


def main(argv: list[str]) -> int:
    from crack_tf.data.progress import Progress
    from crack_tf.photo_io import Failures, PhotoError
    from crack_tf.predictor import load_model
    from crack_tf.scan import Scorer, count_images, iter_images, read_ahead

    inputs = argv[1:]
    total = count_images(inputs, FLAGS.recursive)
    start_compile_cache(FLAGS.compile_cache_dir)
    predictor = load_model(FLAGS.model, FLAGS.tta, FLAGS.precision)
    scorer = Scorer(predictor, FLAGS.window, FLAGS.stride, FLAGS.batch, FLAGS.max_megapixels, FLAGS.gsd_cm,
                    FLAGS.threshold, keep_pixels=True, mode=FLAGS.mode)
    print(f"report: {total} files, threshold {scorer.threshold:.4g}, tta {predictor.tta}, precision "
          f"{predictor.precision}; {scorer.scanner.note}", file=sys.stderr, flush=True)
    cam = None
    if FLAGS.explain:
        from crack_tf.gradcam import GradCAM

        cam = GradCAM(predictor.model) if predictor.model is not None else None
    for sub in ("img", "data", "photos"):
        os.makedirs(os.path.join(FLAGS.out, sub), exist_ok=True)
    failures, entries = Failures(FLAGS.fail_fast), []
    with Progress(total, "report") as bar:
        for i, (path, image, error) in enumerate(read_ahead(iter_images(inputs, FLAGS.recursive),
                                                            FLAGS.max_megapixels)):
            try:
                if error:
                    raise error
                result = (scorer.add_tile(path, image) + scorer.flush() if scorer.is_tile(path, image)
                          else [scorer.photo(path, image)])
                r = result[0]
                key = f"{i:05d}_{os.path.splitext(os.path.basename(path))[0]}"
                files = write_photo_files(r, key, FLAGS.out, cam, FLAGS.window, scorer.size)
                r.image, r.heatmap = None, None  # keep the report's memory to one photo at a time
                entries.append((r, key, files))
            except PhotoError as err:
                failures.add(path, err)
            bar.update(1)
    entries = [entries[i] for i in severity_order([e[0] for e in entries])]
    for r, key, files in entries:
        with open(os.path.join(FLAGS.out, "photos", f"{key}.html"), "w", encoding="utf-8") as f:
            f.write(render_photo(r, files, FLAGS.gsd_cm))
    with open(os.path.join(FLAGS.out, "index.html"), "w", encoding="utf-8") as f:
        f.write(render_index(entries, os.path.abspath(FLAGS.model), scorer.threshold, failures.items))
    from crack_tf.predict import CSV_FIELDS
    from crack_tf.scan import file_sha256

    digest = file_sha256(FLAGS.model)
    with open(os.path.join(FLAGS.out, "summary.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r.row(os.path.abspath(FLAGS.model), digest) for r, _, _ in entries)
    print(f"report: {len(entries)} photos ({sum(r.is_crack for r, _, _ in entries)} crack), {len(failures.items)} "
          f"skipped -> {os.path.join(FLAGS.out, 'index.html')}", file=sys.stderr, flush=True)
    return failures.report(total)


def run() -> None:
    """Console-script entry point."""
    from crack_tf import cli

    cli.entry_point(define_flags, main)()


if __name__ == "__main__":
    run()
