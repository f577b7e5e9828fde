"""Collect training photos from iNaturalist: open-data metadata, the web API, and a verified downloader.

The ``collect`` step selects observations and photos and writes a manifest
CSV (see ``manifest.MANIFEST_COLUMNS``). The ``download`` step fetches the
photos and fills the manifest's ``path`` column.
"""

from species_classifier.inat.api import ApiOptions, collect_api
from species_classifier.inat.download import DownloadOptions, DownloadReport, download_manifest
from species_classifier.inat.manifest import MANIFEST_COLUMNS, build_manifest, read_manifest, write_manifest
from species_classifier.inat.metadata import MetadataFiles, locate_metadata
from species_classifier.inat.opendata import CollectResult, CollectStats, collect_open_data
from species_classifier.inat.query import CollectQuery
from species_classifier.inat.regions import BoundingBox, parse_region

__all__ = [
    "MANIFEST_COLUMNS",
    "ApiOptions",
    "BoundingBox",
    "CollectQuery",
    "CollectResult",
    "CollectStats",
    "DownloadOptions",
    "DownloadReport",
    "MetadataFiles",
    "build_manifest",
    "collect_api",
    "collect_open_data",
    "download_manifest",
    "locate_metadata",
    "parse_region",
    "read_manifest",
    "write_manifest",
]
