"""Anonymous S3 access to the iNaturalist open-data bucket (or any S3-compatible server)."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from tqdm import tqdm

logger = logging.getLogger(__name__)

DEFAULT_BUCKET_URI = "s3://inaturalist-open-data"
# The open-data bucket is in us-east-1; S3-compatible servers ignore the region.
DEFAULT_REGION = "us-east-1"


class S3Error(RuntimeError):
    """Raised when an S3 object cannot be listed or fetched."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix`` into ``("bucket", "some/prefix")``; the prefix may be empty."""
    if not uri.startswith("s3://"):
        raise ValueError(f"invalid S3 URI {uri!r}: expected s3://bucket[/prefix]")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"invalid S3 URI {uri!r}: the bucket name is missing")
    return bucket, prefix.strip("/")


def make_s3_client(endpoint_url: str | None = None, max_pool_connections: int = 10) -> Any:
    """Create an S3 client that sends unsigned (anonymous) requests.

    Args:
        endpoint_url: Base URL of an S3-compatible server, for example
            ``http://127.0.0.1:5000``; ``None`` means AWS.
        max_pool_connections: HTTP connections kept open, at least the number of threads using the client.
    """
    config = Config(
        signature_version=UNSIGNED,
        max_pool_connections=max_pool_connections,
        retries={"mode": "standard", "max_attempts": 3},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=DEFAULT_REGION, config=config)


@dataclass(frozen=True)
class CachedObject:
    """A local copy of an S3 object, with the ETag and size it had on the server."""

    path: Path
    etag: str
    size: int


def fetch_cached(client: Any, bucket: str, key: str, cache_dir: Path) -> CachedObject:
    """Return a local copy of ``s3://bucket/key`` under ``cache_dir``, downloading it only when it changed.

    The copy is reused while the server reports the same ETag and size. The
    download goes to a temporary file that replaces the cached copy only when
    complete. When the server cannot be reached and a copy exists, the copy is
    used with a warning.
    """
    path = cache_dir / "s3" / bucket / key
    etag_path = path.with_name(path.name + ".etag")
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise S3Error(f"cannot read s3://{bucket}/{key}: HTTP {status} {error.response.get('Error', {}).get('Code', '')}") from error
    except (EndpointConnectionError, BotoCoreError) as error:
        if path.is_file() and etag_path.is_file():
            logger.warning("cannot reach S3 for s3://%s/%s (%s); using the cached copy %s", bucket, key, error, path)
            return CachedObject(path, etag_path.read_text().strip(), path.stat().st_size)
        raise S3Error(f"cannot reach S3 for s3://{bucket}/{key}: {error}") from error

    etag = str(head.get("ETag", "")).strip('"')
    size = int(head.get("ContentLength", 0))
    if path.is_file() and etag_path.is_file() and etag_path.read_text().strip() == etag and path.stat().st_size == size:
        logger.info("using cached s3://%s/%s (%s)", bucket, key, path)
        return CachedObject(path, etag, size)

    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading s3://%s/%s (%.1f MB) to %s", bucket, key, size / 1e6, path)
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        with tqdm(total=size, unit="B", unit_scale=True, desc=key, disable=None) as progress:
            client.download_file(
                bucket,
                key,
                str(temporary),
                Callback=progress.update,
                Config=TransferConfig(max_concurrency=8, multipart_chunksize=64 * 1024 * 1024),
            )
        downloaded = temporary.stat().st_size
        if downloaded != size:
            raise S3Error(f"s3://{bucket}/{key}: downloaded {downloaded} bytes, expected {size}")
        os.replace(temporary, path)
    except (ClientError, BotoCoreError) as error:
        raise S3Error(f"download of s3://{bucket}/{key} failed: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)
    etag_path.write_text(etag)
    return CachedObject(path, etag, size)
