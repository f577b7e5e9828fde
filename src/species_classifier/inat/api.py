"""Collect observations and photos through the iNaturalist web API (v1), for small sets.

Requests go through pyinaturalist's ``ClientSession``, which rate-limits them
(by default 1 request per second and 60 per minute, pyinaturalist's own
defaults), retries 5xx errors on HTTPS and caches responses in a SQLite file. The base URL is a parameter so that tests can use a local
server that responds like ``/v1/observations`` and ``/v1/taxa``.

Each target and confuser is fetched separately, newest observations first,
until ``max_per_species`` photos (default 200) or a page limit is reached.
``other`` observations come from the other region, at species rank or below,
excluding the named taxa.

Unlike the open-data source, which checks the whole photos file, this source
drops a photo linked to two observations only when it fetched both of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pyinaturalist import ClientSession
from requests import HTTPError, RequestException
from requests_ratelimiter import MemoryQueueBucket

from species_classifier.inat.licenses import OPEN_LICENSES, normalize_license, photo_url_parts
from species_classifier.inat.opendata import CollectResult, CollectStats
from species_classifier.inat.query import ROLE_CONFUSER, ROLE_OTHER, ROLE_TARGET, CollectQuery
from species_classifier.inat.regions import BoundingBox, PlaceRegion
from species_classifier.inat.selection import OVERSAMPLING, choose_photos, sample_keys
from species_classifier.inat.taxa import NameProblem, TaxonResolutionError

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.inaturalist.org/v1"
DEFAULT_MAX_PER_SPECIES = 200
PER_PAGE = 200
# Upper bound on pages fetched per target or confuser, and for the ``other`` class,
# so that a broad query cannot run for hours against the daily request limit.
MAX_PAGES_PER_TAXON = 10
MAX_PAGES_OTHER = 50
SPECIES_RANK_LEVEL = 10
MAX_IDS_PER_REQUEST = 30


class ApiError(RuntimeError):
    """Raised when the web API returns an error or an unexpected document."""


@dataclass
class ApiOptions:
    """Connection settings of the web API source.

    Attributes:
        api_url: Base URL of the iNaturalist API v1.
        requests_per_second: Average rate limit (pyinaturalist's default is 1). The
            limiter allows bursts of 5 seconds' worth of requests and 60 times this
            rate per minute.
        cache_dir: Folder of the response cache file ``api-cache.sqlite``; ``None`` disables caching.
        cache_hours: How long cached responses are reused, in hours.
        timeout_seconds: Read timeout of one request.
    """

    api_url: str = DEFAULT_API_URL
    requests_per_second: float = 1.0
    cache_dir: Path | None = None
    cache_hours: float = 24.0
    timeout_seconds: int = 30


class InatApiClient:
    """Thin wrapper over pyinaturalist's ClientSession with a configurable base URL."""

    def __init__(self, options: ApiOptions) -> None:
        self.options = options
        self.base_url = options.api_url.rstrip("/")
        cache_file = str(options.cache_dir / "api-cache.sqlite") if options.cache_dir else ":memory:"
        if options.cache_dir:
            options.cache_dir.mkdir(parents=True, exist_ok=True)
        self.session = ClientSession(
            cache_file=cache_file,
            expire_after=dt.timedelta(hours=options.cache_hours) if options.cache_dir else 0,
            per_second=options.requests_per_second,
            per_minute=60 * options.requests_per_second,
            bucket_class=MemoryQueueBucket,
            ratelimit_path=None,
            timeout=options.timeout_seconds,
            user_agent="species-classifier",
        )
        self.requests_sent = 0

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        """Send a GET request to ``{api_url}/{path}`` and return the JSON document."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        self.requests_sent += 1
        try:
            response = self.session.request("GET", url, **params)
        except HTTPError as error:
            raise ApiError(f"GET {url} failed: {error}") from error
        except RequestException as error:
            raise ApiError(f"GET {url} failed: {error}") from error
        try:
            document = response.json()
        except ValueError as error:
            raise ApiError(f"GET {url} returned invalid JSON") from error
        if not isinstance(document, dict):
            raise ApiError(f"GET {url} returned a {type(document).__name__}, expected a JSON object")
        return document

    def taxa_by_id(self, taxon_ids: list[int]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for start in range(0, len(taxon_ids), MAX_IDS_PER_REQUEST):
            chunk = taxon_ids[start : start + MAX_IDS_PER_REQUEST]
            results.extend(self.get("taxa/" + ",".join(str(taxon_id) for taxon_id in chunk)).get("results", []))
        return results

    def iter_observation_pages(self, params: dict[str, Any], max_pages: int) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of observations, newest first, paging by ``id_below`` (no 10,000-result limit)."""
        id_below: int | None = None
        for _ in range(max_pages):
            page_params = {**params, "per_page": PER_PAGE, "order_by": "id", "order": "desc"}
            if id_below is not None:
                page_params["id_below"] = id_below
            results = self.get("observations", **page_params).get("results", [])
            if not results:
                return
            yield results
            id_below = min(int(observation["id"]) for observation in results)
            if len(results) < PER_PAGE:
                return


def _region_params(region: Any) -> dict[str, Any]:
    if region is None:
        return {}
    if isinstance(region, PlaceRegion):
        return {"place_id": region.place_id}
    box: BoundingBox = region.bounds
    return {"swlat": box.min_lat, "swlng": box.min_lon, "nelat": box.max_lat, "nelng": box.max_lon}


def _base_params(query: CollectQuery) -> dict[str, Any]:
    params: dict[str, Any] = {
        "quality_grade": list(query.quality_grades),
        "photos": True,
    }
    if set(query.licenses) != set(OPEN_LICENSES):
        params["photo_license"] = list(query.licenses)
    if query.months:
        params["month"] = list(query.months)
    if query.observed_from:
        params["d1"] = query.observed_from.isoformat()
    if query.observed_to:
        params["d2"] = query.observed_to.isoformat()
    return params


def _resolve_names(client: InatApiClient, names: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[NameProblem]]:
    resolved: list[dict[str, Any]] = []
    problems: list[NameProblem] = []
    for name in names:
        if name.isdigit():
            results = client.taxa_by_id([int(name)])
            if not results:
                problems.append(NameProblem(name, "no taxon has this id"))
            elif not results[0].get("is_active", True):
                problems.append(NameProblem(name, f"taxon {name} ({results[0].get('name')}) is inactive"))
            else:
                resolved.append(results[0])
            continue
        results = client.get("taxa", q=name, per_page=30).get("results", [])
        exact = [taxon for taxon in results if str(taxon.get("name", "")).lower() == name.lower()]
        active = [taxon for taxon in exact if taxon.get("is_active", True)]
        suggestions = tuple(dict.fromkeys(str(taxon["name"]) for taxon in results if taxon.get("is_active", True)))[:5]
        if len(active) == 1:
            resolved.append(active[0])
        elif len(active) > 1:
            choices = ", ".join(f"{taxon['id']} ({taxon.get('rank')})" for taxon in active)
            problems.append(NameProblem(name, f"several active taxa have this name: {choices}; give the taxon id instead"))
        elif exact:
            problems.append(NameProblem(name, "only inactive taxa have this name", suggestions))
        else:
            problems.append(NameProblem(name, "no taxon has this name", suggestions))
    return resolved, problems


def _observation_point(observation: dict[str, Any]) -> tuple[float | None, float | None]:
    location = observation.get("location")
    if isinstance(location, str) and "," in location:
        latitude, longitude = location.split(",", 1)
        try:
            return float(latitude), float(longitude)
        except ValueError:
            pass
    coordinates = (observation.get("geojson") or {}).get("coordinates")
    if isinstance(coordinates, list) and len(coordinates) >= 2:
        return float(coordinates[1]), float(coordinates[0])
    return None, None


def _observation_photos(observation: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """Return (position, photo) pairs, from ``observation_photos`` when present, else ``photos`` in order."""
    observation_photos = observation.get("observation_photos")
    if observation_photos:
        pairs = []
        for index, item in enumerate(observation_photos):
            photo = item.get("photo") or {}
            pairs.append((int(item.get("position", index) if item.get("position") is not None else index), photo))
        return pairs
    return list(enumerate(observation.get("photos") or []))


@dataclass
class _Rows:
    observations: list[dict[str, Any]]
    photos: list[dict[str, Any]]


def _add_observation(rows: _Rows, observation: dict[str, Any], role: str, group_id: int, species_name: str) -> int:
    """Append one observation and its licensed photos; return the number of photos added."""
    latitude, longitude = _observation_point(observation)
    user = observation.get("user") or {}
    uuid = str(observation.get("uuid") or observation.get("id"))
    rows.observations.append(
        {
            "observation_uuid": uuid,
            "observer_id": user.get("id"),
            "observer_login": user.get("login"),
            "observer_name": user.get("name"),
            "latitude": latitude,
            "longitude": longitude,
            "observed_on": observation.get("observed_on"),
            "role": role,
            "group_id": group_id,
            "species_name": species_name,
        }
    )
    added = 0
    for position, photo in _observation_photos(observation):
        license_code = photo.get("license_code")
        url = photo.get("url")
        parts = photo_url_parts(url) if url else None
        if not license_code or parts is None or photo.get("id") is None:
            continue
        rows.photos.append(
            {
                "photo_id": int(photo["id"]),
                "observation_uuid": uuid,
                "extension": parts[1],
                "license": normalize_license(license_code),
                "position": position,
                "url": url,
            }
        )
        added += 1
    return added


def _in_region(region: Any, latitude: float | None, longitude: float | None) -> bool:
    if region is None or isinstance(region, PlaceRegion):
        return True
    if latitude is None or longitude is None:
        return False
    return bool(region.contains(np.array([latitude]), np.array([longitude]))[0])


def _species_of(taxon: dict[str, Any], species_names: dict[int, str], client: InatApiClient) -> tuple[int, str] | None:
    """Return (species id, species name) for a taxon at species rank or below, else None."""
    rank_level = taxon.get("rank_level")
    if taxon.get("rank") == "species":
        return int(taxon["id"]), str(taxon["name"])
    if rank_level is None or float(rank_level) >= SPECIES_RANK_LEVEL:
        return None
    species_id = taxon.get("min_species_taxon_id")
    if species_id is None:
        return None
    species_id = int(species_id)
    if species_id not in species_names:
        for result in client.taxa_by_id([species_id]):
            species_names[int(result["id"])] = str(result["name"])
    name = species_names.get(species_id)
    return (species_id, name) if name else None


def collect_api(query: CollectQuery, options: ApiOptions) -> CollectResult:
    """Select photos for ``query`` through the iNaturalist web API.

    Raises:
        TaxonResolutionError: A target or confuser name matches no active taxon.
        ApiError: The API returned an error.
    """
    started = time.perf_counter()
    client = InatApiClient(options)
    targets, target_problems = _resolve_names(client, query.targets)
    confusers, confuser_problems = _resolve_names(client, query.confusers)
    if target_problems or confuser_problems:
        raise TaxonResolutionError([*target_problems, *confuser_problems])

    max_per_species = query.max_per_species or DEFAULT_MAX_PER_SPECIES
    rows = _Rows([], [])
    base = _base_params(query)
    named_ids = {int(taxon["id"]) for taxon in [*targets, *confusers]}
    excluded_species = named_ids | {int(ancestor) for taxon in [*targets, *confusers] for ancestor in taxon.get("ancestor_ids") or []}

    for role, taxa, region in (
        (ROLE_TARGET, targets, query.target_region),
        (ROLE_CONFUSER, confusers, query.effective_confuser_region),
    ):
        for taxon in taxa:
            photos = 0
            params = {**base, **_region_params(region), "taxon_id": int(taxon["id"])}
            for page in client.iter_observation_pages(params, MAX_PAGES_PER_TAXON):
                for observation in page:
                    latitude, longitude = _observation_point(observation)
                    if _in_region(region, latitude, longitude):
                        photos += min(_add_observation(rows, observation, role, int(taxon["id"]), str(taxon["name"])), query.photos_per_observation)
                if photos >= OVERSAMPLING * max_per_species:
                    break
            logger.info("%s %s: %d candidate photos", role, taxon["name"], photos)

    if query.wants_other:
        region = query.effective_other_region
        params = {**base, **_region_params(region), "hrank": "species"}
        if named_ids:
            params["without_taxon_id"] = sorted(named_ids)
        per_species: dict[int, int] = {}
        species_names: dict[int, str] = {}
        candidates = 0
        for page in client.iter_observation_pages(params, MAX_PAGES_OTHER):
            for observation in page:
                taxon = observation.get("taxon") or {}
                if not taxon or not _in_region(region, *_observation_point(observation)):
                    continue
                species = _species_of(taxon, species_names, client)
                if species is None or species[0] in excluded_species:
                    continue
                if per_species.get(species[0], 0) >= OVERSAMPLING * query.other_per_species:
                    continue
                if _add_observation(rows, observation, ROLE_OTHER, species[0], species[1]):
                    per_species[species[0]] = per_species.get(species[0], 0) + 1
                    candidates += 1
            if candidates >= OVERSAMPLING * query.other_max:
                break
        logger.info("other: %d candidate observations of %d species", candidates, len(per_species))

    observations = pl.DataFrame(
        rows.observations,
        schema={
            "observation_uuid": pl.String, "observer_id": pl.Int64, "observer_login": pl.String, "observer_name": pl.String,
            "latitude": pl.Float64, "longitude": pl.Float64, "observed_on": pl.String, "role": pl.String,
            "group_id": pl.Int64, "species_name": pl.String,
        },
    ).unique("observation_uuid", keep="first")
    observations = observations.with_columns(sample_keys(observations["observation_uuid"], query.seed))
    photos = pl.DataFrame(
        rows.photos,
        schema={"photo_id": pl.Int64, "observation_uuid": pl.String, "extension": pl.String, "license": pl.String, "position": pl.Int64, "url": pl.String},
    ).unique(["photo_id", "observation_uuid"])
    linked_twice = photos.group_by("photo_id").len().filter(pl.col("len") > 1)["photo_id"]
    if linked_twice.len():
        logger.warning("dropping %d photos linked to more than one observation", linked_twice.len())
    photos = photos.filter(~pl.col("photo_id").is_in(linked_twice.implode()))

    people = observations.select("observation_uuid", "observer_login", "observer_name")
    capped_query = dataclasses.replace(query, max_per_species=max_per_species)
    selection, photo_stats = choose_photos(observations.drop("observer_login", "observer_name"), photos.drop("url"), capped_query)
    selection = selection.join(photos.select("photo_id", "url"), on="photo_id", how="left").join(people, on="observation_uuid", how="left")
    stats = CollectStats(
        from_cache=False,
        selected_observations=selection["observation_uuid"].n_unique(),
        duplicate_photos_dropped=linked_twice.len(),
        photo_selection=photo_stats,
        seconds=time.perf_counter() - started,
    )
    logger.info("web API: %d requests", client.requests_sent)
    return CollectResult(selection, stats)
