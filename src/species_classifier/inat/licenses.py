"""Photo licences, attribution strings and photo URLs of the iNaturalist open data."""

from __future__ import annotations

import re

# Licence codes as written in the open-data photos.csv ``license`` column. The
# open-data bucket holds only photos under one of these licences.
OPEN_LICENSES: tuple[str, ...] = (
    "CC0",
    "CC-BY",
    "CC-BY-SA",
    "CC-BY-ND",
    "CC-BY-NC",
    "CC-BY-NC-SA",
    "CC-BY-NC-ND",
)
# Licences that allow commercial use.
COMMERCIAL_LICENSES: tuple[str, ...] = ("CC0", "CC-BY", "CC-BY-SA")

PHOTO_SIZES: tuple[str, ...] = ("original", "large", "medium", "small", "thumb", "square")
"""Photo sizes served by iNaturalist: original (longest side at most 2048 px), large (1024),
medium (500), small (240), thumb (100) and square (75 x 75 crop)."""

DEFAULT_PHOTO_BASE_URL = "https://inaturalist-open-data.s3.amazonaws.com"

_PHOTO_URL_SIZE = re.compile(r"/(" + "|".join(PHOTO_SIZES) + r")\.([A-Za-z0-9]+)(\?[^/]*)?$")


class LicenseError(ValueError):
    """Raised for a licence code that is not an open Creative Commons licence."""


def normalize_license(code: str) -> str:
    """Return the open-data spelling of a licence code (``cc-by-nc``, ``CC BY-NC`` and ``cc_by_nc`` become ``CC-BY-NC``)."""
    normalized = re.sub(r"[\s_]+", "-", code.strip().upper())
    if normalized in ("CC-0", "CC0-1.0"):
        normalized = "CC0"
    return normalized


def parse_licenses(text: str | None) -> tuple[str, ...]:
    """Parse a comma-separated licence list; ``None``, ``""`` or ``all`` mean every open licence."""
    if text is None or text.strip().lower() in ("", "all"):
        return OPEN_LICENSES
    licenses = []
    for part in text.split(","):
        if not part.strip():
            continue
        code = normalize_license(part)
        if code not in OPEN_LICENSES:
            raise LicenseError(f"unknown licence {part.strip()!r}; accepted values: {', '.join(OPEN_LICENSES)} or all")
        if code not in licenses:
            licenses.append(code)
    if not licenses:
        raise LicenseError("the licence list is empty")
    return tuple(licenses)


def format_attribution(observer_name: str | None, observer_login: str | None, license_code: str) -> str:
    """Build the attribution line to show with a re-used photo.

    ``(c) {name or login}, some rights reserved ({licence})``, or for CC0
    ``{name or login}, no rights reserved (CC0)``.
    """
    who = (observer_name or "").strip() or (observer_login or "").strip() or "unknown observer"
    if license_code == "CC0":
        return f"{who}, no rights reserved (CC0)"
    return f"(c) {who}, some rights reserved ({license_code})"


def photo_url(base_url: str, photo_id: int | str, size: str, extension: str) -> str:
    """Return ``{base_url}/photos/{photo_id}/{size}.{extension}``, the layout of the open-data bucket."""
    return f"{base_url.rstrip('/')}/photos/{photo_id}/{size}.{extension}"


def photo_s3_key(photo_id: int | str, size: str, extension: str, prefix: str = "") -> str:
    """Return the S3 key ``photos/{photo_id}/{size}.{extension}`` under an optional prefix."""
    key = f"photos/{photo_id}/{size}.{extension}"
    return f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key


def with_photo_size(url: str, size: str) -> str:
    """Replace the size part of an iNaturalist photo URL (``.../photos/1/medium.jpg`` to ``.../photos/1/large.jpg``).

    URLs that do not end in ``/{size}.{extension}`` are returned unchanged.
    """
    return _PHOTO_URL_SIZE.sub(lambda match: f"/{size}.{match.group(2)}{match.group(3) or ''}", url)


def photo_url_parts(url: str) -> tuple[str, str] | None:
    """Return ``(size, extension)`` from an iNaturalist photo URL, or ``None`` if it has another layout."""
    match = _PHOTO_URL_SIZE.search(url)
    return (match.group(1), match.group(2)) if match else None
