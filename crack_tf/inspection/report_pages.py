"""The pages and images of the flight report (``crack_tf.report``): colours, index data, HTML.

* **Colours.** p(crack) is drawn with matplotlib's ``YlOrRd`` colour map at an opacity of
  ``HEAT_ALPHA * p`` (:func:`heat_rgba`): a transparent heat layer over the photo, so a low score
  hides nothing. The detail page's colour scale is built from the same function
  (:func:`legend_gradient`, over the grey ``LEGEND_GREY``), so it shows the colours of the overlay.
* **Index.** :func:`flight_data` is the whole flight as one compact dict (one entry per photo in
  severity order, then the files that failed, with their reason); :func:`write_index` writes it
  as ``report.js`` (a script, so the report opens from ``file://`` where ``fetch`` is blocked),
  the static ``index.html`` shell (summary, the failed-file table) and ``assets/``. The page's
  script (``report_assets/index.js``) renders one page of rows at a time with lazily loaded
  thumbnails, sorts and filters by verdict, score and name, and keeps its state in the URL hash.
* **Detail page** (:func:`render_photo`): the photo and its heat layer (overlay / photo / side by
  side), the crack boxes drawn and numbered over it (SVG in photo pixels, numbers as in the box
  table), the colour scale, the links to the map, boxes and Grad-CAM.
"""

from __future__ import annotations

import html
import json
import os
import shutil

import numpy as np

HEAT_ALPHA, HEAT_CMAP = 0.75, "YlOrRd"
LEGEND_GREY = (140, 140, 140)  # the colour scale is drawn over this concrete-like grey
LEGEND_STOPS = 11
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report_assets")
VIEWS = (("overlay", "Overlay"), ("photo", "Photo"), ("side", "Side by side"))


def heat_rgba(p) -> np.ndarray:
    """uint8 RGBA [..., 4] of p(crack): the ``YlOrRd`` colour, opacity ``HEAT_ALPHA * p``."""
    from matplotlib import colormaps

    p = np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0)
    rgba = np.array(colormaps[HEAT_CMAP](p))
    rgba[..., 3] = HEAT_ALPHA * p
    return np.round(rgba * 255).astype(np.uint8)


def composite(base: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """``rgba`` drawn over the uint8 RGB ``base`` (what the browser shows): uint8 RGB."""
    alpha = rgba[..., 3:].astype(np.float32) / 255
    out = base.astype(np.float32) * (1 - alpha) + rgba[..., :3].astype(np.float32) * alpha
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def legend_gradient(stops: int = LEGEND_STOPS) -> str:
    """The CSS background of the colour scale: the heat colours of 0..1 over ``LEGEND_GREY``."""
    ps = np.linspace(0, 1, stops)
    colours = ", ".join(f"rgba({r}, {g}, {b}, {a / 255:.4f}) {100 * p:g}%" for p, (r, g, b, a) in
                        zip(ps, heat_rgba(ps).tolist()))
    return f"linear-gradient(to right, {colours}), rgb{LEGEND_GREY}"


def bare_reason(path: str, reason: str) -> str:
    """A failure's reason without the leading ``path: `` that the photo errors carry."""
    return reason[len(path) + 2:] if reason.startswith(path + ": ") else reason


def gps_text(result) -> str:
    if result.gps is None:
        return "-"
    g = result.gps
    alt = "" if g.altitude is None else f", {g.altitude:.1f} m"
    return f"{g.latitude:.6f}, {g.longitude:.6f}{alt}"


def flight_data(entries: list[tuple], failures: list[tuple[str, str]], model: str, threshold: float) -> dict:
    """The index's data: ``entries`` = (ScanResult, key, files) in severity order, then the failures."""
    rows = []
    for r, key, files in entries:
        tw, th = files["thumb_size"]
        rows.append({"key": key, "name": os.path.basename(r.path), "path": r.path, "kind": r.kind, "w": r.width,
                     "h": r.height, "verdict": "crack" if r.is_crack else "no crack", "p": round(r.probability, 4),
                     "share": round(r.cracked_share, 5), "boxes": len(r.boxes), "taken": r.taken,
                     "gps": gps_text(r), "thumb": files["thumb"], "tw": tw, "th": th, "page": f"photos/{key}.html"})
    rows += [{"name": os.path.basename(path), "path": path, "verdict": "failed", "p": None,
              "reason": bare_reason(path, why)} for path, why in failures]
    counts = {v: sum(e["verdict"] == v for e in rows) for v in ("crack", "no crack", "failed")}
    return {"model": model, "threshold": threshold, "counts": counts, "entries": rows}


def _head(title: str, prefix: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link rel='stylesheet' href='{prefix}assets/report.css'></head><body>")


def render_index(data: dict) -> str:
    """The static shell of ``index.html``; ``assets/index.js`` fills the table from ``report.js``."""
    c = data["counts"]
    failed = "".join(f"<tr class='failed-file'><td>{html.escape(e['path'])}</td><td>{html.escape(e['reason'])}</td>"
                     f"</tr>" for e in data["entries"] if e["verdict"] == "failed")
    failed_part = (f"<section id='failed'><h2>Files that could not be read (<span id='failed-count'>{c['failed']}"
                   f"</span>)</h2><table><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>{failed}</tbody>"
                   f"</table></section>" if failed else "")
    options = "".join(f"<option value='{v}'>{label} ({n})</option>" for v, label, n in (
        ("all", "all", len(data["entries"])), ("crack", "crack", c["crack"]), ("no crack", "no crack", c["no crack"]),
        ("failed", "failed", c["failed"])))
    sorts = "".join(f"<option value='{v}'>{label}</option>" for v, label in (
        ("severity", "severity"), ("score-desc", "score, high first"), ("score-asc", "score, low first"),
        ("area", "cracked area"), ("boxes", "boxes"), ("name", "file name"), ("taken", "capture time")))
    sizes = "".join(f"<option>{n}</option>" for n in (50, 100, 200, 500))
    pager = ("<div class='pager'><button class='prev' type='button'>&larr; previous</button> <span class='pages'>"
             "</span> <button class='next' type='button'>next &rarr;</button></div>")
    return (_head("crack_tf inspection report", "") + "<h1>Inspection report</h1>"
            f"<p class='summary'>{len(data['entries']) - c['failed']} photos scored: <b class='crack'>{c['crack']} "
            f"with cracks</b>, {c['no crack']} without; {c['failed']} files could not be read"
            + (" (<a href='#failed'>list</a>)" if c["failed"] else "") + f". Model "
            f"<code>{html.escape(data['model'])}</code>, crack when p(crack) &gt; {data['threshold']:.4g}. "
            f"<a href='summary.csv'>summary.csv</a></p>"
            f"<form id='controls' onsubmit='return false'><label>verdict <select id='verdict'>{options}</select>"
            f"</label> <label>score from <input id='min' type='number' min='0' max='1' step='0.01' value='0'></label>"
            f" <label>to <input id='max' type='number' min='0' max='1' step='0.01' value='1'></label> <label>name "
            f"<input id='q' type='search' placeholder='part of the file name'></label> <label>sort by <select "
            f"id='sort'>{sorts}</select></label> <label>per page <select id='size'>{sizes}</select></label></form>"
            f"<p id='status'>Loading the entries...</p>{pager}<table id='entries'><thead><tr><th>#</th>"
            f"<th>overlay</th><th>photo</th><th>verdict</th><th>cracked area</th><th>boxes</th><th>taken</th>"
            f"<th>GPS</th></tr></thead><tbody></tbody></table>{pager}"
            f"<noscript><p>The list needs JavaScript; summary.csv has every photo.</p></noscript>{failed_part}"
            f"<script src='report.js'></script><script src='assets/index.js'></script></body></html>")


def write_index(out: str, data: dict) -> None:
    """``report.js``, ``index.html`` and ``assets/`` of the report folder ``out``."""
    shutil.copytree(ASSETS, os.path.join(out, "assets"), dirs_exist_ok=True)
    with open(os.path.join(out, "report.js"), "w", encoding="utf-8") as f:
        f.write("window.CRACK_REPORT = " + json.dumps(data, separators=(",", ":")) + ";\n")
    with open(os.path.join(out, "index.html"), "w", encoding="utf-8") as f:
        f.write(render_index(data))


def _boxes_svg(r) -> str:
    side = max(r.width, r.height)
    shapes = "".join(
        f"<g class='box' data-box='{i}'><rect x='{b['x0']}' y='{b['y0']}' width='{b['x1'] - b['x0']}' "
        f"height='{b['y1'] - b['y0']}'/><text x='{b['x0'] + side / 200:g}' y='{b['y0'] + side / 200:g}' "
        f"font-size='{side / 30:.0f}'>{i}</text></g>" for i, b in enumerate(r.boxes, 1))
    return (f"<svg class='boxes' viewBox='0 0 {r.width} {r.height}' preserveAspectRatio='none'>{shapes}</svg>"
            if r.boxes else "")


def _legend(threshold: float) -> str:
    ticks = "".join(f"<span style='left:{100 * t:g}%'>{t:g}</span>" for t in (0, 0.25, 0.5, 0.75, 1))
    return (f"<figure class='legend'><figcaption>p(crack) of the windows covering a pixel (mean); crack when "
            f"&gt; {threshold:.4g}</figcaption><div class='bar' style='background:{legend_gradient()}'>"
            f"<i class='threshold' style='left:{100 * min(max(threshold, 0), 1):.2f}%' title='threshold'></i></div>"
            f"<div class='ticks'>{ticks}</div></figure>")


def render_photo(r, files: dict, gsd_cm: float | None, prev_key: str | None = None,
                 next_key: str | None = None) -> str:
    """The detail page of one photo (``photos/<key>.html``)."""
    name = html.escape(os.path.basename(r.path))
    cm = gsd_cm is not None
    head = "<tr><th>#</th><th>x0</th><th>y0</th><th>x1</th><th>y1</th><th>area px</th>" + (
        "<th>width cm</th><th>height cm</th>" if cm else "") + "<th>max p</th><th>windows</th></tr>"
    rows = "".join(
        f"<tr data-box='{i}'><td>{i}</td><td>{b['x0']}</td><td>{b['y0']}</td><td>{b['x1']}</td><td>{b['y1']}</td>"
        f"<td>{b['area_px']}</td>" + (f"<td>{b['width_cm']}</td><td>{b['height_cm']}</td>" if cm else "")
        + f"<td>{b['max_prob']:.3f}</td><td>{b['windows']}</td></tr>" for i, b in enumerate(r.boxes, 1))
    table = f"<table id='box-table'>{head}{rows}</table>" if r.boxes else "<p>No crack boxes.</p>"
    links = " | ".join(f"<a href='../{files[k]}'>{label}</a>" for k, label in
                       (("map", "per-pixel map (.npy)"), ("geojson", "boxes (GeoJSON)"), ("csv", "boxes (CSV)"))
                       if k in files)
    nav = " ".join(f"<a class='{cls}' href='{key}.html'>{label}</a>" for cls, key, label in
                   (("prev", prev_key, "&larr; previous"), ("next", next_key, "next &rarr;")) if key)
    buttons = "".join(f"<button type='button' data-view='{v}'>{label}</button>" for v, label in VIEWS)
    photo, svg = f"<img class='photo' src='../{files['photo']}' alt='{name}'>", _boxes_svg(r)
    stages = (f"<div id='stages' data-view='overlay'><div class='stage plain'>{photo}{svg}</div>"
              f"<div class='stage over'>{photo}<img class='heat' src='../{files['heat']}' alt='p(crack) of {name}'>"
              f"{svg}</div></div>")
    cam = (f"<h2>Grad-CAM of the highest window</h2><img class='gradcam' src='../{files['gradcam']}' alt='Grad-CAM'>"
           if "gradcam" in files else "")
    what = "one tile, scored once" if r.kind == "tile" else f"{r.windows} windows"
    return (_head(os.path.basename(r.path), "../") + f"<nav><a href='../index.html'>back to the index</a> {nav}</nav>"
            f"<h1>{name}</h1><p>{r.width}x{r.height} pixels, <b class='{'crack' if r.is_crack else ''}'>"
            f"{'crack' if r.is_crack else 'no crack'}</b> (score {r.probability:.3f}, threshold {r.threshold:.4g}), "
            f"cracked area {100 * r.cracked_share:.2f}%, {what}; taken {html.escape(r.taken or '-')}; GPS "
            f"{gps_text(r)}</p><p>{links}</p><div id='view-controls'><span class='views'>{buttons}</span> "
            f"<label><input id='show-boxes' type='checkbox' checked> boxes</label> <label>overlay opacity "
            f"<input id='opacity' type='range' min='0' max='100' value='100'></label></div>{stages}"
            f"{_legend(r.threshold)}<h2>Crack boxes ({len(r.boxes)})</h2>{table}{cam}"
            f"<script src='../assets/detail.js'></script></body></html>")
