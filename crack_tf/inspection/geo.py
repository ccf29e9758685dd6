"""EXIF GPS / time of drone photos and approximate real-world positions of crack boxes.

``photo_gps(path)`` reads latitude / longitude (WGS84 degrees, + = N / E) and altitude (m) from
the EXIF GPS IFD, and the capture time, with Pillow; None when the photo has no GPS.

With a ground sampling distance ``gsd_cm`` (centimetres of ground per pixel), a box of pixels
gets a size in centimetres and a WGS84 polygon placed around the photo's GPS position. This is
**approximate**: it assumes a nadir camera (looking straight down), the image top pointing north
and the GPS fix at the image centre; gimbal angles, the drone's heading, lens distortion and
terrain are ignored. Use it to find a crack on a map, not to measure one to the centimetre.
"""

from __future__ import annotations

import dataclasses
import math

from PIL import ExifTags, Image

GPS_IFD = ExifTags.IFD.GPSInfo
EXIF_IFD = ExifTags.IFD.Exif
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132
METRES_PER_DEGREE = 111_320.0  # along a meridian (and along the equator)


@dataclasses.dataclass
class PhotoGPS:
    latitude: float
    longitude: float
    altitude: float | None


def _degrees(value, ref: str | None) -> float:
    d, m, s = (float(v) for v in value)
    deg = d + m / 60 + s / 3600
    return -deg if ref in ("S", "W") else deg


def photo_exif(path: str) -> tuple[PhotoGPS | None, str | None]:
    """(GPS position or None, capture time 'YYYY:MM:DD HH:MM:SS' or None) of a photo."""
    try:
        with Image.open(path) as img:
            exif = img.getexif()
    except Exception:  # noqa: BLE001 - no EXIF to read: no position
        return None, None
    when = exif.get_ifd(EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    gps = exif.get_ifd(GPS_IFD)
    try:
        lat = _degrees(gps[2], gps.get(1))
        lon = _degrees(gps[4], gps.get(3))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None, str(when) if when else None
    alt = gps.get(6)
    altitude = None if alt is None else float(alt) * (-1 if gps.get(5) in (1, b"\x01") else 1)
    return PhotoGPS(lat, lon, altitude), str(when) if when else None


def offset_to_lonlat(gps: PhotoGPS, east_m: float, north_m: float) -> tuple[float, float]:
    """(longitude, latitude) of a point ``east_m`` / ``north_m`` metres from the GPS position."""
    lat = gps.latitude + north_m / METRES_PER_DEGREE
    lon = gps.longitude + east_m / (METRES_PER_DEGREE * max(math.cos(math.radians(gps.latitude)), 1e-9))
    return lon, lat


def box_geometry(box: dict, width: int, height: int, gps: PhotoGPS, gsd_cm: float) -> list[list[float]]:
    """The box's WGS84 polygon ring [[lon, lat], ...] (nadir, north-up, GPS at the image centre)."""
    metres = gsd_cm / 100.0
    cx, cy = width / 2, height / 2
    ring = []
    for x, y in ((box["x0"], box["y0"]), (box["x1"], box["y0"]), (box["x1"], box["y1"]), (box["x0"], box["y1"]),
                 (box["x0"], box["y0"])):
        lon, lat = offset_to_lonlat(gps, (x - cx) * metres, (cy - y) * metres)  # image y grows southwards
        ring.append([round(lon, 9), round(lat, 9)])
    return ring


def with_real_sizes(boxes: list[dict], gsd_cm: float | None) -> list[dict]:
    """Boxes with ``width_cm`` / ``height_cm`` / ``area_cm2`` added when the GSD is known."""
    if not gsd_cm:
        return boxes
    out = []
    for b in boxes:
        w, h = (b["x1"] - b["x0"]) * gsd_cm, (b["y1"] - b["y0"]) * gsd_cm
        out.append({**b, "width_cm": round(w, 1), "height_cm": round(h, 1), "area_cm2": round(w * h, 1)})
    return out


def boxes_geojson(boxes: list[dict], width: int, height: int, gps: PhotoGPS | None, gsd_cm: float | None,
                  photo: str) -> dict:
    """A GeoJSON FeatureCollection: WGS84 polygons with GPS and a GSD, else pixel coordinates."""
    geo = gps is not None and bool(gsd_cm)
    features = []
    for i, b in enumerate(boxes):
        if geo:
            ring = box_geometry(b, width, height, gps, gsd_cm)
        else:
            ring = [[b["x0"], b["y0"]], [b["x1"], b["y0"]], [b["x1"], b["y1"]], [b["x0"], b["y1"]], [b["x0"], b["y0"]]]
        features.append({"type": "Feature", "id": i, "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {k: v for k, v in b.items()}})
    doc = {"type": "FeatureCollection", "features": features,
           "properties": {"photo": photo, "width": width, "height": height,
                          "coordinates": "WGS84 lon/lat (approximate: nadir, north-up, GPS at the centre)" if geo
                          else "pixels (x right, y down)"}}
    if gps is not None:
        doc["properties"].update(latitude=gps.latitude, longitude=gps.longitude, altitude=gps.altitude,
                                 gsd_cm=gsd_cm)
    return doc
