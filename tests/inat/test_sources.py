"""Metadata from a loopback S3 server, and the web API source against a fake API server."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import polars as pl
import pytest

from species_classifier.inat.api import ApiError, ApiOptions, collect_api
from species_classifier.inat.metadata import locate_metadata
from species_classifier.inat.opendata import collect_open_data
from species_classifier.inat.regions import PlaceRegion
from species_classifier.inat.s3 import S3Error
from species_classifier.inat.taxa import TaxonResolutionError
from tests.inat.conftest import upload_public
from tests.inat.servers import FakeInatApi
from tests.inat.synthetic import DUPLICATE_PHOTO_ID, EXPECTED_NAMED_PHOTOS, TARGET_REGION
from tests.inat.test_opendata import DEFAULT_QUERY, photos_per_species


def upload_folder(endpoint: str, folder: Path, prefix: str) -> None:
    for table in ("observations", "photos", "taxa", "observers"):
        upload_public(endpoint, f"{prefix}/{table}.csv.gz", (folder / f"{table}.csv.gz").read_bytes())


def test_metadata_from_s3_matches_local(moto_endpoint: str, synthetic_metadata: Path, tmp_path: Path) -> None:
    upload_folder(moto_endpoint, synthetic_metadata, "synthetic")
    cache = tmp_path / "cache"
    metadata = locate_metadata("s3://inaturalist-open-data/synthetic", cache, s3_endpoint_url=moto_endpoint)
    assert metadata.observations == cache / "s3" / "inaturalist-open-data" / "synthetic" / "observations.csv.gz"
    assert metadata.observations.read_bytes() == (synthetic_metadata / "observations.csv.gz").read_bytes()
    from_s3 = collect_open_data(DEFAULT_QUERY, metadata).selection
    local = collect_open_data(DEFAULT_QUERY, locate_metadata(synthetic_metadata, tmp_path)).selection
    assert from_s3.equals(local)


def test_s3_cache_follows_etag(moto_endpoint: str, open_data_sample: Path, synthetic_metadata: Path, tmp_path: Path) -> None:
    upload_folder(moto_endpoint, open_data_sample, "changing")
    cache = tmp_path / "cache"
    first = locate_metadata("s3://inaturalist-open-data/changing", cache, s3_endpoint_url=moto_endpoint)
    modified = first.taxa.stat().st_mtime_ns
    again = locate_metadata("s3://inaturalist-open-data/changing", cache, s3_endpoint_url=moto_endpoint)
    assert again.taxa.stat().st_mtime_ns == modified
    assert again.versions == first.versions

    upload_public(moto_endpoint, "changing/taxa.csv.gz", (synthetic_metadata / "taxa.csv.gz").read_bytes())
    changed = locate_metadata("s3://inaturalist-open-data/changing", cache, s3_endpoint_url=moto_endpoint)
    assert changed.versions["taxa"] != first.versions["taxa"]
    assert changed.taxa.read_bytes() == (synthetic_metadata / "taxa.csv.gz").read_bytes()


def test_s3_missing_object(moto_endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(S3Error, match="404"):
        locate_metadata("s3://inaturalist-open-data/empty-prefix", tmp_path, s3_endpoint_url=moto_endpoint)


def api_options(fake_api: FakeInatApi, tmp_path: Path, rate: float = 100.0) -> ApiOptions:
    return ApiOptions(api_url=fake_api.url, requests_per_second=rate, cache_dir=tmp_path / "api")


def test_api_collect_matches_open_data(fake_api: FakeInatApi, tmp_path: Path) -> None:
    result = collect_api(DEFAULT_QUERY, api_options(fake_api, tmp_path))
    selection = result.selection
    named = {**photos_per_species(selection, "target"), **photos_per_species(selection, "confuser")}
    # The API source checks only the observations it fetched. The needs_id observation that
    # shares rubrum_3's photo is not fetched, so that photo is kept, unlike with the open data.
    assert named == {**EXPECTED_NAMED_PHOTOS, "Acer rubrum": EXPECTED_NAMED_PHOTOS["Acer rubrum"] + 1}
    assert result.stats.duplicate_photos_dropped == 0
    other = selection.filter(pl.col("role") == "other")
    assert 0 < other.height <= DEFAULT_QUERY.other_max
    assert max(photos_per_species(selection, "other").values()) <= DEFAULT_QUERY.other_per_species
    assert "Quercus alba" in photos_per_species(selection, "other")
    assert "Acer rubrum" not in photos_per_species(selection, "other")
    assert selection["url"].str.starts_with("https://photos.invalid/photos/").all()
    assert set(selection["license"].to_list()) == {"CC-BY-NC", "CC-BY-ND"}
    observation_requests = [params for path, params in fake_api.request_log if path == "/v1/observations"]
    assert all(params["quality_grade"] == ["research"] for params in observation_requests)
    assert any("without_taxon_id" in params for params in observation_requests)


def test_api_drops_photos_of_two_fetched_observations(fake_api: FakeInatApi, tmp_path: Path) -> None:
    query = dataclasses.replace(DEFAULT_QUERY, quality_grades=("research", "needs_id"))
    result = collect_api(query, api_options(fake_api, tmp_path))
    assert result.stats.duplicate_photos_dropped == 1
    assert DUPLICATE_PHOTO_ID not in result.selection["photo_id"].to_list()


def test_api_filters_are_sent(fake_api: FakeInatApi, tmp_path: Path) -> None:
    query = dataclasses.replace(DEFAULT_QUERY, months=(1, 2, 3), licenses=("CC0", "CC-BY"), other_max=0)
    selection = collect_api(query, api_options(fake_api, tmp_path)).selection
    assert photos_per_species(selection) == {"Acer rubrum": 1}
    assert selection["license"].to_list() == ["CC0"]
    params = next(params for path, params in fake_api.request_log if path == "/v1/observations")
    assert params["month"] == ["1,2,3"]
    assert params["photo_license"] == ["CC0,CC-BY"]
    assert params["swlat"] == [str(TARGET_REGION.min_lat)]


def test_api_unknown_names(fake_api: FakeInatApi, tmp_path: Path) -> None:
    query = dataclasses.replace(DEFAULT_QUERY, targets=("Acer rubrun",), confusers=("Conyza canadensis",))
    with pytest.raises(TaxonResolutionError) as caught:
        collect_api(query, api_options(fake_api, tmp_path))
    text = str(caught.value)
    assert "Acer rubrum" in text
    assert "inactive" in text


def test_api_rate_limit(fake_api: FakeInatApi, tmp_path: Path) -> None:
    options = ApiOptions(api_url=fake_api.url, requests_per_second=2, cache_dir=None)
    query = dataclasses.replace(DEFAULT_QUERY, other_max=0)
    started = time.monotonic()
    collect_api(query, options)
    elapsed = time.monotonic() - started
    # The limiter allows 5 seconds' worth of requests (10 at 2 per second) in any 5-second window.
    assert len(fake_api.request_log) > 10
    assert elapsed >= 4.5


def test_api_server_error(tmp_path: Path) -> None:
    options = ApiOptions(api_url="http://127.0.0.1:9/v1", requests_per_second=100, cache_dir=None, timeout_seconds=2)
    with pytest.raises(ApiError, match="failed"):
        collect_api(dataclasses.replace(DEFAULT_QUERY, targets=("Acer rubrum",)), options)


def test_api_place_region_is_sent(fake_api: FakeInatApi, tmp_path: Path) -> None:
    query = dataclasses.replace(DEFAULT_QUERY, targets=("Acer rubrum",), confusers=(), target_region=PlaceRegion(1297), other_max=0)
    collect_api(query, api_options(fake_api, tmp_path))
    params = next(params for path, params in fake_api.request_log if path == "/v1/observations")
    assert params["place_id"] == ["1297"]
    assert "swlat" not in params

