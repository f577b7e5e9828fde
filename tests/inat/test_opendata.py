"""Taxon resolution and the open-data collect, on real sample rows and on the synthetic dump."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from species_classifier.inat import opendata
from species_classifier.inat.manifest import build_manifest, summarize
from species_classifier.inat.metadata import MetadataNotFoundError, locate_metadata
from species_classifier.inat.opendata import collect_open_data
from species_classifier.inat.query import CollectQuery, QueryError
from species_classifier.inat.regions import PlaceRegion
from species_classifier.inat.taxa import TaxonResolutionError, TaxonTable
from tests.inat.synthetic import (
    CONFUSERS,
    DUPLICATE_PHOTO_ID,
    EXPECTED_NAMED_PHOTOS,
    EXPECTED_OTHER_PHOTOS_CAP_5,
    OTHER_REGION,
    TARGET_REGION,
    TARGETS,
    Dump,
)

DEFAULT_QUERY = CollectQuery(
    targets=TARGETS,
    confusers=CONFUSERS,
    target_region=TARGET_REGION,
    other_region=OTHER_REGION,
    other_max=1000,
    other_per_species=5,
)


def photos_per_species(selection: pl.DataFrame, role: str | None = None) -> dict[str, int]:
    rows = selection if role is None else selection.filter(pl.col("role") == role)
    return dict(rows.group_by("species_name").len().iter_rows())


def test_taxa_resolution_on_real_sample(open_data_sample: Path) -> None:
    taxa = TaxonTable.from_file(open_data_sample / "taxa.csv.gz")
    resolved, problems = taxa.resolve(["pseudacris crucifer", "24268", "Pseudacris cruciferr", "999999999"])
    assert [taxon.taxon_id for taxon in resolved] == [24268, 24268]
    assert problems[0].query == "Pseudacris cruciferr"
    assert problems[0].reason == "no taxon has this name"
    assert "Pseudacris crucifer" in problems[0].suggestions
    assert problems[1].reason == "no taxon has this id"


def test_taxa_inactive_and_ambiguous_names(synthetic_metadata: Path) -> None:
    taxa = TaxonTable.from_file(synthetic_metadata / "taxa.csv.gz")
    _, problems = taxa.resolve(["Conyza canadensis", "Morus", "Acer rubrun"])
    reasons = {problem.query: problem for problem in problems}
    assert "inactive" in reasons["Conyza canadensis"].reason
    assert "several active taxa" in reasons["Morus"].reason
    assert "60000" in reasons["Morus"].reason
    assert reasons["Acer rubrun"].suggestions[0] == "Acer rubrum"
    with pytest.raises(TaxonResolutionError, match="Conyza canadensis"):
        taxa.resolve_or_raise(["Acer rubrum", "Conyza canadensis"])


def test_taxa_lookup_rolls_up_descendants(synthetic_metadata: Path) -> None:
    taxa = TaxonTable.from_file(synthetic_metadata / "taxa.csv.gz")
    targets = taxa.resolve_or_raise(["Zenaida macroura", "Acer"])
    confusers = taxa.resolve_or_raise(["Acer saccharum"])
    lookup = taxa.build_lookup(targets, confusers, include_other=True)
    roles, groups = lookup.lookup([900002, 47728, 900001, 47729, 70001, 900010, 70100, 70000, 123])
    # Zenaida ssp. -> Zenaida macroura; Acer rubrum -> genus Acer (target); the deeper confuser
    # Acer saccharum wins over the genus for itself and its subspecies; Quercus alba alba -> Quercus alba.
    assert roles.tolist() == [1, 1, 2, 2, 3, 3, 0, 0, 0]
    assert groups.tolist() == [3454, 47727, 47729, 47729, 70001, 70001, 0, 0, 0]


def test_collect_synthetic_default_query(synthetic_metadata: Path, tmp_path: Path) -> None:
    metadata = locate_metadata(synthetic_metadata, tmp_path / "cache")
    result = collect_open_data(DEFAULT_QUERY, metadata, cache_dir=None)
    selection = result.selection

    named = {**photos_per_species(selection, "target"), **photos_per_species(selection, "confuser")}
    assert named == EXPECTED_NAMED_PHOTOS
    assert selection.filter(pl.col("role") == "other").height == EXPECTED_OTHER_PHOTOS_CAP_5
    assert max(photos_per_species(selection, "other").values()) == 5
    assert result.stats.duplicate_photos_dropped == 1
    assert DUPLICATE_PHOTO_ID not in selection["photo_id"].to_list()
    assert selection["photo_id"].n_unique() == selection.height
    assert set(photos_per_species(selection, "confuser")) == {"Acer saccharum", "Acer saccharinum"}
    other_names = set(photos_per_species(selection, "other"))
    assert "Quercus × bebbiana" not in other_names
    assert "Quercus" not in other_names
    assert "Acer rubrum" not in other_names
    assert {"Quercus o'neilii", 'Quercus "nigra"'} <= other_names


def test_collect_first_photo_by_position(synthetic_metadata: Path, dump: Dump, tmp_path: Path) -> None:
    metadata = locate_metadata(synthetic_metadata, tmp_path)
    first_photo = dump.photo_ids("rubrum_1")[1]  # position 0, listed second in the file
    selection = collect_open_data(DEFAULT_QUERY, metadata).selection
    rubrum_1 = selection.filter(pl.col("observation_uuid") == dump.observation("rubrum_1").uuid)
    assert rubrum_1["photo_id"].to_list() == [first_photo]
    assert rubrum_1["extension"].to_list() == ["jpeg"]

    three = dataclasses.replace(DEFAULT_QUERY, photos_per_observation=3)
    selection = collect_open_data(three, metadata).selection
    rubrum_1 = selection.filter(pl.col("observation_uuid") == dump.observation("rubrum_1").uuid)
    assert sorted(rubrum_1["photo_id"].to_list()) == sorted(dump.photo_ids("rubrum_1"))


def test_collect_license_filter(synthetic_metadata: Path, dump: Dump, tmp_path: Path) -> None:
    metadata = locate_metadata(synthetic_metadata, tmp_path)
    query = dataclasses.replace(DEFAULT_QUERY, licenses=("CC0", "CC-BY", "CC-BY-SA"))
    selection = collect_open_data(query, metadata).selection
    assert set(selection["license"].to_list()) <= {"CC0", "CC-BY", "CC-BY-SA"}
    # rubrum_1's first photo is CC-BY-NC, so its first open-for-commerce photo (position 1, CC0) is chosen.
    rubrum = selection.filter(pl.col("species_name") == "Acer rubrum")
    assert rubrum["photo_id"].to_list() == [dump.photo_ids("rubrum_1")[2]]


def test_collect_months_and_dates(synthetic_metadata: Path, tmp_path: Path) -> None:
    metadata = locate_metadata(synthetic_metadata, tmp_path)
    winter = dataclasses.replace(DEFAULT_QUERY, months=(1, 2, 3))
    selection = collect_open_data(winter, metadata).selection
    assert photos_per_species(selection) == {"Acer rubrum": 2}

    query = dataclasses.replace(DEFAULT_QUERY, observed_from=dt.date(2020, 4, 2), observed_to=dt.date(2020, 12, 31), other_max=0)
    assert photos_per_species(collect_open_data(query, metadata).selection) == {"Zenaida macroura": 1, "Erigeron canadensis": 1}


def test_collect_quality_grades(synthetic_metadata: Path, tmp_path: Path) -> None:
    metadata = locate_metadata(synthetic_metadata, tmp_path)
    query = dataclasses.replace(DEFAULT_QUERY, quality_grades=("research", "needs_id", "casual"), other_max=0)
    selection = collect_open_data(query, metadata).selection
    assert photos_per_species(selection)["Acer rubrum"] == EXPECTED_NAMED_PHOTOS["Acer rubrum"] + 2


def test_collect_other_max_spreads_species(synthetic_metadata: Path, tmp_path: Path) -> None:
    metadata = locate_metadata(synthetic_metadata, tmp_path)
    query = dataclasses.replace(DEFAULT_QUERY, other_max=12)
    other = collect_open_data(query, metadata).selection.filter(pl.col("role") == "other")
    assert other.height == 12
    assert other["species_name"].n_unique() == 12
    again = collect_open_data(query, metadata).selection.filter(pl.col("role") == "other")
    assert again["photo_id"].to_list() == other["photo_id"].to_list()
    reseeded = collect_open_data(dataclasses.replace(query, seed=7), metadata).selection.filter(pl.col("role") == "other")
    assert reseeded["photo_id"].to_list() != other["photo_id"].to_list()


def test_collect_max_per_species(synthetic_metadata: Path, tmp_path: Path) -> None:
    metadata = locate_metadata(synthetic_metadata, tmp_path)
    query = dataclasses.replace(DEFAULT_QUERY, max_per_species=1, other_max=0)
    counts = photos_per_species(collect_open_data(query, metadata).selection)
    assert counts == {name: 1 for name in EXPECTED_NAMED_PHOTOS}


def test_collect_both_schemas_agree(synthetic_metadata: Path, synthetic_metadata_2022: Path, tmp_path: Path) -> None:
    current = collect_open_data(DEFAULT_QUERY, locate_metadata(synthetic_metadata, tmp_path)).selection
    old = collect_open_data(DEFAULT_QUERY, locate_metadata(synthetic_metadata_2022, tmp_path)).selection
    assert current.equals(old)


def test_collect_real_sample_drops_shared_photos(open_data_sample: Path, tmp_path: Path) -> None:
    metadata = locate_metadata(open_data_sample, tmp_path)
    query = CollectQuery(
        targets=("Trifolium hybridum", "Pseudacris crucifer"),
        confusers=("Pseudacris fouquettei",),
        quality_grades=("research",),
        other_max=0,
    )
    result = collect_open_data(query, metadata)
    selection = result.selection
    # Trifolium hybridum's photo 10314159 is unique; both Pseudacris observations share photo 191012628.
    assert selection["photo_id"].to_list() == [10314159]
    assert result.stats.duplicate_photos_dropped == 1
    row = selection.row(0, named=True)
    assert row["observer_login"] == "akjenny"
    assert row["observer_name"] is None
    assert row["observed_on"] == "2017-09-08"
    manifest = build_manifest(selection, "medium", "https://inaturalist-open-data.s3.amazonaws.com")
    assert manifest["attribution"].to_list() == ["(c) akjenny, some rights reserved (CC-BY-NC)"]
    assert manifest["url"].to_list() == ["https://inaturalist-open-data.s3.amazonaws.com/photos/10314159/medium.jpg"]


def test_collect_real_sample_other_species(open_data_sample: Path, tmp_path: Path) -> None:
    metadata = locate_metadata(open_data_sample, tmp_path)
    query = CollectQuery(targets=("Trifolium hybridum",), quality_grades=("research", "needs_id"), other_max=100)
    selection = collect_open_data(query, metadata).selection
    other = selection.filter(pl.col("role") == "other")
    assert other.height > 0
    assert "Trifolium hybridum" not in other["species_name"].to_list()
    assert other["photo_id"].n_unique() == other.height
    summary = summarize(build_manifest(selection, "small", "https://example.org"))
    assert summary["photos"].sum() == selection.height


def test_collect_unknown_name_lists_close_matches(synthetic_metadata: Path, tmp_path: Path) -> None:
    query = dataclasses.replace(DEFAULT_QUERY, targets=("Acer rubrun", "Lycorma delicatula"), confusers=("Conyza canadensis",))
    with pytest.raises(TaxonResolutionError) as caught:
        collect_open_data(query, locate_metadata(synthetic_metadata, tmp_path))
    text = str(caught.value)
    assert "Acer rubrun" in text
    assert "close matches: Acer rubrum" in text
    assert "Conyza canadensis" in text


def test_collect_rejects_place_region(synthetic_metadata: Path, tmp_path: Path) -> None:
    query = dataclasses.replace(DEFAULT_QUERY, target_region=PlaceRegion(1))
    with pytest.raises(QueryError, match="--source api"):
        collect_open_data(query, locate_metadata(synthetic_metadata, tmp_path))


def test_collect_cache_skips_scan(synthetic_metadata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metadata = locate_metadata(synthetic_metadata, tmp_path)
    cache = tmp_path / "cache"
    first = collect_open_data(DEFAULT_QUERY, metadata, cache_dir=cache)
    assert not first.stats.from_cache

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the metadata was scanned again")

    monkeypatch.setattr(opendata, "_scan_observations", no_scan)
    monkeypatch.setattr(opendata, "_scan_photos", no_scan)
    second = collect_open_data(DEFAULT_QUERY, metadata, cache_dir=cache)
    assert second.stats.from_cache
    assert second.selection.equals(first.selection)
    assert second.stats.duplicate_photos_dropped == 1
    with pytest.raises(AssertionError, match="scanned again"):
        collect_open_data(dataclasses.replace(DEFAULT_QUERY, other_max=3), metadata, cache_dir=cache)


def test_locate_metadata_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MetadataNotFoundError):
        locate_metadata(tmp_path / "nowhere", tmp_path)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "taxa.csv.gz").write_bytes(b"")
    with pytest.raises(MetadataNotFoundError, match="observations.csv.gz"):
        locate_metadata(tmp_path / "partial", tmp_path)
