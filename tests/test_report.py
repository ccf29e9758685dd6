"""The HTML flight report (crack_tf.report): its files, and its pages in headless Chromium.

The browser tests drive Debian's Chromium over the DevTools pipe (tests/chromium.py) and skip when
it is absent (CI installs it). Their screenshots and the measured 1,000-photo load time are kept
in ``runs/test_artifacts/report/`` (index_1000.png, index_flight.png, detail.png, load_1000.json).
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from crack_tf.inspection.heatmap import Heatmap, window_starts
from crack_tf.inspection.report import THUMB_SIDE, entry_key, write_photo_files
from crack_tf.inspection.report_pages import (
    LEGEND_GREY,
    composite,
    flight_data,
    heat_rgba,
    render_index,
    write_index,
)
from crack_tf.inspection.scan import ScanResult
from tests.chromium import Browser, chromium
from tests.test_heatmap import crack_photo
from tests.test_inspect import save_with_gps

REPO = pathlib.Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "runs" / "test_artifacts" / "report"
STATUS = "document.getElementById('status').dataset"


@pytest.fixture
def browser(tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium (CI installs Debian's chromium: apt-get install -y chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with Browser(binary, str(tmp_path / "profile"), width=1280, height=1400) as b:
        yield b


def _result(rng, name: str, w: int = 900, h: int = 600, p: float | None = None) -> ScanResult:
    """A scored photo with a random window grid (no model)."""
    ys, xs = window_starts(h, 128, 64), window_starts(w, 128, 64)
    grid = rng.uniform(0, 0.3, (len(ys), len(xs))).astype(np.float32)
    grid[2:4, 5:7] = 0.97
    p = float(grid.max()) if p is None else p
    boxes = [{"x0": int(xs[5]), "y0": int(ys[2]), "x1": int(xs[6]) + 128, "y1": int(ys[3]) + 128, "max_prob": 0.97,
              "mean_prob": 0.97, "windows": 4, "area_px": 256 * 256}]
    return ScanResult(name, "photo", w, h, p, p > 0.5, 0.5, grid.size, boxes, 0.1, heatmap=Heatmap(
        grid, ys, xs, 128, h, w, 0.0), image=np.full((h, w, 3), 128, np.uint8))


def test_heat_colours_are_transparent_at_zero_and_strong_red_at_one():
    rgba = heat_rgba(np.array([0.0, 0.5, 1.0]))
    assert rgba[0, 3] == 0 and rgba[1, 3] < rgba[2, 3] == round(0.75 * 255)
    assert rgba[2, 0] > 2 * rgba[2, 1] and rgba[2, 0] > 2 * rgba[2, 2]  # high p: red
    base = np.full((1, 3), 90, np.uint8)
    assert (composite(base, rgba[:1]) == 90).all() and (composite(base, rgba[2:]) != 90).any()


def test_photo_files_keep_the_data_outputs_and_a_small_thumbnail(tmp_path):
    for sub in ("img", "data"):
        (tmp_path / sub).mkdir()
    r = _result(np.random.default_rng(0), "/x/photo a.jpg", 3000, 2000)
    files = write_photo_files(r, entry_key(7, r.path), str(tmp_path))
    assert files["thumb"] == "img/00007_photo_a_thumb.jpg"  # URL-safe key
    thumb = Image.open(tmp_path / files["thumb"])
    assert max(thumb.size) == THUMB_SIDE and thumb.size == tuple(files["thumb_size"]) and thumb.format == "JPEG"
    assert max(Image.open(tmp_path / files["photo"]).size) == 1600
    heat = np.asarray(Image.open(tmp_path / files["heat"]))
    assert heat.shape == (267, 400, 4)  # the map at 1/7.5 scale
    np.testing.assert_array_equal(heat, heat_rgba(r.heatmap.pixel_map(scale=7.5)))
    assert np.load(tmp_path / files["map"]).shape == (2000, 3000)
    assert json.load(open(tmp_path / files["geojson"]))["features"][0]["properties"]["max_prob"] == 0.97
    assert len(list(csv.DictReader(open(tmp_path / files["csv"])))) == 1


def test_index_lists_the_failed_files_with_their_reasons_escaped():
    r = _result(np.random.default_rng(0), "/f/a.jpg")
    data = flight_data([(r, "00000_a", {"thumb": "img/t.jpg", "thumb_size": (256, 171)})],
                       [("/f/<b>x.jpg", "/f/<b>x.jpg: cannot read this photo (OSError: broken)"),
                        ("/f/n.txt", "not an image file")], "m.keras", 0.5)
    assert data["counts"] == {"crack": 1, "no crack": 0, "failed": 2}
    assert [e["reason"] for e in data["entries"][1:]] == ["cannot read this photo (OSError: broken)",
                                                          "not an image file"]
    page = render_index(data)
    assert "<td>/f/&lt;b&gt;x.jpg</td><td>cannot read this photo (OSError: broken)</td>" in page
    assert "<b>x.jpg" not in page and "id='failed-count'>2<" in page


def _set(b: Browser, field: str, value: str) -> None:
    event = "change" if field in ("verdict", "sort", "size") else "input"
    b.eval(f"(function(){{var x=document.getElementById('{field}'); x.value={json.dumps(value)};"
           f"x.dispatchEvent(new Event('{event}'));}})()")


def _rows(b: Browser) -> list[dict]:
    return b.eval("Array.from(document.querySelectorAll('#entries tbody tr')).map(function(t){return {"
                  "n: +t.cells[0].textContent, verdict: t.dataset.verdict, score: t.dataset.score, "
                  "text: t.textContent}})")


@pytest.mark.slow
def test_index_of_1000_photos_loads_in_2_s_and_sorts_filters_and_pages(tmp_path, browser):
    rng = np.random.default_rng(0)
    out = tmp_path / "report"
    (out / "img").mkdir(parents=True)
    noise = rng.normal(0, 12, (192, 256, 3))
    thumbs = []  # ten real-size 256 x 192 JPEGs (~10 kB), their bytes written to the 1,000 thumbnail files
    for tint in range(10):
        buf = io.BytesIO()
        Image.fromarray(np.clip(noise + (130 + 12 * tint, 120, 120), 0, 255).astype(np.uint8)).save(buf, "JPEG",
                                                                                                   quality=82)
        thumbs.append(buf.getvalue())
    entries = []
    for i in range(1000):
        p = float(rng.uniform())
        r = ScanResult(f"/flight/DJI_{i:04d}.JPG", "photo", 4000, 3000, p, p > 0.6, 0.6, 2000, [], p / 5)
        key = entry_key(i, r.path)
        (out / "img" / f"{key}_thumb.jpg").write_bytes(thumbs[min(int(10 * p), 9)])
        entries.append((r, key, {"thumb": f"img/{key}_thumb.jpg", "thumb_size": (256, 192)}))
    entries.sort(key=lambda e: (not e[0].is_crack, -e[0].probability))
    failures = [(f"/flight/bad_{i}.JPG", f"/flight/bad_{i}.JPG: cannot read this photo") for i in range(20)]
    write_index(str(out), flight_data(entries, failures, "m.keras", 0.6))
    browser.open((out / "index.html").as_uri())
    status = browser.wait_for(f"{STATUS}.thumbsMs && Object.assign({{}}, {STATUS})")
    timing = {"rendered_ms": float(status["renderedMs"]), "thumbs_on_screen_ms": float(status["thumbsMs"])}
    (ARTIFACTS / "load_1000.json").write_text(json.dumps(timing))
    print("1,000-photo index:", timing)
    assert timing["rendered_ms"] <= 2000 and timing["thumbs_on_screen_ms"] <= 2000, timing
    assert status["total"] == "1020" and status["matched"] == "1020" and status["shown"] == "50"
    assert browser.eval("document.images.length") == 50  # one page of thumbnails, not 1,000
    browser.screenshot(str(ARTIFACTS / "index_1000.png"))
    assert browser.eval("document.getElementById('failed-count').textContent") == "20"
    assert browser.eval("document.querySelectorAll('#failed tr.failed-file').length") == 20

    cracks = sorted(e[0].probability for e in entries if e[0].is_crack)
    _set(browser, "verdict", "crack")
    _set(browser, "sort", "score-asc")
    rows = _rows(browser)
    assert browser.eval(f"{STATUS}.matched") == str(len(cracks)) and {r["verdict"] for r in rows} == {"crack"}
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores) and scores[0] == pytest.approx(cracks[0], abs=1e-4)
    _set(browser, "min", "0.9")
    assert browser.eval(f"{STATUS}.matched") == str(sum(p >= 0.9 for p in cracks))
    browser.eval("document.querySelector('.pager .next').click()")
    assert _rows(browser)[0]["n"] == 51 and "page=2" in browser.eval("location.hash")
    browser.open("about:blank")
    browser.open((out / "index.html").as_uri() + "#verdict=failed")  # the state lives in the URL
    rows = _rows(browser)
    assert len(rows) == 20 and all("cannot read this photo" in r["text"] for r in rows)


def _cmd(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crack_tf.report", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def _pixel(shot: np.ndarray, x: float, y: float) -> np.ndarray:
    return shot[int(round(y)), int(round(x)), :3].astype(int)


@pytest.mark.slow
def test_report_of_a_flight_in_a_real_browser(model_path, tmp_path, browser):
    photos = tmp_path / "flight"
    photos.mkdir()
    for i in range(2):
        photo, _ = crack_photo(seed=10 + i)
        save_with_gps(photo, photos / f"p{i}.jpg", 52.5 + i * 1e-4, 13.4, 40.0)
    plain, _ = crack_photo(seed=12)
    plain[:] = 150
    Image.fromarray(plain).save(photos / "odd name #2.png")
    Image.fromarray(crack_photo(64, 64, seed=3)[0]).save(photos / "tile.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    (photos / "notes.txt").write_text("flight log")
    out = tmp_path / "report"
    proc = _cmd([f"--model={model_path}", f"--out={out}", "--window=64", "--stride=32", "--gsd_cm=0.5", "--explain",
                 str(photos)])
    assert proc.returncode == 1, proc.stderr[-3000:]  # two files could not be read
    assert "report [" in proc.stderr and "2 of 6 files failed" in proc.stderr  # progress and summary kept
    data = json.loads((out / "report.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))

    browser.open((out / "index.html").as_uri())
    browser.wait_for(f"{STATUS}.thumbsMs")
    rows = _rows(browser)
    assert len(rows) == 6 and [r["verdict"] for r in rows][:2] == ["crack", "crack"]
    assert [r["verdict"] for r in rows][4:] == ["failed", "failed"]
    assert browser.eval("Array.from(document.images).filter(function(i){return i.naturalWidth>0}).length") == 4
    failed = browser.eval("Array.from(document.querySelectorAll('#failed tr.failed-file')).map(function(t)"
                          "{return t.textContent})")
    assert len(failed) == 2 and "broken.jpg" in failed[0] and "cannot read this photo" in failed[0]
    assert "notes.txt" in failed[1] and "not an image file" in failed[1]
    assert "images shown" not in browser.eval("document.body.textContent")
    browser.screenshot(str(ARTIFACTS / "index_flight.png"))
    odd = next(e for e in data["entries"] if e["name"] == "odd name #2.png")
    browser.open((out / odd["page"]).as_uri())  # a name with a space and '#' gets a working page
    assert browser.eval("document.querySelector('h1').textContent") == "odd name #2.png"

    first = data["entries"][0]
    browser.open((out / first["page"]).as_uri())
    browser.wait_for("Array.from(document.images).every(function(i){return i.complete && i.naturalWidth>0})")
    assert browser.eval("document.querySelector('nav a.next').getAttribute('href')").startswith(
        data["entries"][1]["key"] + ".html")
    visible = ("(function(){var r={};['plain','over'].forEach(function(s){var st=document.querySelector('.stage.'+s);"
               "r[s]=st.offsetWidth>0;});return r;})()")
    assert browser.eval(visible) == {"plain": False, "over": True}  # overlay first
    browser.eval("document.querySelector('button[data-view=photo]').click()")
    assert browser.eval(visible) == {"plain": True, "over": False}
    browser.eval("document.querySelector('button[data-view=side]').click()")
    assert browser.eval(visible) == {"plain": True, "over": True}
    table = browser.eval("Array.from(document.querySelectorAll('#box-table tr[data-box]')).map(function(t){"
                         "return Array.from(t.cells).slice(0,5).map(function(c){return +c.textContent})})")
    drawn = browser.eval("Array.from(document.querySelectorAll('.stage.plain svg g.box')).map(function(g){var r="
                         "g.querySelector('rect');return [+g.querySelector('text').textContent,+r.getAttribute('x'),"
                         "+r.getAttribute('y'),+r.getAttribute('x')+ +r.getAttribute('width'),"
                         "+r.getAttribute('y')+ +r.getAttribute('height')]})")
    assert len(table) >= 1 and drawn == table  # each box drawn at its table coordinates, same number
    shot_path = ARTIFACTS / "detail.png"
    browser.screenshot(str(shot_path))
    shot = np.asarray(Image.open(shot_path).convert("RGB"))
    # The colour scale shows the overlay's colours: at p = 0.8 the heat colour over the grey.
    bar = browser.eval("(function(){var r=document.querySelector('.legend .bar').getBoundingClientRect();"
                       "return [r.left, r.top, r.width, r.height];})()")
    expected = composite(np.array([LEGEND_GREY], np.uint8), heat_rgba(np.array([0.8])))[0]
    assert np.abs(_pixel(shot, bar[0] + 0.8 * bar[2], bar[1] + bar[3] / 2) - expected).max() <= 6
    # ...and the overlay is that colour map drawn over the photo at the box's crack.
    box = table[0]
    for stage, red in (("plain", False), ("over", True)):
        left, top, width = browser.eval(f"(function(){{var r=document.querySelector('.stage.{stage} img.photo')"
                                        f".getBoundingClientRect();return [r.left, r.top, r.width];}})()")
        k = width / first["w"]
        x, y = left + k * (box[1] + box[3]) / 2 - 3 * k, top + k * (box[2] + box[4]) / 2
        r, g, _ = _pixel(shot, x, y)
        assert (r - g > 40) == red, (stage, r, g)
    browser.eval("document.getElementById('show-boxes').click()")
    assert browser.eval("document.querySelector('.stage.over svg').getBoundingClientRect().width") == 0
