"""Regions, licences, query options and the streaming TSV reader."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from species_classifier.inat.licenses import (
    OPEN_LICENSES,
    LicenseError,
    format_attribution,
    parse_licenses,
    photo_url,
    photo_url_parts,
    with_photo_size,
)
from species_classifier.inat.query import CollectQuery, QueryError, parse_months, parse_name_list, parse_quality_grades
from species_classifier.inat.regions import BoundingBox, PlaceRegion, PolygonRegion, RegionError, parse_region
from species_classifier.inat import inflate
from species_classifier.inat.tsv import BlockReader, MetadataFormatError, iter_frames, read_header


def test_bounding_box_parse_and_contains() -> None:
    region = parse_region("37.911717,-79.487651,39.723043,-75.048939")
    assert isinstance(region, BoundingBox)
    inside = region.contains(np.array([38.5, 40.0, 38.5, np.nan]), np.array([-77.0, -77.0, -80.0, -77.0]))
    assert inside.tolist() == [True, False, False, False]


@pytest.mark.parametrize(
    "text",
    ["39,-76,38,-75", "38,-75,39,-76", "91,0,92,1", "a,b,c,d", "1,2,3", "place:abc", "/no/such/file.geojson"],
)
def test_region_rejects_invalid(text: str) -> None:
    with pytest.raises(RegionError):
        parse_region(text)


def test_place_region() -> None:
    region = parse_region("place:1234")
    assert region == PlaceRegion(1234)
    with pytest.raises(RegionError):
        region.bounds  # noqa: B018 - the property raises


def test_geojson_polygon_with_hole(tmp_path: Path) -> None:
    outer = [[-77, 38], [-76, 38], [-76, 39], [-77, 39], [-77, 38]]
    hole = [[-76.6, 38.4], [-76.4, 38.4], [-76.4, 38.6], [-76.6, 38.6], [-76.6, 38.4]]
    triangle = [[-70, 40], [-69, 40], [-69.5, 41]]
    document = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [outer, hole]}},
            {"type": "Feature", "properties": {}, "geometry": {"type": "MultiPolygon", "coordinates": [[triangle]]}},
        ],
    }
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps(document))
    region = parse_region(str(path))
    assert isinstance(region, PolygonRegion)
    latitude = np.array([38.2, 38.5, 40.2, 40.9, 39.5])
    longitude = np.array([-76.8, -76.5, -69.5, -69.9, -76.5])
    assert region.contains(latitude, longitude).tolist() == [True, False, True, False, False]
    assert region.bounds == BoundingBox(38, -77, 41, -69)


def test_geojson_rejects_points(tmp_path: Path) -> None:
    path = tmp_path / "point.json"
    path.write_text(json.dumps({"type": "Point", "coordinates": [-76, 38]}))
    with pytest.raises(RegionError, match="not supported"):
        parse_region(str(path))


def test_licenses_parse_and_normalize() -> None:
    assert parse_licenses(None) == OPEN_LICENSES
    assert parse_licenses("all") == OPEN_LICENSES
    assert parse_licenses("cc0, cc-by,CC BY-SA") == ("CC0", "CC-BY", "CC-BY-SA")
    with pytest.raises(LicenseError, match="unknown licence"):
        parse_licenses("CC-BY,all-rights-reserved")


def test_attribution_format() -> None:
    assert format_attribution("Jane Doe", "jdoe", "CC-BY-NC") == "(c) Jane Doe, some rights reserved (CC-BY-NC)"
    assert format_attribution("", "jdoe", "CC-BY") == "(c) jdoe, some rights reserved (CC-BY)"
    assert format_attribution(None, "jdoe", "CC0") == "jdoe, no rights reserved (CC0)"


def test_photo_url_helpers() -> None:
    url = photo_url("https://inaturalist-open-data.s3.amazonaws.com/", 123, "medium", "jpeg")
    assert url == "https://inaturalist-open-data.s3.amazonaws.com/photos/123/medium.jpeg"
    assert with_photo_size(url, "large").endswith("/photos/123/large.jpeg")
    assert with_photo_size("https://static.example/photos/9/square.jpg?1600", "small") == "https://static.example/photos/9/small.jpg?1600"
    assert photo_url_parts(url) == ("medium", "jpeg")
    assert photo_url_parts("https://example.com/other.jpg") is None


def test_months_and_grades_parse() -> None:
    assert parse_months("4-6") == (4, 5, 6)
    assert parse_months("11-2") == (1, 2, 11, 12)
    assert parse_months("3,5") == (3, 5)
    assert parse_months([7, 8]) == (7, 8)
    with pytest.raises(QueryError):
        parse_months("0-3")
    assert parse_quality_grades("research,Needs ID") == ("research", "needs_id")
    assert parse_quality_grades("all") == ("research", "needs_id", "casual")
    with pytest.raises(QueryError):
        parse_quality_grades("excellent")
    assert parse_name_list(" Acer  rubrum, acer rubrum ,,Zenaida macroura") == ("Acer rubrum", "Zenaida macroura")


def test_query_rejects_contradictions() -> None:
    with pytest.raises(QueryError, match="target taxon"):
        CollectQuery(targets=())
    with pytest.raises(QueryError, match="both target and confuser"):
        CollectQuery(targets=("Acer rubrum",), confusers=("acer rubrum",))
    with pytest.raises(QueryError, match="photos_per_observation"):
        CollectQuery(targets=("Acer rubrum",), photos_per_observation=0)


def test_tsv_reads_real_sample(open_data_sample: Path) -> None:
    header = read_header(open_data_sample / "observations.csv.gz")
    assert "anomaly_score" not in header
    frames = list(iter_frames(open_data_sample / "taxa.csv.gz", {"taxon_id": pl.Int64(), "name": pl.String()}))
    taxa = pl.concat(frames)
    assert taxa.height == 183
    assert "Pseudacris crucifer" in taxa["name"].to_list()


def test_tsv_blocks_keep_quotes_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "observers.csv.gz"
    rows = [f"{index}\tlogin{index}\tName \"{index}\" O'Neil" for index in range(5000)]
    # Two gzip members, as produced by concatenating files.
    with open(path, "wb") as handle:
        handle.write(gzip.compress(("observer_id\tlogin\tname\n" + "\n".join(rows[:2500]) + "\n").encode()))
        handle.write(gzip.compress(("\n".join(rows[2500:])).encode()))
    types = {"observer_id": pl.Int64(), "login": pl.String(), "name": pl.String()}
    frames = list(iter_frames(path, types, block_bytes=4096))
    assert len(frames) > 10
    observers = pl.concat(frames)
    assert observers.height == 5000
    assert observers["observer_id"].to_list() == list(range(5000))
    assert observers["name"][42] == "Name \"42\" O'Neil"


def test_tsv_missing_column_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "photos.csv.gz"
    path.write_bytes(gzip.compress(b"photo_id\tlicense\n1\tCC0\n"))
    with pytest.raises(MetadataFormatError, match="observation_uuid"):
        list(iter_frames(path, {"photo_id": pl.Int64(), "observation_uuid": pl.String()}))


def test_tsv_truncated_gzip_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "observations.csv.gz"
    data = gzip.compress(("a\tb\n" + "".join(f"{index}\t{index * 7}\n" for index in range(200_000))).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MetadataFormatError, match="cannot read"):
        with BlockReader(path) as reader:
            for _ in reader:
                pass


def test_tsv_reader_stops_early(tmp_path: Path) -> None:
    path = tmp_path / "photos.csv.gz"
    path.write_bytes(gzip.compress(("a\tb\n" + "".join(f"{index}\t{index}\n" for index in range(300_000))).encode()))
    with BlockReader(path, block_bytes=4096) as reader:
        blocks = iter(reader)
        first = next(blocks).read_bytes()
        folder = reader._folder
    assert first.startswith(b"0\t0\n")
    assert reader._process is not None
    assert reader._process.poll() is not None
    assert folder is not None
    assert not folder.exists()


@pytest.mark.parametrize("module", [gzip, inflate.gzip_module], ids=["gzip", "isal"])
def test_inflate_writes_line_aligned_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: object, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(inflate, "gzip_module", module)
    source = tmp_path / "photos.csv.gz"
    lines = [f"{index}\tname {index}" for index in range(20_000)]
    source.write_bytes(gzip.compress(("photo_id\tname\n" + "\n".join(lines)).encode()))
    folder = tmp_path / "blocks"
    folder.mkdir()
    inflate.inflate(source, folder, block_bytes=10_000, max_pending=1_000)
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert len(names) > 10
    blocks = [(folder / name).read_bytes() for name in names]
    assert all(block.endswith(b"\n") for block in blocks)
    assert b"".join(blocks).decode().splitlines() == lines


def test_negative_region_value_is_read_as_a_value() -> None:
    from species_classifier.cli import build_parser, join_negative_values

    argv = join_negative_values(["collect", "--targets", "Acer rubrum", "--target-region", "-34,150,-33,151",
                                 "--other-region", "-.5,1,2,3", "--out", "m.csv"])
    args = build_parser().parse_args(argv)
    assert args.target_region == "-34,150,-33,151"
    assert args.other_region == "-.5,1,2,3"
    # A following option is left alone.
    assert join_negative_values(["--target-region", "--out"]) == ["--target-region", "--out"]
