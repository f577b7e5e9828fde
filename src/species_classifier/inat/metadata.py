"""Locate the four open-data metadata files in a local folder or an S3 bucket."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from species_classifier.inat.s3 import fetch_cached, make_s3_client, parse_s3_uri

logger = logging.getLogger(__name__)

METADATA_TABLES: tuple[str, ...] = ("observations", "photos", "taxa", "observers")


class MetadataNotFoundError(FileNotFoundError):
    """Raised when a metadata file is missing from the folder or bucket."""


@dataclass(frozen=True)
class MetadataFiles:
    """Local paths of the four metadata files and a version string for each (size and mtime, or S3 ETag)."""

    observations: Path
    photos: Path
    taxa: Path
    observers: Path
    versions: dict[str, str]

    def path(self, table: str) -> Path:
        return getattr(self, table)


def _local_version(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _find_local(folder: Path, table: str) -> Path:
    for name in (f"{table}.csv.gz", f"{table}.csv"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise MetadataNotFoundError(f"{folder} has no {table}.csv.gz (or {table}.csv)")


def locate_metadata(source: str | Path, cache_dir: Path, s3_endpoint_url: str | None = None) -> MetadataFiles:
    """Return local paths of observations, photos, taxa and observers metadata.

    Args:
        source: A local folder holding ``{table}.csv.gz`` (or uncompressed
            ``{table}.csv``), or an S3 URI such as ``s3://inaturalist-open-data``
            (files at the bucket root) or ``s3://bucket/prefix``.
        cache_dir: Root of the download cache; S3 objects are stored under ``cache_dir/s3/``.
        s3_endpoint_url: Base URL of an S3-compatible server; ``None`` means AWS.
    """
    text = str(source)
    if text.startswith("s3://"):
        bucket, prefix = parse_s3_uri(text)
        client = make_s3_client(s3_endpoint_url)
        paths: dict[str, Path] = {}
        versions: dict[str, str] = {}
        for table in METADATA_TABLES:
            key = f"{prefix}/{table}.csv.gz" if prefix else f"{table}.csv.gz"
            cached = fetch_cached(client, bucket, key, cache_dir)
            paths[table] = cached.path
            versions[table] = f"s3://{bucket}/{key}:{cached.etag}:{cached.size}"
        return MetadataFiles(**paths, versions=versions)

    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise MetadataNotFoundError(f"metadata folder {folder} does not exist")
    paths = {table: _find_local(folder, table) for table in METADATA_TABLES}
    return MetadataFiles(**paths, versions={table: _local_version(path) for table, path in paths.items()})
