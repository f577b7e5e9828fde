"""The collect and download subcommands end to end: loopback S3 metadata, loopback photo server, TOML config."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from species_classifier.inat.cli import add_subcommands, main
from species_classifier.inat.manifest import MANIFEST_COLUMNS, read_manifest
from tests.inat.conftest import upload_public
from tests.inat.servers import PhotoServer
from tests.inat.synthetic import EXPECTED_NAMED_PHOTOS

COLLECT_ARGUMENTS = [
    "collect", "--source", "open-data",
    "--targets", "Lycorma delicatula,Zenaida macroura,Acer rubrum,Erigeron canadensis",
    "--target-region", "38.0,-78.0,39.0,-76.0",
    "--confusers", "Acer saccharum,Acer saccharinum,Acer platanoides",
    "--other-region", "39.19,-76.71,39.37,-76.52", "--other-max", "30", "--other-per-species", "5",
]


def test_subcommands_register_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="species-classifier")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    for command, expected in (("collect", "min_lat,min_lon,max_lat,max_lon"), ("download", "SECONDS")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert expected in capsys.readouterr().out
    args = parser.parse_args(["download", "manifest.csv"])
    assert callable(args.func)


def test_collect_and_download_end_to_end(
    moto_endpoint: str, synthetic_metadata: Path, photo_server: PhotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for table in ("observations", "photos", "taxa", "observers"):
        upload_public(moto_endpoint, f"{table}.csv.gz", (synthetic_metadata / f"{table}.csv.gz").read_bytes())
    manifest = tmp_path / "data" / "baltimore" / "manifest.csv"
    code = main(
        [
            *COLLECT_ARGUMENTS,
            "--metadata", "s3://inaturalist-open-data", "--s3-endpoint-url", moto_endpoint,
            "--cache-dir", str(tmp_path / "cache"), "--photo-base-url", photo_server.url,
            "--out", str(manifest),
        ]
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "Acer rubrum" in output
    assert "dropped 1 photos linked to more than one observation" in output
    rows = read_manifest(manifest)
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    assert all(row["path"] == "" for row in rows)
    assert all(row["url"].startswith(f"{photo_server.url}/photos/") and "/medium." in row["url"] for row in rows)
    named = sum(1 for row in rows if row["role"] != "other")
    assert named == sum(EXPECTED_NAMED_PHOTOS.values())
    assert sum(1 for row in rows if row["role"] == "other") == 30

    photo_server.behaviours[int(rows[0]["photo_id"])] = "missing"
    code = main(["download", str(manifest), "--size", "medium", "--dest", str(tmp_path / "data" / "baltimore" / "photos"),
                 "--backoff", "0.01", "--no-progress"])
    assert code == 1
    rows = read_manifest(manifest)
    assert rows[0]["path"] == ""
    assert all(row["path"].startswith("photos/") for row in rows[1:])
    for row in rows[1:]:
        with Image.open(manifest.parent / row["path"]) as image:
            image.load()
    failures = pd.read_csv(manifest.with_name("manifest.failures.csv"), dtype=str)
    assert failures["photo_id"].tolist() == [rows[0]["photo_id"]]

    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for license_code, attribution in zip(table["license"], table["attribution"]):
        if license_code == "CC0":
            assert attribution.endswith(", no rights reserved (CC0)")
        else:
            assert attribution.startswith("(c) ")
            assert attribution.endswith(f", some rights reserved ({license_code})")
    dataset = pytest.importorskip("species_classifier.data.dataset")
    read = dataset.read_dataset(manifest)
    assert len(read) == len(rows) - 1
    assert read["observation_id"].nunique() == len(rows) - 1


def test_config_file_and_overrides(synthetic_metadata: Path, photo_server: PhotoServer, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipeline.toml").write_text(
        f"""
[collect]
source = "open-data"
targets = ["Acer rubrum", "Lycorma delicatula"]
confusers = "Acer saccharum"
target_region = "38.0,-78.0,39.0,-76.0"
other_region = "39.19,-76.71,39.37,-76.52"
other_max = 3
months = "1-12"
licenses = ["CC0", "CC-BY", "CC-BY-NC", "CC-BY-NC-ND", "CC-BY-ND"]
metadata = "{synthetic_metadata}"
cache_dir = "cache"
photo_base_url = "{photo_server.url}"
out = "data/manifest.csv"

[download]
manifest = "data/manifest.csv"
dest = "data/photos"
workers = 2
no_progress = true
""",
        encoding="utf-8",
    )
    config = str(project / "pipeline.toml")
    assert main(["collect", "--config", config, "--other-max", "5"]) == 0
    rows = read_manifest(project / "data" / "manifest.csv")
    assert sum(1 for row in rows if row["role"] == "other") == 5
    assert {row["species_name"] for row in rows if row["role"] == "target"} == {"Acer rubrum", "Lycorma delicatula"}
    assert (project / "cache" / "selections").is_dir()

    assert main(["download", "--config", config]) == 0
    rows = read_manifest(project / "data" / "manifest.csv")
    assert all(row["path"].startswith("photos/") for row in rows)


def test_collect_reports_unknown_names(synthetic_metadata: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    code = main(["collect", "--targets", "Acer rubrun", "--metadata", str(synthetic_metadata),
                 "--cache-dir", str(tmp_path), "--out", str(tmp_path / "manifest.csv")])
    assert code == 2
    assert "close matches: Acer rubrum" in caplog.text
    assert not (tmp_path / "manifest.csv").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--targets", "Acer rubrum"], "--out"),
        (["--targets", "Acer rubrum", "--out", "x.csv", "--target-region", "1,2"], "invalid region"),
        (["--targets", "Acer rubrum", "--out", "x.csv", "--licenses", "CC-BY-XYZ"], "unknown licence"),
        (["--targets", "Acer rubrum", "--out", "x.csv", "--months", "13"], "month"),
    ],
)
def test_collect_invalid_options(arguments: list[str], message: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    assert main(["collect", "--metadata", str(tmp_path), *arguments]) == 2
    assert message in caplog.text


def test_config_unknown_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    config = tmp_path / "bad.toml"
    config.write_text("[collect]\ntargetz = 'Acer rubrum'\n")
    assert main(["collect", "--config", str(config)]) == 2
    assert "unknown key(s) in [collect]: targetz" in caplog.text
