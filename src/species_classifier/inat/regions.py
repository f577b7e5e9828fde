"""Geographic regions used to select observations: bounding boxes, GeoJSON polygons and iNaturalist places.

A region is given on the command line as one of:

* ``min_lat,min_lon,max_lat,max_lon`` in decimal degrees (WGS84), for example
  ``37.911717,-79.487651,39.723043,-75.048939``;
* the path of a GeoJSON file holding a Polygon or MultiPolygon (bare geometry,
  Feature or FeatureCollection; coordinates are ``[longitude, latitude]``);
* ``place:ID``, an iNaturalist place id, understood only by the web API source.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class RegionError(ValueError):
    """Raised when a region string or GeoJSON file is invalid."""


@dataclass(frozen=True)
class BoundingBox:
    """Latitude/longitude rectangle in decimal degrees, bounds included.

    Boxes that cross the antimeridian (``min_lon > max_lon``) are rejected;
    describe such an area with a GeoJSON MultiPolygon instead.
    """

    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("min_lat", self.min_lat, 90.0),
            ("max_lat", self.max_lat, 90.0),
            ("min_lon", self.min_lon, 180.0),
            ("max_lon", self.max_lon, 180.0),
        ):
            if not -limit <= value <= limit:
                raise RegionError(f"{name} {value} is outside [-{limit:g}, {limit:g}]")
        if self.min_lat > self.max_lat:
            raise RegionError(f"min_lat {self.min_lat} is greater than max_lat {self.max_lat}")
        if self.min_lon > self.max_lon:
            raise RegionError(
                f"min_lon {self.min_lon} is greater than max_lon {self.max_lon}; boxes crossing the "
                "antimeridian are not supported, use a GeoJSON MultiPolygon"
            )

    @property
    def bounds(self) -> BoundingBox:
        return self

    def contains(self, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        """Return a boolean mask of the points inside the box; NaN coordinates are outside."""
        return (
            (latitude >= self.min_lat)
            & (latitude <= self.max_lat)
            & (longitude >= self.min_lon)
            & (longitude <= self.max_lon)
        )

    def cache_token(self) -> str:
        return f"bbox:{self.min_lat!r},{self.min_lon!r},{self.max_lat!r},{self.max_lon!r}"

    def describe(self) -> str:
        return f"{self.min_lat:g},{self.min_lon:g},{self.max_lat:g},{self.max_lon:g}"


@dataclass(frozen=True)
class PolygonRegion:
    """One or more polygons read from GeoJSON; each polygon is a list of rings of (lon, lat) vertices.

    A point is inside when it is inside any polygon under the even-odd rule, so
    holes (inner rings) are excluded. Points exactly on an edge may fall on
    either side.
    """

    polygons: tuple[tuple[np.ndarray, ...], ...]
    source: str
    digest: str

    @property
    def bounds(self) -> BoundingBox:
        vertices = np.concatenate([ring for polygon in self.polygons for ring in polygon])
        return BoundingBox(
            min_lat=float(vertices[:, 1].min()),
            min_lon=float(vertices[:, 0].min()),
            max_lat=float(vertices[:, 1].max()),
            max_lon=float(vertices[:, 0].max()),
        )

    def contains(self, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        """Return a boolean mask of the points inside any polygon (ray casting, vectorised over points)."""
        latitude = np.asarray(latitude, dtype=np.float64)
        longitude = np.asarray(longitude, dtype=np.float64)
        inside_any = np.zeros(latitude.shape, dtype=bool)
        candidates = self.bounds.contains(latitude, longitude)
        if not candidates.any():
            return inside_any
        lat = latitude[candidates]
        lon = longitude[candidates]
        inside_candidates = np.zeros(lat.shape, dtype=bool)
        for polygon in self.polygons:
            inside = np.zeros(lat.shape, dtype=bool)
            for ring in polygon:
                x1, y1 = ring[:-1, 0], ring[:-1, 1]
                x2, y2 = ring[1:, 0], ring[1:, 1]
                for ax, ay, bx, by in zip(x1, y1, x2, y2):
                    crosses = (ay > lat) != (by > lat)
                    if not crosses.any():
                        continue
                    with np.errstate(divide="ignore", invalid="ignore"):
                        x_at_lat = ax + (lat - ay) * (bx - ax) / (by - ay)
                    inside ^= crosses & (lon < x_at_lat)
            inside_candidates |= inside
        inside_any[candidates] = inside_candidates
        return inside_any

    def cache_token(self) -> str:
        return f"polygon:{self.digest}"

    def describe(self) -> str:
        return f"polygon from {self.source}"


@dataclass(frozen=True)
class PlaceRegion:
    """An iNaturalist place (``place:ID``); only the web API can filter by it."""

    place_id: int

    @property
    def bounds(self) -> BoundingBox:
        raise RegionError(f"place:{self.place_id} has no bounding box here; only --source api accepts place ids")

    def contains(self, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        raise RegionError(f"place:{self.place_id} cannot be tested locally; only --source api accepts place ids")

    def cache_token(self) -> str:
        return f"place:{self.place_id}"

    def describe(self) -> str:
        return f"place:{self.place_id}"


class Region(Protocol):
    """Anything that can test points and report its bounding box."""

    @property
    def bounds(self) -> BoundingBox: ...

    def contains(self, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray: ...

    def cache_token(self) -> str: ...

    def describe(self) -> str: ...


def parse_region(text: str) -> BoundingBox | PolygonRegion | PlaceRegion:
    """Parse a region argument: ``min_lat,min_lon,max_lat,max_lon``, a GeoJSON file path, or ``place:ID``."""
    text = text.strip()
    if text.lower().startswith("place:"):
        place_id = text.split(":", 1)[1].strip()
        if not place_id.isdigit():
            raise RegionError(f"invalid place id in {text!r}: expected place:<integer>")
        return PlaceRegion(int(place_id))

    parts = text.split(",")
    if len(parts) == 4:
        try:
            min_lat, min_lon, max_lat, max_lon = (float(part) for part in parts)
        except ValueError:
            pass
        else:
            return BoundingBox(min_lat, min_lon, max_lat, max_lon)

    path = Path(text).expanduser()
    if path.is_file():
        return read_geojson(path)
    raise RegionError(
        f"invalid region {text!r}: expected min_lat,min_lon,max_lat,max_lon in decimal degrees, "
        "the path of an existing GeoJSON file, or place:ID"
    )


def read_geojson(path: Path) -> PolygonRegion:
    """Read the Polygon and MultiPolygon geometries of a GeoJSON file into one region."""
    raw = path.read_bytes()
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        raise RegionError(f"{path} is not valid JSON: {error}") from error

    polygons: list[tuple[np.ndarray, ...]] = []
    for geometry in _iter_geometries(document, path):
        geometry_type = geometry.get("type")
        coordinates = geometry.get("coordinates")
        if geometry_type == "Polygon":
            polygons.append(_polygon_rings(coordinates, path))
        elif geometry_type == "MultiPolygon":
            polygons.extend(_polygon_rings(polygon, path) for polygon in coordinates or [])
        else:
            raise RegionError(f"{path}: geometry type {geometry_type!r} is not supported; use Polygon or MultiPolygon")
    if not polygons:
        raise RegionError(f"{path} contains no Polygon or MultiPolygon geometry")
    return PolygonRegion(tuple(polygons), source=str(path), digest=hashlib.sha256(raw).hexdigest()[:16])


def _iter_geometries(document: Any, path: Path) -> list[dict[str, Any]]:
    if not isinstance(document, dict):
        raise RegionError(f"{path}: expected a GeoJSON object")
    kind = document.get("type")
    if kind == "FeatureCollection":
        return [geometry for feature in document.get("features", []) for geometry in _iter_geometries(feature, path)]
    if kind == "Feature":
        geometry = document.get("geometry")
        return _iter_geometries(geometry, path) if geometry else []
    if kind == "GeometryCollection":
        return [item for geometry in document.get("geometries", []) for item in _iter_geometries(geometry, path)]
    return [document]


def _polygon_rings(coordinates: Any, path: Path) -> tuple[np.ndarray, ...]:
    rings = []
    for ring in coordinates or []:
        array = np.asarray(ring, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] < 3 or array.shape[1] < 2:
            raise RegionError(f"{path}: every polygon ring needs at least 3 [longitude, latitude] positions")
        array = array[:, :2]
        if not np.array_equal(array[0], array[-1]):
            array = np.vstack([array, array[:1]])
        if (np.abs(array[:, 0]) > 180).any() or (np.abs(array[:, 1]) > 90).any():
            raise RegionError(f"{path}: coordinates must be [longitude, latitude] in decimal degrees")
        rings.append(array)
    if not rings:
        raise RegionError(f"{path}: a polygon has no rings")
    return tuple(rings)
