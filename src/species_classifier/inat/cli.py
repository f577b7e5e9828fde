"""The ``collect`` and ``download`` subcommands.

``add_subcommands`` registers both on the project's argument parser. Every
option can also come from a TOML file given with ``--config``, in table
``[collect]`` or ``[download]``, with keys named like the long options with
``_`` (``other_max = 5000``). Options given on the command line win. Relative
paths in the file are resolved against the file's folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from species_classifier.inat.api import DEFAULT_API_URL, DEFAULT_MAX_PER_SPECIES, ApiError, ApiOptions, collect_api
from species_classifier.inat.download import SOURCES, DownloadOptions, download_manifest
from species_classifier.inat.licenses import DEFAULT_PHOTO_BASE_URL, PHOTO_SIZES, LicenseError, parse_licenses
from species_classifier.inat.manifest import ManifestError, build_manifest, format_summary, summarize, write_manifest
from species_classifier.inat.metadata import MetadataNotFoundError, locate_metadata
from species_classifier.inat.opendata import CollectResult, collect_open_data
from species_classifier.inat.query import (
    CollectQuery,
    QueryError,
    parse_date,
    parse_months,
    parse_name_list,
    parse_quality_grades,
)
from species_classifier.inat.regions import RegionError, parse_region
from species_classifier.inat.s3 import DEFAULT_BUCKET_URI, S3Error
from species_classifier.inat.taxa import TaxonResolutionError
from species_classifier.inat.tsv import MetadataFormatError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

COLLECT_DEFAULTS: dict[str, Any] = {
    "source": "open-data",
    "targets": None,
    "confusers": None,
    "target_region": None,
    "confuser_region": None,
    "other_region": None,
    "other_max": 1000,
    "other_per_species": 50,
    "max_per_species": None,
    "quality": "research",
    "months": None,
    "observed_from": None,
    "observed_to": None,
    "licenses": "all",
    "photos_per_observation": 1,
    "size": "medium",
    "photo_base_url": DEFAULT_PHOTO_BASE_URL,
    "metadata": DEFAULT_BUCKET_URI,
    "s3_endpoint_url": None,
    "cache_dir": None,
    "refresh": False,
    "seed": 0,
    "out": None,
    "api_url": DEFAULT_API_URL,
    "api_requests_per_second": 1.0,
}
DOWNLOAD_DEFAULTS: dict[str, Any] = {
    "manifest": None,
    "dest": None,
    "size": None,
    "source": "https",
    "s3_uri": DEFAULT_BUCKET_URI,
    "s3_endpoint_url": None,
    "workers": 8,
    "retries": 4,
    "backoff": 1.0,
    "timeout": 30.0,
    "max_side": None,
    "verify_existing": False,
    "failures": None,
    "no_progress": False,
}
# Options whose config-file values are paths, resolved against the config file's folder.
_PATH_KEYS = {"out", "metadata", "cache_dir", "manifest", "dest", "failures"}
_REGION_KEYS = {"target_region", "confuser_region", "other_region"}


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/species-classifier``, or ``~/.cache/species-classifier``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "species-classifier"


def _load_config(path: str | None, table: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Read table ``[table]`` of a TOML file, checking keys and resolving relative paths."""
    if not path:
        return {}
    config_path = Path(path).expanduser()
    try:
        with open(config_path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise QueryError(f"config file {config_path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise QueryError(f"config file {config_path} is not valid TOML: {error}") from None
    values = document.get(table, {})
    if not isinstance(values, dict):
        raise QueryError(f"config file {config_path}: [{table}] must be a table")
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise QueryError(f"config file {config_path}: unknown key(s) in [{table}]: {', '.join(unknown)}; accepted: {', '.join(sorted(defaults))}")
    folder = config_path.resolve().parent
    resolved = dict(values)
    for key, value in values.items():
        if not isinstance(value, str):
            continue
        if key in _PATH_KEYS and not value.startswith("s3://") and not Path(value).expanduser().is_absolute():
            resolved[key] = str(folder / value)
        elif key in _REGION_KEYS and (folder / value).is_file():
            resolved[key] = str(folder / value)
    return resolved


def _merge_options(args: argparse.Namespace, table: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Combine command-line values, config-file values and defaults, in that order of precedence."""
    config = _load_config(getattr(args, "config", None), table, defaults)
    merged = {}
    for key, default in defaults.items():
        value = getattr(args, key, None)
        if value is None:
            value = config.get(key, default)
        merged[key] = value
    return merged


def _region(value: str | None) -> Any:
    return parse_region(value) if value else None


def _optional_int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be an integer, got {value!r}") from None


def build_query(options: dict[str, Any]) -> CollectQuery:
    """Build a CollectQuery from merged collect options (command line, config file, defaults)."""
    return CollectQuery(
        targets=parse_name_list(options["targets"]),
        confusers=parse_name_list(options["confusers"]),
        target_region=_region(options["target_region"]),
        confuser_region=_region(options["confuser_region"]),
        other_region=_region(options["other_region"]),
        other_max=int(options["other_max"]),
        other_per_species=int(options["other_per_species"]),
        max_per_species=_optional_int(options["max_per_species"], "max_per_species"),
        quality_grades=parse_quality_grades(options["quality"]),
        months=parse_months(options["months"]),
        observed_from=parse_date(options["observed_from"]),
        observed_to=parse_date(options["observed_to"]),
        licenses=parse_licenses(",".join(options["licenses"]) if isinstance(options["licenses"], list) else options["licenses"]),
        photos_per_observation=int(options["photos_per_observation"]),
        seed=int(options["seed"]),
    )


def run_collect(args: argparse.Namespace) -> int:
    """Run ``collect``: select photos and write the manifest; return the exit code."""
    try:
        options = _merge_options(args, "collect", COLLECT_DEFAULTS)
        if not options["out"]:
            raise QueryError("the manifest path is missing: give --out FILE.csv (or out = ... in the config file)")
        if options["size"] not in PHOTO_SIZES:
            raise QueryError(f"unknown photo size {options['size']!r}; accepted values: {', '.join(PHOTO_SIZES)}")
        query = build_query(options)
        cache_dir = Path(options["cache_dir"]).expanduser() if options["cache_dir"] else default_cache_dir()
        out = Path(options["out"]).expanduser()

        if options["source"] == "api":
            api_options = ApiOptions(
                api_url=options["api_url"],
                requests_per_second=float(options["api_requests_per_second"]),
                cache_dir=None if options["refresh"] else cache_dir,
            )
            result: CollectResult = collect_api(query, api_options)
        elif options["source"] == "open-data":
            metadata = locate_metadata(options["metadata"], cache_dir, options["s3_endpoint_url"])
            result = collect_open_data(query, metadata, cache_dir, refresh=bool(options["refresh"]))
        else:
            raise QueryError(f"unknown source {options['source']!r}; accepted values: open-data, api")
    except TaxonResolutionError as error:
        logger.error("%s", error)
        return EXIT_USAGE
    except (QueryError, RegionError, LicenseError, MetadataNotFoundError, MetadataFormatError, ValueError) as error:
        logger.error("collect: %s", error)
        return EXIT_USAGE
    except (S3Error, ApiError) as error:
        logger.error("collect: %s", error)
        return EXIT_FAILURE

    manifest = build_manifest(result.selection, options["size"], options["photo_base_url"])
    write_manifest(manifest, out)
    print(format_summary(summarize(manifest)))
    stats = result.stats
    source_text = "the cached selection" if stats.from_cache else f"a scan taking {stats.seconds:.1f} s"
    print(
        f"wrote {manifest.height} photos of {stats.selected_observations} observations to {out} (from {source_text}); "
        f"dropped {stats.duplicate_photos_dropped} photos linked to more than one observation"
    )
    if manifest.filter(manifest["role"] == "target").height == 0:
        logger.warning("no target photos matched; check the region, dates and quality grade")
    return EXIT_OK


def run_download(args: argparse.Namespace) -> int:
    """Run ``download``: fetch, verify and store the manifest's photos; return 0 if all succeeded, 1 otherwise."""
    try:
        options = _merge_options(args, "download", DOWNLOAD_DEFAULTS)
        if not options["manifest"]:
            raise QueryError("the manifest path is missing: give MANIFEST (or manifest = ... in the config file)")
        manifest = Path(options["manifest"]).expanduser()
        if not manifest.is_file():
            raise QueryError(f"manifest {manifest} does not exist")
        dest = Path(options["dest"]).expanduser() if options["dest"] else manifest.parent / "photos"
        download_options = DownloadOptions(
            dest=dest,
            size=options["size"],
            source=options["source"],
            s3_uri=options["s3_uri"],
            s3_endpoint_url=options["s3_endpoint_url"],
            workers=int(options["workers"]),
            retries=int(options["retries"]),
            backoff_seconds=float(options["backoff"]),
            timeout_seconds=float(options["timeout"]),
            max_side=_optional_int(options["max_side"], "max_side"),
            verify_existing=bool(options["verify_existing"]),
            failures_path=Path(options["failures"]).expanduser() if options["failures"] else None,
            progress=not options["no_progress"],
        )
        report = download_manifest(manifest, download_options)
    except (QueryError, ManifestError, ValueError) as error:
        logger.error("download: %s", error)
        return EXIT_USAGE
    except OSError as error:
        logger.error("download: %s", error)
        return EXIT_FAILURE

    print(
        f"downloaded {report.downloaded} photos ({report.bytes_downloaded / 1e6:.1f} MB), "
        f"{report.skipped} already present, {report.failed} failed; manifest paths updated in {manifest}"
    )
    if report.failed:
        print(f"failures are listed in {report.failures_path}")
        return EXIT_FAILURE
    return EXIT_OK


def _add_collect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="select iNaturalist observations and photos and write a manifest CSV",
        description=(
            "Select observations of the target taxa (and look-alike confusers, and a sample of other "
            "species) with their photos, from the iNaturalist open-data metadata or the web API, and "
            "write the manifest CSV that download and train read. Regions are "
            "min_lat,min_lon,max_lat,max_lon in decimal degrees, a GeoJSON polygon file, or place:ID "
            "(web API only). A per-species summary is printed."
        ),
    )
    add = parser.add_argument
    add("--config", metavar="FILE.toml", help="read options from table [collect] of this TOML file; command-line options win")

    add("--source", choices=["open-data", "api"], help="open-data: scan the metadata files (any size); api: query the web API (small sets) (default: open-data)")
    add("--targets", metavar="NAMES", help="comma-separated scientific names or taxon ids of the taxa to classify; subspecies and varieties are rolled up to them (required)")
    add("--confusers", metavar="NAMES", help="comma-separated look-alike taxa, kept under their own names with role 'confuser'")
    add("--target-region", metavar="REGION", help="where target observations come from (default: anywhere)")
    add("--confuser-region", metavar="REGION", help="where confuser observations come from (default: the target region)")
    add("--other-region", metavar="REGION", help="where 'other' observations are sampled from (default: the target region)")
    add("--other-max", type=int, metavar="N", help="maximum number of 'other' photos; 0 disables them (default: 1000)")
    add("--other-per-species", type=int, metavar="N", help="maximum 'other' photos of one species (default: 50)")
    add("--max-per-species", type=int, metavar="N", help=f"maximum photos per target or confuser taxon, sampled at random (default: no limit for open-data, {DEFAULT_MAX_PER_SPECIES} for api)")

    add("--quality", metavar="GRADES", help="comma-separated quality grades: research, needs_id, casual, or all (default: research)")
    add("--months", metavar="MONTHS", help="observation months, e.g. 4-9, 3,4,5 or 11-2 (default: all)")
    add("--observed-from", metavar="YYYY-MM-DD", help="first observation date, inclusive (default: no limit)")
    add("--observed-to", metavar="YYYY-MM-DD", help="last observation date, inclusive (default: no limit)")
    add("--licenses", metavar="CODES", help="comma-separated photo licences, e.g. CC0,CC-BY,CC-BY-SA for commercial use (default: all open licences)")
    add("--photos-per-observation", type=int, metavar="N", help="photos kept per observation, in the observer's order (default: 1, the first photo)")

    add("--size", choices=PHOTO_SIZES, help="photo size written into the manifest URLs; medium is at most 500 px (default: medium)")
    add("--photo-base-url", metavar="URL", help=f"base of the photo URLs, followed by /photos/ID/SIZE.EXT (default: {DEFAULT_PHOTO_BASE_URL})")

    add("--metadata", metavar="FOLDER|S3_URI", help=f"folder or S3 URI holding observations/photos/taxa/observers.csv.gz (default: {DEFAULT_BUCKET_URI})")
    add("--s3-endpoint-url", metavar="URL", help="S3-compatible server to read the metadata from (default: AWS)")
    add("--cache-dir", metavar="FOLDER", help="cache of downloaded metadata, taxa and query results (default: $XDG_CACHE_HOME/species-classifier or ~/.cache/species-classifier)")
    add("--refresh", action="store_true", default=None, help="ignore cached query results and scan the metadata again")
    add("--seed", type=int, help="seed of the random sampling (default: 0)")

    add("--api-url", metavar="URL", help=f"iNaturalist API v1 base URL (default: {DEFAULT_API_URL})")
    add("--api-requests-per-second", type=float, metavar="RATE", help="average web API rate limit in requests per second, with bursts of 5 seconds' worth (default: 1, as in pyinaturalist)")

    add("--out", metavar="FILE.csv", help="manifest to write (required)")
    # This command reads --config itself, resolving relative paths against the file's folder.
    parser.set_defaults(func=run_collect, reads_config_itself=True)


def _add_download(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download, verify and store the photos of a manifest",
        description=(
            "Download the photos listed in a manifest, decode each one fully to verify it, and write it "
            "atomically under --dest as SPECIES/PHOTO_ID-SIZE.EXT. Photos already present are skipped, so "
            "an interrupted run can be restarted. The manifest's path column is rewritten for every "
            "verified photo; failures are listed in a CSV report. Exits with 1 if any photo failed."
        ),
    )
    add = parser.add_argument
    add("manifest", nargs="?", metavar="MANIFEST", help="manifest CSV written by collect")
    add("--config", metavar="FILE.toml", help="read options from table [download] of this TOML file; command-line options win")
    add("--dest", metavar="FOLDER", help="folder for the photos (default: photos/ beside the manifest)")
    add("--size", choices=PHOTO_SIZES, help="photo size to fetch: original (2048 px), large (1024), medium (500), small (240), thumb (100), square (75) (default: the size in the manifest URLs)")
    add("--source", choices=SOURCES, help="https: fetch the manifest URLs; s3: fetch photos/ID/SIZE.EXT from --s3-uri (default: https)")
    add("--s3-uri", metavar="S3_URI", help=f"bucket (and prefix) holding the photos for --source s3 (default: {DEFAULT_BUCKET_URI})")
    add("--s3-endpoint-url", metavar="URL", help="S3-compatible server for --source s3 (default: AWS)")
    add("--workers", type=int, metavar="N", help="concurrent downloads (default: 8)")
    add("--retries", type=int, metavar="N", help="retries of a transient failure (HTTP 429/5xx, timeout, truncated body) (default: 4)")
    add("--backoff", type=float, metavar="SECONDS", help="delay before the first retry, doubled for each further retry (default: 1.0)")
    add("--timeout", type=float, metavar="SECONDS", help="connect and read timeout of one request (default: 30)")
    add("--max-side", type=int, metavar="PIXELS", help="resize photos whose longest side is longer, before saving (default: keep the size)")
    add("--verify-existing", action="store_true", default=None, help="decode photos already on disk before skipping them, and fetch broken ones again")
    add("--failures", metavar="FILE.csv", help="failures report with photo_id, url, error (default: MANIFEST_STEM.failures.csv beside the manifest)")
    add("--no-progress", action="store_true", default=None, help="hide the progress bar")
    parser.set_defaults(func=run_download, reads_config_itself=True)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``collect`` and ``download`` subcommands; each sets ``func`` to a callable returning an exit code.

    Option defaults are None in argparse, so that values from ``--config`` can
    fill the options not given. The real defaults are in the help texts and in
    COLLECT_DEFAULTS and DOWNLOAD_DEFAULTS.
    """
    _add_collect(subparsers)
    _add_download(subparsers)


def main(argv: list[str] | None = None) -> int:
    """Run ``collect`` or ``download`` without the project's main command line (used by tests and scripts)."""
    parser = argparse.ArgumentParser(prog="species-classifier")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subcommands(subparsers)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
