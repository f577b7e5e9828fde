"""Fixtures for the collect and download tests: real sample metadata, real photos, S3 and HTTP servers on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.inat.servers import FakeInatApi, PhotoServer
from tests.inat.synthetic import Dump, build_dump, write_dump

# The repository is checked out beside the read-only shared/ folder.
SHARED = Path(__file__).resolve().parents[3] / "shared"
OPEN_DATA_SAMPLE = SHARED / "datasets" / "inat-open-data-sample"
SPECIES_DEV = SHARED / "datasets" / "species-dev"
BUCKET = "inaturalist-open-data"


@pytest.fixture(scope="session")
def open_data_sample() -> Path:
    """Real rows of the 2022 open-data files (without the anomaly_score column)."""
    if not (OPEN_DATA_SAMPLE / "observations.csv.gz").is_file():
        pytest.skip(f"the open-data sample is missing at {OPEN_DATA_SAMPLE}")
    return OPEN_DATA_SAMPLE


@pytest.fixture(scope="session")
def real_photos() -> list[Path]:
    """Real JPEG photos of a few species."""
    folders = ["Acer_rubrum", "Acer_saccharum", "Lycorma_delicatula", "Zenaida_macroura"]
    photos = sorted(path for folder in folders for path in (SPECIES_DEV / folder).glob("*.jpg"))
    if len(photos) < 8:
        pytest.skip(f"real photos are missing at {SPECIES_DEV}")
    return photos


@pytest.fixture(scope="session")
def dump() -> Dump:
    return build_dump()


@pytest.fixture(scope="session")
def synthetic_metadata(dump: Dump, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dump in the current schema (with anomaly_score)."""
    return write_dump(tmp_path_factory.mktemp("metadata-current"), dump, with_anomaly_score=True)


@pytest.fixture(scope="session")
def synthetic_metadata_2022(dump: Dump, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dump in the 2022 schema (no anomaly_score)."""
    return write_dump(tmp_path_factory.mktemp("metadata-2022"), dump, with_anomaly_score=False)


@pytest.fixture()
def photo_server(real_photos: list[Path]) -> Iterator[PhotoServer]:
    server = PhotoServer(real_photos).start()
    yield server
    server.stop()


@pytest.fixture()
def fake_api(dump: Dump) -> Iterator[FakeInatApi]:
    api = FakeInatApi(dump, photo_base_url="https://photos.invalid").start()
    yield api
    api.stop()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback; its bucket inaturalist-open-data is public-read like the real one."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = admin_client(endpoint)
    client.create_bucket(Bucket=BUCKET, ACL="public-read")
    client.put_bucket_policy(
        Bucket=BUCKET,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}],
            }
        ),
    )
    yield endpoint
    server.stop()


def admin_client(endpoint: str):  # noqa: ANN201 - boto3 client type
    """A signed client (dummy credentials) for uploading test objects."""
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


def upload_public(endpoint: str, key: str, body: bytes) -> None:
    admin_client(endpoint).put_object(Bucket=BUCKET, Key=key, Body=body, ACL="public-read")
